"""An HTTP service backed by PostgreSQL through psycopg2 (libpq), as an uninstrumented service
would be: one connection opened at start and shared by the handler threads, and one opened per
request on /fresh. Prints "port N" once listening.

Usage: db_server.py PG_PORT USER DATABASE

  GET /user?email=E  SELECT by email (psycopg2 puts the value into the query text) -> 200 name
  GET /missing       a query on a table that does not exist -> 500
  GET /fresh         a new connection, a count, closed -> 200 count
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import psycopg2

PG_PORT, USER, DATABASE = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def connect():
    conn = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user=USER, dbname=DATABASE, sslmode="disable")
    conn.autocommit = True
    return conn


shared = connect()
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        try:
            if url.path == "/user":
                email = parse_qs(url.query)["email"][0]
                with lock, shared.cursor() as cur:
                    cur.execute("SELECT name FROM users WHERE email = %s", (email,))
                    row = cur.fetchone()
                self.reply(200, row[0] if row else "")
            elif url.path == "/missing":
                with lock, shared.cursor() as cur:
                    cur.execute("SELECT * FROM nope WHERE id = %s", (42,))
                self.reply(200, "")
            elif url.path == "/fresh":
                conn = connect()
                with conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM users")
                    n = cur.fetchone()[0]
                conn.close()
                self.reply(200, str(n))
            else:
                self.reply(404, "")
        except psycopg2.Error as e:
            self.reply(500, e.pgcode or "error")

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
