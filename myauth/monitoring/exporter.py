"""The metrics exporter: serves what collect.py reads from Redis at /metrics, Prometheus' text
format, on METRICS_PORT inside its container (compose publishes it on loopback only).

    python3 -m monitoring.exporter
"""

import logging
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis

from monitoring import probes
from monitoring.collect import TIMEOUT_SECONDS, collect
from monitoring.exposition import render

PORT = 9808
WEB_URL = "http://web:8000"  # the web service inside the stack's network
WEB_TIMEOUT_SECONDS = 3  # with Redis's, a scrape stays within Prometheus' 10 s default
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
logger = logging.getLogger("monitoring.exporter")


def broker_client() -> redis.Redis:
    # One small pool for every scrape (check-sizing counts it among Redis's clients).
    pool = redis.BlockingConnectionPool(
        host=os.environ.get("REDIS_HOST", "redis"), port=6379, db=0, password=os.environ["REDIS_PASSWORD"],
        max_connections=2, timeout=TIMEOUT_SECONDS, socket_timeout=TIMEOUT_SECONDS,
        socket_connect_timeout=TIMEOUT_SECONDS)
    return redis.Redis(connection_pool=pool)


def web_up() -> bool:
    return probes.login_page_renders(WEB_URL, os.environ["SITE_URL"], timeout=WEB_TIMEOUT_SECONDS)


class Handler(BaseHTTPRequestHandler):
    client = None

    def do_GET(self):
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        body = render(collect(self.client, web_up)).encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # a scrape every few seconds is not news
        pass


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Handler.client = broker_client()
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    logger.info("serving /metrics on port %d", PORT)
    server.serve_forever()


if __name__ == "__main__":
    main()
