"""Concurrent HTTP clients for tracewire's tests.

Usage: load.py BASE_URL PREFIX CLIENTS PER_CLIENT. Client c sends PER_CLIENT GETs to
BASE_URL + PREFIX + "<c>x<n>" one after another (a new connection each), all clients at once,
and prints each id whose answer was 200. Exits 1 if any request failed.
"""
import sys
import threading
import urllib.request


def main():
    base, prefix, clients, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    done, failed = [], []
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(c):
        start.wait()
        for n in range(per):
            rid = f"{prefix}{c}x{n}"
            try:
                with urllib.request.urlopen(base + rid, timeout=30) as r:
                    r.read()
                    ok = r.status == 200
            except Exception as e:  # noqa: BLE001 - reported below
                ok = False
                print(f"{rid}: {e}", file=sys.stderr)
            with lock:
                (done if ok else failed).append(rid)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(done))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
