"""A supervisord event listener in the worker container: every 5 s (TICK_5) it writes each
worker process's state, RSS and restart counts into a Redis hash that expires unless renewed,
so a dead container's figures vanish rather than linger. Stdout is supervisord's event
protocol; anything to say goes to stderr.

    python3 -m monitoring.supervisor_listener GROUP...   (the worker programs to report)

Fields of `_myauth.supervisor.<container host name>`, "<figure>:<process>":
up (1: RUNNING), rss (bytes), stops (a RUNNING process was asked to stop: memmon's restarts,
or an operator's), exits (it exited unexpectedly). The counts start at 0 with the container.
"""

import os
import socket
import sys

import redis
from supervisor import childutils

from monitoring import keys

EXPIRE_SECONDS = 30  # six missed ticks


def rss_bytes(pid: int) -> int:
    """Resident memory of one process, as memmon measures it (no children)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Figures:
    def __init__(self, groups):
        self.groups = set(groups)
        self.stops, self.exits = {}, {}

    def on_event(self, event: str, payload: str) -> None:
        fields = dict(token.split(":", 1) for token in payload.split() if ":" in token)
        if fields.get("groupname") not in self.groups:
            return
        name = fields.get("processname", "")
        if event == "PROCESS_STATE_STOPPING" and fields.get("from_state") == "RUNNING":
            self.stops[name] = self.stops.get(name, 0) + 1
        elif event == "PROCESS_STATE_EXITED" and fields.get("expected") == "0":
            self.exits[name] = self.exits.get(name, 0) + 1

    def hash(self, processes: list) -> dict:
        figures = {}
        for process in processes:
            if process["group"] not in self.groups:
                continue
            name = process["name"]
            running = process["statename"] == "RUNNING"
            figures[f"up:{name}"] = int(running)
            figures[f"rss:{name}"] = rss_bytes(process["pid"]) if running else 0
            figures[f"stops:{name}"] = self.stops.get(name, 0)
            figures[f"exits:{name}"] = self.exits.get(name, 0)
        return figures


def publish(client, key: str, figures: dict) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if figures:
            pipe.hset(key, mapping=figures)
            pipe.expire(key, EXPIRE_SECONDS)
        pipe.execute()


def main(groups) -> None:
    rpc = childutils.getRPCInterface(os.environ)
    client = redis.Redis(host=os.environ.get("REDIS_HOST", "redis"), port=6379, db=0,
                         password=os.environ["REDIS_PASSWORD"], socket_timeout=2, socket_connect_timeout=2)
    key = keys.SUPERVISOR_PREFIX + socket.gethostname()
    figures = Figures(groups)
    complained = False
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            event = headers["eventname"]
            if event.startswith("PROCESS_STATE_"):
                figures.on_event(event, payload)
            elif event.startswith("TICK_"):
                publish(client, key, figures.hash(rpc.supervisor.getAllProcessInfo()))
            complained = False
        except Exception as error:  # never fail the event (supervisord would resend it forever)
            if not complained:
                print(f"supervisor_listener: could not report ({error!r}); trying on every tick", file=sys.stderr, flush=True)
                complained = True
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
