"""Kombu's Redis transport, hardened (README, "Why it is built this way" and "Guarantees").

- A consumer that pops a message it cannot decode (not JSON, not a kombu envelope, a body that
  is not valid base64 or not a task) logs it and drops it. Kombu lets such a message crash the
  worker process ("Unrecoverable error"), and every task running on that process with it.
- A producer refuses a task message above MAX_MESSAGE_BYTES with MessageTooLarge, so the caller
  learns at once and nothing is queued: Alliance Auth's tasks pass ids, not data, and a
  message of megabytes only eats the broker's memory, which is capped.
- A gevent worker whose slots are all busy looks for a free one every SLOT_RECHECK_SECONDS,
  not every poll timeout (Poller).
- Workers sweep for messages whose visibility timeout has passed every RESTORE_SWEEP_SECONDS
  (kombu: every 100 s on an event loop, and on a gevent worker as often as it polls).

celery.py selects it with `broker_transport`; everything else is kombu's Redis transport.
"""

import time

from celery.utils.log import get_logger
from kombu.transport import redis

logger = get_logger(__name__)

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
SLOT_RECHECK_SECONDS = 0.02
RESTORE_SWEEP_SECONDS = 10
# What decoding a malformed message raises: JSONDecodeError, binascii.Error and
# UnicodeDecodeError are ValueErrors; a payload of the wrong shape raises TypeError or KeyError.
MALFORMED = (ValueError, TypeError, KeyError)


class MessageTooLarge(ValueError):
    pass


class Channel(redis.Channel):
    unacked_restore_throttle = 1  # sweep whenever the Poller lets maybe_restore_messages through

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except MALFORMED as error:
            # BRPOP already took it off the queue: dropping it is all that is left to do.
            logger.error("Discarded a malformed message from the broker: %r", error)
            return True

    def basic_consume(self, queue, no_ack, callback, consumer_tag, **kwargs):
        def reject_when_malformed(message):
            try:
                return callback(message)
            except MALFORMED as error:
                # Registered as delivered already: reject it, or Redis would hand it out again
                # after every visibility timeout.
                logger.error("Discarded a malformed message from the broker: %r", error)
                if not no_ack and not message.acknowledged:
                    message.reject(requeue=False)

        return super().basic_consume(queue, no_ack, reject_when_malformed, consumer_tag, **kwargs)

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

    def get(self, callback, timeout=None):
        # A worker without an event loop (gevent) drains the broker in a loop of get() calls.
        # While every slot is busy kombu stops its BRPOP and waits a whole poll timeout (1-2 s)
        # before it looks for a free slot again, so at full load slots sit idle most of the time
        # (the load test: throughput flat at about the concurrency per second). Look again soon.
        if any(channel.active_queues and not channel.qos.can_consume() for channel in self._channels):
            timeout = min(timeout or SLOT_RECHECK_SECONDS, SLOT_RECHECK_SECONDS)
        return super().get(callback, timeout)

    def maybe_restore_messages(self):
        # Time, not kombu's count of calls: a busy gevent worker calls this 50 times a second.
        if time.monotonic() - self.last_sweep >= RESTORE_SWEEP_SECONDS:
            self.last_sweep = time.monotonic()
            return super().maybe_restore_messages()


class Transport(redis.Transport):
    Channel = Channel

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycle = Poller()
