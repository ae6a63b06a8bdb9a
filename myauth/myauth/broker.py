"""Kombu's Redis transport, made to deliver each task once while its worker lives, and again
soon after the worker dies (README, "Guarantees"). celery.py selects it (`broker_transport`).

What kombu 5.7's Redis transport does, and where it fails:
- A producer LPUSHes each message onto the list of its queue and priority bucket (`celery`,
  `celery\\x06\\x16<p>`; Alliance Auth uses 0-9, lower first).
- A consumer BRPOPs the highest non-empty bucket, then records the message as unacknowledged
  (hash `unacked`, index `unacked_index`) with a second command: a worker that dies between the
  two loses the message. An acknowledgement deletes the record.
- Records older than the visibility timeout are pushed back onto their lists by any consumer's
  periodic sweep: a dead worker's tasks wait that long (an hour here), and a task a live worker
  holds for a countdown past it is handed to a second worker.
- Records and acknowledgements go through the channel's pool of 10 connections, which raises
  "Too many connections" when they are all in use. Celery 5.7 acknowledges from each task's own
  greenlet, so a gevent worker with dozens of greenlets fails acknowledgements and records; the
  consumer restarts and pushes back every message it had not acknowledged, the finished and the
  still running ones too. Tasks run twice, a message popped but not recorded is lost, and the
  worker spends its time reconnecting.

What this transport does instead (the bookkeeping is lease.py):
- Fetch: one Lua script pops the highest non-empty bucket and records the message as held by
  this worker process, in one step: a message is always either in its list or held.
- Lease: each worker process renews a lease in Redis from a thread of its own, so a task that
  blocks the event loop does not make it look dead. A live worker's messages are never handed
  out, however long it holds them. A process whose lease expired is dead: any live worker
  pushes its messages back within LEASE_SECONDS + BEAT_SECONDS.
- Wait: an idle worker does not poll. Redis publishes every push onto a list (keyspace events,
  `notify-keyspace-events El` in config/redis/redis.conf), and a worker fetches when one of its
  lists got one. It also looks every IDLE_RECHECK_WITH_EVENTS_SECONDS, in case an event was
  missed, and every IDLE_RECHECK_SECONDS where Redis publishes no such events (a managed Redis).
- Acknowledgements wait for a free connection instead of failing; one that Redis cannot take is
  retried until it can. A broker reconnection hands back only the messages whose tasks have not
  started; running tasks stay held and are acknowledged when they end.
- A message that cannot be decoded is logged and dropped (kombu lets it crash the worker, and
  every task running with it); one over MAX_MESSAGE_BYTES is refused at enqueue.

Producers (web, beat, `celery call`, community apps) are kombu's own: the message format and the
lists are unchanged. Messages recorded by kombu's own transport (a worker of an older release)
are still pushed back by kombu's sweep, after BROKER_VISIBILITY_TIMEOUT (delivery.py).
"""

import copy
import os
import time
import weakref
from queue import Empty

from celery.utils.log import get_logger
from kombu.transport import redis, virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from kombu.utils.objects import cached_property
from redis.exceptions import NoScriptError, ResponseError

from myauth import lease as leases

logger = get_logger(__name__)

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
SLOT_RECHECK_SECONDS = 1  # a worker whose slots are all busy is woken when one frees; this is the fallback
IDLE_RECHECK_SECONDS = 1
IDLE_RECHECK_WITH_EVENTS_SECONDS = 30
RESTORE_SWEEP_SECONDS = 10  # kombu's own sweep, for messages an older release's worker recorded
PUSH_EVENTS = ("lpush", "rpush")
# What decoding a malformed message raises: JSONDecodeError, binascii.Error and
# UnicodeDecodeError are ValueErrors; a payload of the wrong shape raises TypeError or KeyError.
MALFORMED = (ValueError, TypeError, KeyError)

# A test hook (the diagnostics app sets it): called with a message's delivery tag after the fetch
# recorded it as held and before the worker takes it on.
after_fetch = None


class MessageTooLarge(ValueError):
    pass


def running_delivery_tags() -> set:
    """Delivery tags of the tasks this worker process has started or handed to its pool."""
    try:
        from celery.worker import state
    except ImportError:
        return set()
    started = set(state.active_requests)
    return {request.message.delivery_tag for request in (*started, *state.reserved_requests)
            if request in started or request._apply_result is not None}


