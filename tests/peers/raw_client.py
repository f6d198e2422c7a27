"""A raw HTTP/1.1 client for tracewire's tests: exact bytes, one keep-alive connection.

Connects to HOST:PORT, prints "connected LOCALPORT", then for each line on stdin of the form
"get PATH [HEADERBYTES]" sends one request (with an X-Pad header of HEADERBYTES bytes), reads the
whole response (Content-Length framing) and prints "sent N received M". "quit" closes.
"""
import socket
import sys


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        rest += chunk
    return len(head) + 4 + len(rest)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.connect((host, port))
    print(f"connected {sock.getsockname()[1]}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        path = words[1]
        pad = int(words[2]) if len(words) > 2 else 0
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n"
        if pad:
            req += "X-Pad: " + "p" * pad + "\r\n"
        req += "\r\n"
        raw = req.encode()
        sock.sendall(raw)
        got = read_response(sock)
        print(f"sent {len(raw)} received {got}", flush=True)
    sock.close()
    print("closed", flush=True)


if __name__ == "__main__":
    main()
