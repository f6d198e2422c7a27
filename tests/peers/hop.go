// One hop of a service chain for tracewire's tests in Go (net/http, uninstrumented; goroutines
// move between OS threads). GET /hop/<id> calls GET <next>/hop/<id> when a next hop is given,
// then answers "ok <id>". Prints "port N" once listening. Usage: hop HOST PORT [NEXT_URL]
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	next := ""
	if len(os.Args) > 3 {
		next = os.Args[3]
	}
	// A fresh connection per call, like the other hops.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rid := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		status := http.StatusOK
		if next != "" {
			resp, err := client.Get(next + "/hop/" + rid)
			if err != nil {
				status = http.StatusBadGateway
			} else {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					status = http.StatusBadGateway
				}
			}
		}
		w.WriteHeader(status)
		fmt.Fprintf(w, "ok %s\n", rid)
	})
	ln, err := net.Listen("tcp", net.JoinHostPort(os.Args[1], os.Args[2]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("port %d\n", ln.Addr().(*net.TCPAddr).Port)
	http.Serve(ln, nil)
}
