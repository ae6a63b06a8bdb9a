"""Load the web app from this machine and print what it answered, as JSON.

    scripts/load-web URL [--requests N] [--concurrency C] [--max-seconds S]

C clients GET the URL until N requests are done or S seconds have passed, whichever comes
first. Only loopback URLs are accepted: this measures the stack on this host, never a site
elsewhere. Prints requests, per_second, statuses ({"200": n, ...}; "error" for no answer),
p50_ms and p99_ms. Standard library only.
"""

import argparse
import http.client
import ipaddress
import json
import socket
import statistics
import sys
import threading
import time
from urllib.parse import urlsplit


def loopback_url(value: str):
    url = urlsplit(value)
    try:
        loopback = url.scheme == "http" and ipaddress.ip_address(socket.gethostbyname(url.hostname or "")).is_loopback
    except (OSError, ValueError):
        loopback = False
    if not loopback:
        raise argparse.ArgumentTypeError(f"{value!r} is not an http:// URL on this machine (loopback only)")
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", type=loopback_url)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=60)
    options = parser.parse_args()
    url = options.url
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    remaining = iter(range(options.requests))
    lock, results = threading.Lock(), []
    deadline = time.monotonic() + options.max_seconds

    def client():
        connection = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                if next(remaining, None) is None:
                    return
            began = time.monotonic()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
            except (OSError, http.client.HTTPException):
                connection.close()
                status = "error"
            with lock:
                results.append((status, time.monotonic() - began))

    began = time.monotonic()
    clients = [threading.Thread(target=client) for _ in range(options.concurrency)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    elapsed = time.monotonic() - began
    latencies = sorted(seconds * 1000 for _, seconds in results) or [0.0]
    statuses = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    percentiles = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    json.dump({
        "requests": len(results),
        "seconds": round(elapsed, 2),
        "per_second": round(len(results) / elapsed, 1),
        "statuses": statuses,
        "p50_ms": round(percentiles[49], 1),
        "p99_ms": round(percentiles[98], 1),
    }, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
