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

import psycopg2
from backed import serve

PG_PORT, USER, DATABASE = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def connect():
    conn = psycopg2.connect(host="127.0.0.1", port=PG_PORT, user=USER, dbname=DATABASE, sslmode="disable")
    conn.autocommit = True
    return conn


shared = connect()
lock = threading.Lock()


def route(path, args):
    if path == "/user":
        with lock, shared.cursor() as cur:
            cur.execute("SELECT name FROM users WHERE email = %s", (args["email"][0],))
            row = cur.fetchone()
        return 200, row[0] if row else ""
    if path == "/missing":
        with lock, shared.cursor() as cur:
            cur.execute("SELECT * FROM nope WHERE id = %s", (42,))
        return 200, ""
    if path == "/fresh":
        conn = connect()
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM users")
            n = cur.fetchone()[0]
        conn.close()
        return 200, str(n)
    return 404, ""


serve(route, psycopg2.Error, lambda e: e.pgcode or "error")
