"""One service of the tracewire demo: an ordinary, uninstrumented Python HTTP server.

Usage: service.py WORK_MS [DOWNSTREAM_URL ...]
Prints "port N" once listening on 127.0.0.1. Each request does WORK_MS of work, then calls each
downstream in turn over plain HTTP/1.1 (urllib: no trace headers are sent), then answers.

With DEMO_PG="PORT USER DATABASE" and DEMO_SQL set, each request also runs DEMO_SQL in that
PostgreSQL database (psycopg2, one connection opened at start). A query that takes a %(work)s
parameter is the request's work: it is passed WORK_MS in seconds, and nothing else waits.

With DEMO_REDIS="PORT", each request first looks its session up in that Redis server (redis-py,
one client whose connection pool the request threads share).
"""
import json
import os
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORK_MS = int(sys.argv[1])
DOWNSTREAMS = sys.argv[2:]
SQL = os.environ.get("DEMO_SQL")
DB = None
DB_LOCK = threading.Lock()
if SQL:
    import psycopg2

    port, user, database = os.environ["DEMO_PG"].split()
    DB = psycopg2.connect(host="127.0.0.1", port=int(port), user=user, dbname=database, sslmode="disable")
    DB.autocommit = True
CACHE = None
if os.environ.get("DEMO_REDIS"):
    import redis

    CACHE = redis.Redis(host="127.0.0.1", port=int(os.environ["DEMO_REDIS"]))
    CACHE.ping()


def work():
    if CACHE is not None:
        CACHE.get("session:42")
    in_query = SQL is not None and "%(work)s" in SQL
    if not in_query:
        time.sleep(WORK_MS / 1000)
    if SQL is not None:
        with DB_LOCK, DB.cursor() as cur:
            if in_query:
                cur.execute(SQL, {"work": WORK_MS / 1000})
            else:
                cur.execute(SQL)
            cur.fetchall()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        work()
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
