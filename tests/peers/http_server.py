"""A small uninstrumented HTTP/1.1 server for tracewire's tests.

Prints "port N" once listening. GET /bytes/N answers with N bytes of body; GET
/gather/writev/N and /gather/sendmsg/N answer with N bytes of body in one writev() or
sendmsg() of five buffers (head in three pieces, body in two), /gather/HOW/N/2 of two (head,
body), /gather/HOW/N/2/C of two with a body of N bytes C (by default "a"s then "b"s); GET
/after-close waits for the client to close its end, then answers "ok" in one write; GET /traceparent
with the traceparent headers it received, joined by "|"; GET /status/N with status N; POST with "<body bytes> " followed by
the same; anything else with "ok". Keep-alive (HTTP/1.1), one thread per connection, or with
"fork" one child process per connection (the parent accepts, the child serves). Usage:
http_server.py [HOST] [fork]
"""
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from socketserver import ForkingMixIn


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def traceparents(self):
        return "|".join(self.headers.get_all("traceparent") or []).encode()

    def do_POST(self):
        n = len(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.reply(f"{n} ".encode() + self.traceparents())

    def do_GET(self):
        if self.path.startswith("/gather/"):
            _, _, how, n, *parts = self.path.split("/")
            fill = parts[1].encode() if len(parts) > 1 else None
            self.gathered(how, int(n), int(parts[0]) if parts else 5, fill)
            return
        if self.path == "/after-close":
            self.after_close()
            return
        body = b"ok\n"
        if self.path.startswith("/status/"):
            self.reply(body, int(self.path.split("/")[2]))
            return
        if self.path.startswith("/bytes/"):
            body = b"x" * int(self.path.split("?")[0].split("/")[2])
        elif self.path == "/traceparent":
            body = self.traceparents()
        self.reply(body)

    def gathered(self, how, n, count, fill=None):
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {n}\r\n\r\n".encode()
        body = (fill * n)[:n] if fill else b"a" * (n // 2) + b"b" * (n - n // 2)
        parts = [head, body] if count == 2 else [head[:5], head[5:20], head[20:], body[: n // 2], body[n // 2 :]]
        if how == "sendmsg":
            self.connection.sendmsg(parts)
        else:
            os.writev(self.connection.fileno(), parts)

    def after_close(self):
        # The client sends nothing after its request: a peek returns once its FIN is in.
        self.connection.recv(1, socket.MSG_PEEK)
        self.connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        self.close_connection = True

    def reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True


class ForkingServer(ForkingMixIn, HTTPServer):
    pass


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    cls = ForkingServer if sys.argv[2:3] == ["fork"] else Server
    if ":" in host:
        cls.address_family = socket.AF_INET6
    server = cls((host, 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