def publishes_pushes(client) -> bool:
    """Whether Redis publishes an event for every push onto a list; warns when it does not."""
    try:
        events = client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
    except ResponseError:  # CONFIG may be disabled on a managed Redis
        events = "?"
    if "E" in events and {"l", "A"} & set(events):
        return True
    logger.warning("Redis publishes no list events (notify-keyspace-events is %r, wants 'El'): an idle "
                   "worker finds a new task within %s s instead of at once", events, IDLE_RECHECK_SECONDS)
    return False


class QoS(redis.QoS):
    """kombu's bookkeeping of what a channel delivered; Redis's side is the lease's."""

    def append(self, message, delivery_tag):
        virtual.QoS.append(self, message, delivery_tag)  # the fetch script recorded it already

    def ack(self, delivery_tag):
        self.channel.lease.settle(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        self.slot_freed()

    def reject(self, delivery_tag, requeue=False):
        if requeue:
            self.hand_back(delivery_tag, leftmost=True)
        else:
            self.channel.lease.settle(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)
        self.slot_freed()

    def slot_freed(self):
        """Wake a consumer waiting for a free slot (Poller.get). A channel that has closed (kombu
        then drops its connection) has no consumer left to wake."""
        transport = self.channel.connection
        if transport is not None:
            transport.cycle.slot_freed()

    def restore_unacked(self, client=None):
        """The channel closes (shutdown, or a lost connection to the broker): hand back what
        has not started. A running task stays held, and is acknowledged when it ends."""
        self._flush()
        running = running_delivery_tags()
        unstarted = [tag for tag in self._delivered if tag not in running]
        self.channel.lease.tracked.difference_update(unstarted)  # what fails below, reconcile hands back
        try:
            for tag in unstarted:
                self.hand_back(tag)
            self.channel.lease.reconcile()
        except leases.CONNECTION_ERRORS as error:
            # What could not go back stays held; the next connection's reconcile hands it back.
            logger.warning("Could not hand back unstarted messages now (%r): they go back on reconnection", error)
        self._delivered.clear()

    def hand_back(self, tag, leftmost=False):
        # A message delivered before a reconnection is no longer in _delivered: Redis has it.
        message = self._delivered.get(tag)
        self.channel.lease.hand_back(tag, copy.deepcopy(message._raw) if message else None, leftmost=leftmost)


class Channel(redis.Channel):
    QoS = QoS
    unacked_restore_throttle = 1  # kombu's sweep runs whenever the Poller lets it (RESTORE_SWEEP_SECONDS)
    _lease = None
    _idle_recheck = IDLE_RECHECK_SECONDS
    _in_wake = None  # the connection subscribed to push events, once subscribed

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.handlers["WAKE"] = self._wake_read
        self._wake = True  # a fetch may find something: at start, and after every push seen
        self._fetched_at = 0.0
        self._my_lists = (None, frozenset())
        self._no_ack_queues = set()  # consumed without acknowledgements: nothing to hold
        self._fetching = True  # the reply awaited is the fetch script's, not kombu's BRPOP's

    @property
    def lease(self) -> leases.Lease:
        if self._lease is None:
            self._lease = leases.lease_for(self._connparams())
            self._lease.channels.add(self)
            self._idle_recheck = IDLE_RECHECK_WITH_EVENTS_SECONDS if publishes_pushes(self._lease.client) \
                else IDLE_RECHECK_SECONDS
        return self._lease

    def fetch_in_flight(self) -> bool:
        return bool(self._in_poll and self._fetching)

    @cached_property
    def wakeclient(self):
        """Subscribed to Redis's push events: wakes an idle worker when a task arrives."""
        return self._create_client(asynchronous=True).pubsub()

    def lists(self, queues) -> list:
        """The priority lists of these queues, in the order to take from them."""
        return [self._q_for_pri(queue, priority) for priority in self.priority_steps for queue in queues]

    def fetch_arguments(self, queues) -> tuple:
        recorded = [queue not in self._no_ack_queues for priority in self.priority_steps for queue in queues]
        return self.lease.fetch_arguments(self.lists(queues), recorded)

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        if no_ack:
            self._no_ack_queues.add(queue)
        elif queue not in self._fanout_queues:
            self.lease.reconcile()  # before this channel fetches anything

        def reject_when_malformed(message):
            try:
                return callback(message)
            except MALFORMED as error:
                # Delivered and held already: reject it, or it would stay held.
                logger.error("Discarded a malformed message from the broker: %r", error)
                if not no_ack and not message.acknowledged:
                    message.reject(requeue=False)

        return super().basic_consume(queue, no_ack, reject_when_malformed, consumer_tag, **kwargs)

    def _basic_cancel(self, consumer_tag):
        self._no_ack_queues.discard(self._tag_to_queue.get(consumer_tag))
        return super()._basic_cancel(consumer_tag)

    def _brpop_start(self, timeout=None):
        """Send the fetch script (kombu sent BRPOP here), when there may be something to fetch."""
        if not self.holds_messages():
            # Nothing to acknowledge, so nothing to hold (Celery's replies to a control command).
            self._fetching = False
            return super()._brpop_start(timeout)
        if not self._wake and time.monotonic() - self._fetched_at < self._idle_recheck:
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys, arguments = self.fetch_arguments(queues)
        self._wake, self._fetched_at, self._fetching = False, time.monotonic(), True
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command("EVALSHA", self.lease.fetch_script.sha, len(keys), *keys, *arguments)

    def _brpop_read(self, **options):
        if not self._fetching:
            return self._kombu_brpop_read(**options)
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except NoScriptError:  # Redis restarted and forgot the script
                self.lease.client.script_load(leases.FETCH)
                self._wake = True
                raise Empty()
            except ResponseError as error:
                if "LEASE_EXPIRED" not in str(error):
                    raise
                self.lease.renew(self.lease.client)  # Redis lost it (a restart): take it again
                self._wake = True
                raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        if not reply:
            raise Empty()
        list_key, item, tag = (bytes_to_str(part) for part in reply)
        self._wake = True  # there may be more
        queue = list_key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        if tag:
            self.lease.tracked.add(tag)
            if after_fetch is not None:
                after_fetch(tag)
        try:
            self.connection._deliver(loads(item), queue)
        except MALFORMED as error:
            logger.error("Discarded a malformed message from the broker: %r", error)
            if tag in self.lease.tracked:
                self.lease.settle(tag)
        return True

    def _kombu_brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except MALFORMED as error:
            # BRPOP already took it off the queue: dropping it is all that is left to do.
            logger.error("Discarded a malformed message from the broker: %r", error)
            return True

    def basic_get(self, queue, no_ack=False, **kwargs):
        """Take one message without waiting (no worker does): the same atomic fetch."""
        keys, arguments = self.lease.fetch_arguments(self.lists([queue]), [not no_ack] * len(self.priority_steps))
        reply = self.lease.fetch_script(keys=keys, args=arguments)
        if not reply:
            return None
        _, item, tag = (bytes_to_str(part) for part in reply)
        message = self.Message(loads(item), channel=self)
        if tag:
            self.lease.tracked.add(tag)
            self.qos.append(message, tag)
        return message

    def holds_messages(self) -> bool:
        """Whether it consumes a queue whose messages it must acknowledge."""
        return bool(set(self.active_queues) - self._no_ack_queues)

    def _subscribe_wake(self):
        client = self.wakeclient
        if client.connection._sock is None:
            client.connection.connect()
        self._in_wake = client.connection
        database = self.client.connection_pool.connection_kwargs.get("db", 0)
        client.subscribe(*(f"__keyevent@{database}__:{event}" for event in PUSH_EVENTS))
        self._wake = True  # a push before the subscription took effect went unseen

    def _wake_read(self):
        """Read every push event waiting; note one onto a list of this channel's queues."""
        queues = tuple(self.active_queues)
        if self._my_lists[0] != queues:
            self._my_lists = (queues, frozenset(self.lists(queues)))
        client = self.wakeclient
        try:
            while (event := client.parse_response(block=False, timeout=0)) is not None:
                if event[0] == b"message" and bytes_to_str(event[2]) in self._my_lists[1]:
                    self._wake = True
        except self.connection_errors:
            self._in_wake = None  # subscribe again on the next poll
            self._wake = True
        return False

    def _poll_error(self, type, **options):
        if type == "WAKE":
            return self._wake_read()
        return super()._poll_error(type, **options)

    def _on_connection_disconnect(self, connection):
        if self._in_wake is connection:
            self._in_wake = None
        super()._on_connection_disconnect(connection)

    def close(self):
        # kombu reads a fetch still in flight first; if that fails the message stays held, and
        # the next reconcile hands it back. Either way the channel must close and hand back.
        self._closing = True
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, *self.connection_errors):
                pass
        super().close()

    def _close_clients(self):
        super()._close_clients()
        client = self.__dict__.get("wakeclient")
        if client is not None and client.connection is not None:
            connection, client.connection = client.connection, None
            connection.disconnect()

    def _put(self, queue, message, **kwargs):
        size = len(message.get("body") or "")
        if size > MAX_MESSAGE_BYTES:
            task = (message.get("headers") or {}).get("task", "?")
            raise MessageTooLarge(
                f"task message for {task} is {size} bytes, above the broker's limit of "
                f"{MAX_MESSAGE_BYTES} bytes (myauth/broker.py): pass ids, not data"
            )
        return super()._put(queue, message, **kwargs)


