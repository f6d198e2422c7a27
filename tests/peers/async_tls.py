"""An HTTPS server on asyncio for tracewire's tests (uninstrumented): asyncio runs OpenSSL over
memory buffers (ssl.MemoryBIO), reading and writing the ciphertext itself on its event loop.
Answers every GET with "ok <last path segment>". Prints "port N" once listening.
Usage: HOP_TLS_CERT=... HOP_TLS_KEY=... python3 async_tls.py HOST PORT"""
import asyncio
import os
import ssl
import sys


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].split(b"?")[0]
            body = b"ok " + target.rsplit(b"/", 1)[-1] + b"\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.environ["HOP_TLS_CERT"], os.environ["HOP_TLS_KEY"])
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), ssl=ctx)
    print("port %d" % server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
