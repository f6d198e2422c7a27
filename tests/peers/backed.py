"""The HTTP side of the tests' database-backed services: a threading HTTP/1.1 server on
127.0.0.1 that prints "port N" once listening and answers each GET with what `route` returns.

`route(path, args)` gets the URL's path and its query arguments (a dict of lists) and returns
(status, body); an exception of a type in `errors` answers 500 with `describe(error)`.
"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def serve(route, errors=(), describe=str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            url = urlparse(self.path)
            try:
                status, body = route(url.path, parse_qs(url.query))
            except errors as e:
                status, body = 500, describe(e)
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()
