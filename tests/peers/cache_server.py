"""An HTTP service backed by Redis through redis-py, as an uninstrumented service would be: one
client whose connection pool the handler threads share, on database 2. Prints "port N" once
listening.

Usage: cache_server.py REDIS_PORT [TLS_PORT]

  GET /cart?user=U   GET cart:U; on a miss, a pipeline (MULTI, HSET, EXPIRE, EXEC) -> 200
  GET /wrong         HGET on a string key: the server answers WRONGTYPE -> 500
  GET /big           GET of a 100,000-byte value (larger than the capture cap) -> 200 length
  GET /burst         three pipelines without a transaction, each one write -> 200
  GET /fresh         a new connection (it selects database 2), a GET, closed -> 200
  GET /secure        a new connection over TLS to the server on TLS_PORT, a SET, closed -> 200
"""
import sys

import redis
from backed import serve

REDIS_PORT = int(sys.argv[1])
TLS_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else None
db = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=2)
db.set("big", b"x" * 100_000)
db.set("plain", "a string")


def route(path, args):
    if path == "/cart":
        user = args["user"][0]
        if db.get(f"cart:{user}") is None:
            with db.pipeline() as p:
                p.hset(f"seen:{user}", mapping={"card": "4111-1111", "total": "12"})
                p.expire(f"seen:{user}", 60)
                p.execute()
        return 200, "cart"
    if path == "/wrong":
        db.hget("plain", "field")
        return 200, ""
    if path == "/big":
        return 200, str(len(db.get("big")))
    if path == "/burst":
        for i in range(3):
            with db.pipeline(transaction=False) as p:
                p.incr(f"n:{i}")
                p.incr(f"n:{i}")
                p.execute()
        return 200, ""
    if path == "/secure":
        secure = redis.Redis(host="localhost", port=TLS_PORT, ssl=True, ssl_cert_reqs="none")
        secure.set("session", "s3cret")
        secure.close()
        return 200, ""
    if path == "/fresh":
        fresh = redis.Redis(host="127.0.0.1", port=REDIS_PORT, db=2)
        fresh.get("plain")
        fresh.close()
        return 200, ""
    return 404, ""


serve(route, redis.RedisError, lambda e: type(e).__name__)
