// One hop of a service chain for tracewire's tests in Go (net/http, uninstrumented; goroutines
// move between OS threads). GET /hop/<id> calls GET <next>/hop/<id> when a next hop is given,
// then answers "ok <id>". Prints "port N" once listening. Usage: hop HOST PORT [NEXT_URL]
//
// HOP_FANOUT=n: the handler also makes n more calls, each from a goroutine it starts (fan-out),
// waiting for all. HOP_KEEPALIVE=1: calls reuse pooled connections (a fresh one each otherwise,
// like the other hops). HOP_BODY=n: the answer is n bytes ("j"s) with a Content-Length instead,
// or chunked with HOP_CHUNKED=1 (net/http chunks what exceeds its buffer without a length).
// HOP_TLS_CERT/HOP_TLS_KEY: serve HTTPS with these PEM files (HTTP/2 offered, as net/http does);
// HOP_TLS_CA: trust this PEM certificate for https calls (made over HTTP/1.1, net/http's choice
// with a TLS configuration of one's own; HOP_H2=1 asks for HTTP/2).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
)

func main() {
	next := ""
	if len(os.Args) > 3 {
		next = os.Args[3]
	}
	fanout, _ := strconv.Atoi(os.Getenv("HOP_FANOUT"))
	keepAlive := os.Getenv("HOP_KEEPALIVE") == "1"
	bodySize, _ := strconv.Atoi(os.Getenv("HOP_BODY"))
	chunked := os.Getenv("HOP_CHUNKED") == "1"
	body := []byte(strings.Repeat("j", bodySize))
	transport := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 128}
	if ca := os.Getenv("HOP_TLS_CA"); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		roots := x509.NewCertPool()
		roots.AppendCertsFromPEM(pem)
		transport.TLSClientConfig = &tls.Config{RootCAs: roots}
		transport.ForceAttemptHTTP2 = os.Getenv("HOP_H2") == "1"
	}
	client := &http.Client{Transport: transport}
	call := func(rid string) bool {
		resp, err := client.Get(next + "/hop/" + rid)
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		rid := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		status := http.StatusOK
		if next != "" {
			ok := call(rid)
			results := make([]bool, fanout)
			var wg sync.WaitGroup
			for i := 0; i < fanout; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					results[i] = call(rid)
				}(i)
			}
			wg.Wait()
			for _, r := range results {
				ok = ok && r
			}
			if !ok {
				status = http.StatusBadGateway
			}
		}
		if bodySize > 0 {
			if !chunked {
				w.Header().Set("Content-Length", strconv.Itoa(bodySize))
			}
			w.WriteHeader(status)
			w.Write(body)
			return
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
	if cert := os.Getenv("HOP_TLS_CERT"); cert != "" {
		err = http.ServeTLS(ln, nil, cert, os.Getenv("HOP_TLS_KEY"))
	} else {
		err = http.Serve(ln, nil)
	}
	fmt.Fprintln(os.Stderr, err)
}
