"""A server of a binary protocol tracewire does not read, for its tests: 64-byte frames, each
echoed back. Prints "port N" once listening. Usage: binary_echo.py [HOST]
"""
import socket
import sys
import threading


def serve(conn):
    with conn:
        while True:
            frame = b""
            while len(frame) < 64:
                chunk = conn.recv(64 - len(frame))
                if not chunk:
                    return
                frame += chunk
            conn.sendall(frame)


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(16)
    print(f"port {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
