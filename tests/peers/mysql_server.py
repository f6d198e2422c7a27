"""An HTTP service backed by MySQL or MariaDB through mysql-connector-python (its pure-Python
protocol), as an uninstrumented service would be: one connection opened at start and shared by
the handler threads, and one opened per request on /fresh. Prints "port N" once listening.

Usage: mysql_server.py PORT USER DATABASE

  GET /user?email=E  SELECT by email (the driver puts the value into the query text) -> 200 name
  GET /price?sku=S   a prepared statement (COM_STMT_PREPARE once, then COM_STMT_EXECUTE) -> 200
  GET /missing       a query on a table that does not exist -> 500 errno
  GET /many          a result of 2,000 rows (larger than the capture cap) -> 200 count
  GET /fresh         a new connection (its handshake names the database), a count, closed -> 200
  GET /secure        the same over TLS (the server's certificate not checked) -> 200
"""
import sys
import threading

import mysql.connector
from backed import serve

PORT, USER, DATABASE = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def connect(tls=False):
    if tls:
        options = {"ssl_verify_cert": False}
    else:
        options = {"ssl_disabled": True}
    return mysql.connector.connect(
        host="127.0.0.1", port=PORT, user=USER, database=DATABASE, use_pure=True, autocommit=True, **options
    )


shared = connect()
lock = threading.Lock()
prepared = shared.cursor(prepared=True)


def route(path, args):
    if path == "/user":
        with lock:
            cur = shared.cursor()
            cur.execute("SELECT name FROM users WHERE email = %s", (args["email"][0],))
            row = cur.fetchone()
            cur.close()
        return 200, row[0] if row else ""
    if path == "/price":
        with lock:
            prepared.execute("SELECT price FROM products WHERE sku = ?", (args["sku"][0],))
            row = prepared.fetchone()
        return 200, str(row[0]) if row else ""
    if path == "/missing":
        with lock:
            cur = shared.cursor()
            cur.execute("SELECT * FROM nope WHERE id = %s", (42,))
            cur.fetchall()
        return 200, ""
    if path == "/many":
        with lock:
            cur = shared.cursor()
            cur.execute("SELECT id, email FROM numbers")
            n = len(cur.fetchall())
            cur.close()
        return 200, str(n)
    if path in ("/fresh", "/secure"):
        conn = connect(tls=path == "/secure")
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM users")
        n = cur.fetchone()[0]
        cur.close()
        conn.close()
        return 200, str(n)
    return 404, ""


serve(route, mysql.connector.Error, lambda e: str(e.errno))
