"""One hop of a service chain for tracewire's tests (uninstrumented, thread per connection).

GET /hop/<id> calls GET <next>/hop/<id> when a next hop is given, then answers "ok <id>". The id
travels in the path, so a test can check every span's parent against it. The last hop answers
500 to an id that starts with "fail", and takes 300 ms for one that starts with "slow"; a hop
whose call fails answers 502. Prints "port N" once listening. Usage: hop.py HOST PORT [NEXT_URL]

TLS (OpenSSL, through Python's ssl module): HOP_TLS_CERT and HOP_TLS_KEY (PEM files) make it
serve HTTPS; HOP_TLS_CA is the CA file an https NEXT_URL is verified with. With HOP_WAIT set it
loads nothing that maps libssl (ssl, urllib) until a line arrives on stdin, then listens.
"""
import os
import sys

if os.environ.get("HOP_WAIT"):
    print("waiting", flush=True)
    sys.stdin.readline()

import ssl  # noqa: E402 (after the wait: it maps libssl, and so does http.server)
import time  # noqa: E402
import urllib.request  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

client_tls = ssl.create_default_context(cafile=os.environ["HOP_TLS_CA"]) if os.environ.get("HOP_TLS_CA") else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    next_url = None

    def do_GET(self):
        rid = self.path.rsplit("/", 1)[-1]
        status = 200
        if self.next_url:
            try:
                with urllib.request.urlopen(f"{self.next_url}/hop/{rid}", timeout=10, context=client_tls) as r:
                    r.read()
            except Exception:
                status = 502
        elif rid.startswith("fail"):
            status = 500
        elif rid.startswith("slow"):
            time.sleep(0.3)
        body = f"ok {rid}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    Handler.next_url = sys.argv[3] if len(sys.argv) > 3 else None
    server = Server((host, port), Handler)
    if os.environ.get("HOP_TLS_CERT"):
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(os.environ["HOP_TLS_CERT"], os.environ["HOP_TLS_KEY"])
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
