"""One service of the tracewire demo: an ordinary, uninstrumented Python HTTP server.

Usage: service.py WORK_MS [DOWNSTREAM_URL ...]
Prints "port N" once listening on 127.0.0.1. Each request does WORK_MS of work, then calls each
downstream in turn over plain HTTP/1.1 (urllib: no trace headers are sent), then answers.
"""
import json
import sys
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORK_MS = int(sys.argv[1])
DOWNSTREAMS = sys.argv[2:]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        time.sleep(WORK_MS / 1000)
        parts = []
        for url in DOWNSTREAMS:
            with urllib.request.urlopen(url, timeout=30) as resp:
                parts.append(json.loads(resp.read() or b"{}"))
        body = json.dumps({"ok": True, "parts": len(parts)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", 0), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()
