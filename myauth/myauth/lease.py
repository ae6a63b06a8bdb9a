"""A worker process's lease in Redis: what it holds, kept alive by a heartbeat, handed back
when it dies (broker.py tells the whole story of delivery; this is its bookkeeping).

Keys, all in the broker's database:
- `_myauth.lease.<id>`: a string with a TTL of LEASE_SECONDS, renewed every BEAT_SECONDS by a
  thread of the worker process (not by its event loop, so a task that blocks the loop does not
  make the worker look dead). It exists while the process lives.
- `_myauth.held.<id>`: a hash, delivery tag -> the priority list the message was taken from.
  The fetch script writes it in the same step as it pops the message; acknowledging removes it.
- `unacked`: kombu's hash, delivery tag -> [message, exchange, routing key], as kombu keeps it.

Every live worker sweeps every BEAT_SECONDS: a held hash whose lease has expired belongs to a
dead process, and each of its messages is pushed back onto the list it came from, one atomic
script per message, so two workers sweeping at once cannot both push it.
"""

import json
import logging
import os
import secrets
import socket
import threading
import time
import weakref

import redis

from monitoring.keys import HELD_PREFIX, LEASE_PREFIX  # the exporter reads the same keys

logger = logging.getLogger(__name__)

UNACKED = "unacked"  # kombu's key: the message itself, under its delivery tag
BEAT_SECONDS = 3
LEASE_SECONDS = 15  # five missed beats: a process that has not renewed it for this long is dead
ACK_CONNECTIONS = 10  # shared by the process's greenlets or threads; they wait for one, never fail
REDIS_TIMEOUT_SECONDS = 10

# KEYS: lease, held, unacked, then the priority lists in the order to take from them. ARGV: for
# each list, "1" to record what is taken from it as held, "0" for a consumer that never
# acknowledges (no_ack: Celery's replies to control commands).
# Returns nil, or {list, message, delivery tag ("" when not recorded)}.
FETCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('LEASE_EXPIRED')
end
for i = 4, #KEYS do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    if ARGV[i - 3] ~= '1' then
      return {KEYS[i], item, ''}
    end
    local ok, message = pcall(cjson.decode, item)
    local properties = ok and type(message) == 'table' and message.properties
    local tag = type(properties) == 'table' and properties.delivery_tag
    if type(tag) ~= 'string' then
      return {KEYS[i], item, ''}
    end
    local info = type(properties.delivery_info) == 'table' and properties.delivery_info or {}
    redis.call('HSET', KEYS[3], tag,
      '[' .. item .. ',' .. cjson.encode(info.exchange or '') .. ',' .. cjson.encode(info.routing_key or '') .. ']')
    redis.call('HSET', KEYS[2], tag, KEYS[i])
    return {KEYS[i], item, tag}
  end
end
return nil
"""

# KEYS: held, unacked[, lease that must not exist]. ARGV: delivery tag, message, "left" or "right".
# Pushes the message back onto the list it was taken from, if this held hash still has it.
# Returns 1 when pushed, 0 when it was not held (any more), -1 when the lease is alive.
HAND_BACK = """
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
local list = redis.call('HGET', KEYS[1], ARGV[1])
if not list then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[3] == 'left' then
  redis.call('LPUSH', list, ARGV[2])
else
  redis.call('RPUSH', list, ARGV[2])
