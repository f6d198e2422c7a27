"""An HTTP service backed by Redis through redis-py, as an uninstrumented service would be: one
client whose connection pool the handler threads share, on database 2. Prints "port N" once
listening.

Usage: cache_server.py REDIS_PORT

  GET /cart?user=U   GET cart:U; on a miss, a pipeline (MULTI, HSET, EXPIRE, EXEC) -> 200
  GET /wrong         HGET on a string key: the server answers WRONGTYPE -> 500
  GET /big           GET of a 100,000-byte value (larger than the capture cap) -> 200 length
  GET /burst         three pipelines without a transaction, each one write -> 200
  GET /fresh         a new connection (it selects database 2), a GET, closed -> 200
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import redis

REDIS_PORT = int(sys.argv[1])
db = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=2)
db.set("big", b"x" * 100_000)
db.set("plain", "a string")
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
            if url.path == "/cart":
                user = parse_qs(url.query)["user"][0]
                cart = db.get(f"cart:{user}")
                if cart is None:
                    with db.pipeline() as p:
                        p.hset(f"seen:{user}", mapping={"card": "4111-1111", "total": "12"})
                        p.expire(f"seen:{user}", 60)
                        p.execute()
                self.reply(200, "cart")
            elif url.path == "/wrong":
                db.hget("plain", "field")
                self.reply(200, "")
            elif url.path == "/big":
                self.reply(200, str(len(db.get("big"))))
            elif url.path == "/burst":
                for i in range(3):
                    with db.pipeline(transaction=False) as p:
                        p.incr(f"n:{i}")
                        p.incr(f"n:{i}")
                        p.execute()
                self.reply(200, "")
            elif url.path == "/fresh":
                fresh = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=2)
                fresh.get("plain")
                fresh.close()
                self.reply(200, "")
            else:
                self.reply(404, "")
        except redis.RedisError as e:
            self.reply(500, type(e).__name__)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