class Poller(redis.MultiChannelPoller):
    last_sweep = 0.0

    def on_poll_start(self):
        for channel in self._channels:
            if channel.holds_messages():
                self._register_WAKE(channel)
        super().on_poll_start()

    def _register_WAKE(self, channel):
        if not self._client_registered(channel, channel.wakeclient, "WAKE"):
            channel._in_wake = None
            self._register(channel, channel.wakeclient, "WAKE")
        if not channel._in_wake:
            channel._subscribe_wake()

    def on_readable(self, fileno):
        channel, kind = self._fd_to_chan.get(fileno, (None, None))
        if kind == "WAKE":
            return channel._wake_read()  # also while every slot is busy: read, note, move on
        return super().on_readable(fileno)

    def __init__(self):
        super().__init__()
        # Written when a slot frees while the consumer waits for one; read by the poll it waits in.
        self.slot_freed_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        weakref.finalize(self, os.close, self.slot_freed_fd)
        self.waiting_for_slot = False
        self._slot_fd_poller = None

    def get(self, callback, timeout=None):
        # A worker without an event loop (gevent, threads) drains the broker in a loop of get()
        # calls. While every slot is busy kombu waits a whole poll timeout (1-2 s) before it
        # looks for a free slot again, so slots sat idle after each task: here the task's
        # acknowledgement wakes the poll. The flag is raised before the check, so a slot that a
        # pool thread frees in between still wakes it.
        self.waiting_for_slot = True
        if any(channel.active_queues and not channel.qos.can_consume() for channel in self._channels):
            if self._slot_fd_poller is not self.poller:  # a new poller after a reconnection
                self.poller.register(self.slot_freed_fd, self.eventflags)
                self._slot_fd_poller = self.poller
            timeout = min(timeout or SLOT_RECHECK_SECONDS, SLOT_RECHECK_SECONDS)
        else:
            self.waiting_for_slot = False
        return super().get(callback, timeout)

    def slot_freed(self):
        if self.waiting_for_slot:
            self.waiting_for_slot = False
            os.eventfd_write(self.slot_freed_fd, 1)

    def handle_event(self, fileno, event):
        if fileno == self.slot_freed_fd:
            try:
                os.eventfd_read(self.slot_freed_fd)
            except BlockingIOError:  # read by an earlier event of the same poll
                pass
            return None
        return super().handle_event(fileno, event)

    def close(self):
        super().close()
        if self._slot_fd_poller is not None:
            try:
                self._slot_fd_poller.unregister(self.slot_freed_fd)
            except (KeyError, ValueError, OSError):
                pass
            self._slot_fd_poller = None

    def maybe_restore_messages(self):
        # By the clock: a busy gevent worker calls this 50 times a second.
        if time.monotonic() - self.last_sweep < RESTORE_SWEEP_SECONDS:
            return
        self.last_sweep = time.monotonic()
        for channel in self._channels:
            if channel.holds_messages():
                try:
                    channel.lease.reconcile()  # what a hand-back Redis refused left held
                except channel.connection_errors:
                    pass
                break
        return super().maybe_restore_messages()  # kombu's, for what an older release's worker recorded


class Transport(redis.Transport):
    Channel = Channel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycle = Poller()
