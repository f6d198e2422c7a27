"""An HTTP service backed by memcached through pymemcache, as an uninstrumented service would be:
one client shared by the handler threads (behind a lock). Prints "port N" once listening.

Usage: memcache_server.py MEMCACHED_PORT

  GET /user?id=U     get user:U; on a miss, set it (noreply, pymemcache's default) -> 200
  GET /many          get of three keys, two of them stored -> 200 number found
  GET /big           get of a 100,000-byte value (larger than the capture cap) -> 200 length
  GET /count         set (waiting for STORED), then incr twice -> 200 value
  GET /wrong         incr of a value that is not a number: CLIENT_ERROR -> 500
  GET /meta          meta commands in quiet mode then mn, in one write, over a socket -> 200
  GET /fresh         a new connection, a get, closed -> 200
"""
import socket
import sys
import threading

from backed import serve
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

PORT = int(sys.argv[1])
cache = Client(("127.0.0.1", PORT))
lock = threading.Lock()
cache.set("big", b"x" * 100_000, noreply=False)
cache.set("a", b"1", noreply=False)
cache.set("b", b"2", noreply=False)
cache.set("plain", b"a string", noreply=False)


def meta():
    with socket.create_connection(("127.0.0.1", PORT)) as s:
        s.sendall(b"ms mk 2 q\r\nhi\r\nmg mk v q\r\nmg missing v q\r\nmn\r\n")
        got = b""
        while not got.endswith(b"MN\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        return got


def route(path, args):
    with lock:
        if path == "/user":
            key = f"user:{args['id'][0]}"
            if cache.get(key) is None:
                cache.set(key, b"alice@example.com")
            return 200, ""
        if path == "/many":
            return 200, str(len(cache.get_many(["a", "b", "c"])))
        if path == "/big":
            return 200, str(len(cache.get("big")))
        if path == "/count":
            cache.set("n", b"0", noreply=False)
            cache.incr("n", 1)
            return 200, str(cache.incr("n", 1))
        if path == "/wrong":
            cache.incr("plain", 1)
            return 200, ""
        if path == "/meta":
            return 200, meta().decode()
        if path == "/fresh":
            fresh = Client(("127.0.0.1", PORT))
            fresh.get("a")
            fresh.close()
            return 200, ""
    return 404, ""


serve(route, MemcacheError, lambda e: type(e).__name__)