end
return 1
"""

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def redelivered(message: dict) -> str:
    """The message as it goes back onto its list, marked as redelivered like kombu does."""
    message.get("headers", {})["redelivered"] = True
    message.get("properties", {}).get("delivery_info", {})["redelivered"] = True
    return json.dumps(message)


def start_thread(target) -> None:
    """A real OS thread, also in a gevent worker (whose `threading` makes greenlets)."""
    try:
        from gevent import monkey
    except ImportError:
        monkey = None
    if monkey is not None and monkey.is_module_patched("threading"):
        monkey.get_original("_thread", "start_new_thread")(target, ())
    else:
        threading.Thread(target=target, name="myauth-lease", daemon=True).start()


class Lease:
    """This process's lease. One per process (lease_for), shared by its channels and kept
    across broker reconnections, so a task still running after one can be acknowledged."""

    def __init__(self, connection_parameters: dict):
        parameters = {**connection_parameters, "socket_timeout": REDIS_TIMEOUT_SECONDS,
                      "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}
        parameters.pop("max_connections", None)
        self.parameters = parameters
        self.pid = os.getpid()
        self.id = f"{socket.gethostname()}.{self.pid}.{secrets.token_hex(4)}"
        self.key, self.held = LEASE_PREFIX + self.id, HELD_PREFIX + self.id
        # Greenlets wait for a free connection rather than fail with "Too many connections".
        self.client = redis.Redis(connection_pool=redis.BlockingConnectionPool(
            max_connections=ACK_CONNECTIONS, timeout=REDIS_TIMEOUT_SECONDS, **parameters))
        self.fetch_script = self.client.register_script(FETCH)
        self.hand_back_script = self.client.register_script(HAND_BACK)
        self.channels = weakref.WeakSet()  # the broker channels that fetch under this lease
        self.tracked = set()  # delivery tags this process took and has not settled yet
        self.unsettled = set()  # acknowledged here, not yet in Redis (it was unreachable)
        self.released = False
        self.renewed_once = False
        self.renew(self.client)
        start_thread(self.beat_forever)

    # The worker's side: every call below runs in the consuming process.

    def fetch_arguments(self, lists: list, recorded: list) -> tuple:
        """(KEYS, ARGV) of FETCH for these lists; recorded[i]: whether to hold what lists[i] gives."""
        return [self.key, self.held, UNACKED, *lists], ["1" if record else "0" for record in recorded]

    def settle(self, tag: str) -> None:
        """The message is done with (acknowledged, or rejected without requeue): forget it.
        It stays tracked until Redis has forgotten it too, so reconcile never hands it back."""
        try:
            was_held = self.forget(self.client, tag)
        except CONNECTION_ERRORS as error:
            self.unsettled.add(tag)
            logger.warning("Redis did not take the acknowledgement of %s (%r); retrying every %d s",
                           tag, error, BEAT_SECONDS)
            return
        finally:
            self.tracked.discard(tag)
        if not was_held:
            logger.warning("Acknowledged %s after it had been handed back: this worker's lease had "
                           "expired, so another worker may run it again", tag)

    def forget(self, client, tag: str) -> bool:
        with client.pipeline() as pipe:
            _, was_held = pipe.hdel(UNACKED, tag).hdel(self.held, tag).execute()
        return bool(was_held)

    def hand_back(self, tag: str, message: dict = None, leftmost: bool = False) -> bool:
        """Push a message this process holds back onto its list (requeued, or never started).
        Without the message at hand, its copy in Redis. If Redis cannot take it now, it stays
        held, untracked, and the next reconcile hands it back."""
        self.tracked.discard(tag)
        if message is None:
            entry = self.client.hget(UNACKED, tag)
            message = parse_entry(entry) if entry is not None else None
            if message is None:
                if self.client.hdel(self.held, tag):  # (0: settled meanwhile, nothing wrong)
                    logger.error("Held message %s has no readable payload in %r; cleared", tag, UNACKED)
                return False
        pushed = self.hand_back_script(keys=[self.held, UNACKED],
                                       args=[tag, redelivered(message), "left" if leftmost else "right"])
        return pushed == 1

    def reconcile(self) -> None:
        """Hand back what Redis says this process holds and the process does not know of: a
        fetch whose reply was lost with its connection, a hand-back Redis did not take.
        Runs on the consuming thread, between fetches."""
        if any(channel.fetch_in_flight() for channel in list(self.channels)):
            return  # its reply, not yet read, is a message held and not yet known: not a lost one
        for tag in self.client.hkeys(self.held):
            tag = tag.decode()
            if tag not in self.tracked and tag not in self.unsettled:
                logger.warning("Handing back %s: held by this worker, which no longer knows of it", tag)
                self.hand_back(tag)

    def release(self) -> None:
        """At exit: stop renewing; drop the lease at once if nothing is held, else let it
        expire so that live workers hand back what is left."""
        self.released = True
        try:
            self.settle_retries(self.client)
            if not self.client.exists(self.held):
                self.client.delete(self.key)
        except CONNECTION_ERRORS:
            pass

    # The heartbeat thread: renew the lease, retry acknowledgements, hand back the dead's.

    def beat_forever(self) -> None:
        client = redis.Redis(connection_pool=redis.ConnectionPool(max_connections=2, **self.parameters))
        complained = False
        while not self.released:
            time.sleep(BEAT_SECONDS)
            if self.released:
                break
            try:
                self.renew(client)
                self.settle_retries(client)
                sweep(client, self.hand_back_script)
                complained = False
            except CONNECTION_ERRORS as error:
                if not complained:
                    logger.warning("Lease %s: Redis unreachable (%r); retrying every %d s", self.id, error, BEAT_SECONDS)
                    complained = True
            except Exception:  # the heartbeat must outlive any surprise; say what it was
                logger.exception("Lease %s: heartbeat failed; retrying in %d s", self.id, BEAT_SECONDS)

    def renew(self, client) -> None:
        with client.pipeline(transaction=False) as pipe:
            existed, _ = pipe.exists(self.key).set(self.key, self.describe(), px=LEASE_SECONDS * 1000).execute()
        if not existed and self.renewed_once:
            logger.error("Lease %s had expired (not renewed for %d s): what this worker held may have "
                         "been handed to another worker", self.id, LEASE_SECONDS)
        self.renewed_once = True

    def describe(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": self.pid, "renewed": time.time(),
                           "queues": self.queues()})

    def queues(self) -> list:
        """The task queues this process consumes (the exporter counts consumers per queue)."""
        try:
            self._queues = sorted({queue for channel in list(self.channels)
                                   for queue in set(channel.active_queues) - set(channel._no_ack_queues)})
        except RuntimeError:  # a channel or queue came or went meanwhile: what the last beat said
            pass
        return getattr(self, "_queues", [])

    def settle_retries(self, client) -> None:
        for tag in list(self.unsettled):
            self.forget(client, tag)
            self.unsettled.discard(tag)


def sweep(client, hand_back_script) -> int:
    """Hand back every message held under an expired lease; clear records that point at
    nothing. Returns how many messages went back. Any worker may run it at any time."""
    uptime = int(client.info("server")["uptime_in_seconds"])
    if uptime < LEASE_SECONDS + BEAT_SECONDS:
        # Redis just restarted: leases that expired while it was down may belong to live
        # workers that have not reconnected yet. Give them the time to renew.
        return 0
    returned = 0
    for key in client.scan_iter(match=LEASE_PREFIX + "*", count=1000):
        check_lease(client, key)
    for key in client.scan_iter(match=HELD_PREFIX + "*", count=1000):
        lease = LEASE_PREFIX + key.decode()[len(HELD_PREFIX):]
        if client.exists(lease):
            continue
        try:
            held = client.hgetall(key)
        except redis.ResponseError as error:
            logger.error("%s is not a hash of held messages (%s); cleared", key.decode(), error)
            client.delete(key)
            continue
        pushed = 0
        for tag in held:
            entry = client.hget(UNACKED, tag)
            message = parse_entry(entry) if entry is not None else None
            if message is None:
                if client.hdel(key, tag):  # (0: another worker handed it back meanwhile)
                    logger.error("Held message %s of expired lease %s has no readable payload; cleared",
                                 tag.decode(), lease)
                continue
            result = hand_back_script(keys=[key, UNACKED, lease], args=[tag, redelivered(message), "right"], client=client)
            if result == -1:
                break  # the lease came back: its worker was slow, not dead
            pushed += result
        if pushed:
            logger.warning("Handed back %d message(s) held by %s, whose lease expired", pushed, lease)
        returned += pushed
    return returned


def check_lease(client, key) -> None:
    """A lease is a string that expires within LEASE_SECONDS. One without a TTL would never
    expire: give it one (a live owner renews it anyway). Anything else is not a lease: delete it."""
    try:
        kind = client.type(key).decode()
        ttl = client.pttl(key)
    except redis.ResponseError:
        return
    if kind == "none":
        return  # expired since the scan found it
    if kind != "string":
        logger.error("Lease %s is malformed (a %s, not a string); deleted", key.decode(), kind)
        client.delete(key)
    elif ttl == -1 or ttl > 2 * LEASE_SECONDS * 1000:
        logger.error("Lease %s is malformed (TTL %s ms); it expires in %d s unless its worker renews it",
                     key.decode(), ttl, LEASE_SECONDS)
        client.pexpire(key, LEASE_SECONDS * 1000)


def parse_entry(entry: bytes):
    """kombu's unacked entry [message, exchange, routing key] -> the message, or None."""
    try:
        message = json.loads(entry)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return message if isinstance(message, dict) else None


_lease = None
_lease_lock = threading.Lock()


def lease_for(connection_parameters: dict) -> Lease:
    """This process's lease, taken on first use (a forked child takes its own)."""
    global _lease
    with _lease_lock:
        if _lease is None or _lease.pid != os.getpid():
            _lease = Lease(connection_parameters)
            import atexit
            atexit.register(_lease.release)
        return _lease
