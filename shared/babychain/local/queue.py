"""SQS on one machine: durable queues in Postgres (`bc_queue_*` in supabase/migrations), shared by worker processes.

Senders use `PostgresQueue.send` like `SqsQueue.send`. A consumer process receives one message at a time, hands it
to the real handler as an SQS event, and deletes it when the handler reports success, as Lambda's SQS integration
does. A message whose handler failed or crashed comes back after its visibility timeout; one received too often
moves to the dead letters. Consumers hold an advisory lock while they live, so the messages of a consumer that died
are released at once (`release_orphans`) rather than after their visibility timeout.

An idle consumer is woken for a message meant for it, not for every send: the receive that finds nothing registers
it as a waiter, and a send notifies one waiter per message on the waiter's own channel (see the
`..._queue_wake_one.sql` migration for how no wake-up is lost and how delayed messages are picked up on time). A
consumer's receive that takes the last due message registers it too, so it does not receive again only to find
nothing (`..._queue_no_empty_receive.sql`). A send made inside that consumer's invocation, to the queue it consumes,
wakes it first: it receives right after the invocation, in the process that is already running
(`..._queue_send_prefers_its_sender.sql`). Under the queue's lock a receive never waits for a row: one that would
gives up (lock_not_available) and is tried again here (`..._queue_no_waits_under_the_lock.sql`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from babychain.queues import SQS_MAX_DELAY_SECONDS, Queue
from babychain.store.base import Store
from babychain.store.errors import StoreError

# Advisory lock namespace of queue consumers: (RECEIVER_LOCK_CLASS, receiver id) is held while a consumer lives.
RECEIVER_LOCK_CLASS = 7272
STEP_QUEUE = "steps"
CALLBACK_QUEUE = "callbacks"
# An idle consumer wakes by itself at least this often. Only a safety net: notifications deliver the messages, and
# the one consumer that keeps time for delayed messages sleeps until they are due.
IDLE_WAIT_SECONDS = 5.0
# A consumer that took the last due message acknowledges it in its next receive, which a notification brings, or
# this long after the message at the latest (an idle queue then holds no handled message for long: the supervisor's
# scaling and `stats` count held messages as work in progress).
ACK_WITHIN_SECONDS = 1.0
# lock_not_available: a receive that would have waited for a row under the queue's lock gave up and rolled back
# (`..._queue_no_waits_under_the_lock.sql`); it is tried again at once, this many times in all.
LOCK_NOT_AVAILABLE = "55P03"
RECEIVE_ATTEMPTS = 5


@dataclass
class _Invocation:
    """A consumer's invocation running in this thread while the consumer is a registered waiter (it took the last
    due message): a send to its queue names it as the sender, and the send may hand the message to it (`picked`)."""

    queue: PostgresQueue
    receiver: int
    picked: bool = False


_INVOKING: ContextVar[_Invocation | None] = ContextVar("bc_queue_invoking", default=None)


@dataclass(frozen=True)
class ReceivedMessage:
    id: int
    body: dict[str, Any]
    receive_count: int
    receipt: str
    sent_at: str


@dataclass(frozen=True)
class Delivery:
    """A consumer's receive: the messages, the keeper's wait, and whether more were due (when False the consumer
    was registered as a waiter in the same call)."""

    messages: list[ReceivedMessage]
    next_visible_in_seconds: float | None
    more: bool


class PostgresQueue(Queue):
    def __init__(
        self,
        store: Store,
        name: str,
        *,
        visibility_timeout_seconds: float = 300.0,
        retry_after_failure_seconds: float = 2.0,
        max_receives: int = 5,
    ) -> None:
        self.store = store
        self.name = name
        self.visibility_timeout_seconds = visibility_timeout_seconds
        self.retry_after_failure_seconds = retry_after_failure_seconds
        self.max_receives = max_receives

    def in_store(self, store: object) -> str | None:
        return self.name if store is self.store else None

    @property
    def channel(self) -> str:
        return f"bc_queue_{self.name}"

    def send(self, body: dict[str, Any], delay_seconds: float = 0) -> None:
        self._send([{"body": body, "delay_seconds": min(SQS_MAX_DELAY_SECONDS, max(0.0, delay_seconds))}])

    def send_many(self, bodies: list[dict[str, Any]]) -> None:
        if bodies:
            self._send([{"body": body, "delay_seconds": 0} for body in bodies])

    def _send(self, messages: list[dict[str, Any]]) -> None:
        params: dict[str, Any] = {"queue": self.name, "messages": messages}
        invocation = _INVOKING.get()
        if invocation is None or invocation.queue is not self:
            self.store.call("bc_queue_send", params)
            return
        params["sender"] = invocation.receiver
        # {"sent": n, "sender": true}: counted as woken for a message, it receives once the invocation returns.
        if self.store.call("bc_queue_send", params)["sender"]:
            invocation.picked = True

    def receive(
        self,
        receiver: int | None,
        max_messages: int = 1,
        *,
        ack: ReceivedMessage | None = None,
        idle_wait_seconds: float | None = None,
    ) -> tuple[list[ReceivedMessage], float | None]:
        """Due messages (now invisible and held by `receiver`), and seconds until the next one becomes visible.

        `ack` deletes a message handled since the last receive in the same call (as `delete` would). A message
        received without a receiver is never released as an orphan: only its visibility timeout ends it.

        With `idle_wait_seconds` (a consumer holding a `ConsumerLease`, which waits when nothing came), a receive
        that finds nothing registers `receiver` as a waiter to be notified, and the wait is returned only to the one
        waiter that keeps time for the queue's next delayed message (None to the others: wait for a notification).
        """
        delivery = self._receive(receiver, max_messages, ack, idle_wait_seconds, idle_after=False)
        return delivery.messages, delivery.next_visible_in_seconds

    def receive_next(self, receiver: int, *, ack: ReceivedMessage | None, idle_wait_seconds: float) -> Delivery:
        """A consumer's receive (`consume`): as `receive` with `idle_wait_seconds`, and when it takes the last due
        message it also registers `receiver` as a waiter (`more` is False): the consumer waits after that message
        instead of receiving again to find nothing (the `..._queue_no_empty_receive.sql` migration)."""
        return self._receive(receiver, 1, ack, idle_wait_seconds, idle_after=True)

    def _receive(
        self,
        receiver: int | None,
        max_messages: int,
        ack: ReceivedMessage | None,
        idle_wait_seconds: float | None,
        *,
        idle_after: bool,
    ) -> Delivery:
        params: dict[str, Any] = {
            "queue": self.name,
            "max_messages": max_messages,
            "visibility_timeout_seconds": self.visibility_timeout_seconds,
            "max_receives": self.max_receives,
            "receiver": receiver,
        }
        if ack is not None:
            params["ack"] = {"id": ack.id, "receipt": ack.receipt}
        if idle_wait_seconds is not None:
            params["idle_wait_seconds"] = idle_wait_seconds
        if idle_after:
            params["idle_after"] = True
        for attempt in range(1, RECEIVE_ATTEMPTS + 1):
            try:
                answer = self.store.call("bc_queue_receive", params)
                break
            except StoreError as exc:
                if exc.sqlstate != LOCK_NOT_AVAILABLE or attempt == RECEIVE_ATTEMPTS:
                    raise
        messages = [
            ReceivedMessage(m["id"], m["body"], m["receive_count"], m["receipt"], m["sent_at"])
            for m in answer["messages"]
        ]
        next_in = answer.get("next_visible_in_seconds")
        # Only a consumer's receive (`idle_after`) answers `more`; `receive` does not read it.
        return Delivery(messages, None if next_in is None else float(next_in), answer.get("more", True))

    def leave(self, receiver: int) -> bool:
        """Unregisters an idle consumer that stops (a message a send meant for it goes to another waiter)."""
        return bool(self.store.call("bc_queue_leave", {"queue": self.name, "receiver": receiver}))

    def delete(self, message: ReceivedMessage) -> bool:
        return bool(
            self.store.call("bc_queue_delete", {"queue": self.name, "id": message.id, "receipt": message.receipt})
        )

    def retry_later(self, message: ReceivedMessage) -> bool:
        """A failed message comes back after a short wait instead of the whole visibility timeout."""
        return bool(
            self.store.call(
                "bc_queue_change_visibility",
                {
                    "queue": self.name,
                    "id": message.id,
                    "receipt": message.receipt,
                    "visibility_timeout_seconds": self.retry_after_failure_seconds,
                },
            )
        )

    def take(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """Receives and deletes the next message once it is due (for driving handlers by hand in tests)."""
        deadline = time.monotonic() + timeout
        while True:
            messages, next_in = self.receive(receiver=None)
            if messages:
                self.delete(messages[0])
                return messages[0].body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(remaining, 0.02 if next_in is None else max(0.005, min(next_in, 0.05))))

    def stats(self) -> dict[str, int]:
        answer: dict[str, int] = self.store.call("bc_queue_stats", {"queue": self.name})
        return answer

    def dead_letters(self) -> list[dict[str, Any]]:
        rows = self.store.call("bc_queue_dead_letters", {"queue": self.name})
        return list(rows or [])


def release_orphans(store: Store) -> int:
    """Makes the messages of consumers that died visible again; returns how many."""
    return int(store.call("bc_queue_release_orphans", {}) or 0)


class ConsumerLease:
    """A consumer's own connection: holds its liveness lock and waits for its notifications.

    It listens on its own channel (a send chose it for a message, or it keeps time for a delayed one) and on the
    queue's broadcast channel (messages released after a consumer died).
    """

    def __init__(self, dsn: str, receiver: int, queue: PostgresQueue) -> None:
        self.receiver = receiver
        self.queue = queue
        self._conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
        self._conn.execute("select pg_advisory_lock(%s, %s)", (RECEIVER_LOCK_CLASS, receiver))
        self._conn.execute(f'listen "{queue.channel}"')
        self._conn.execute(f'listen "bc_queue_r{receiver}"')

    def wait(self, timeout: float) -> None:
        """Returns when there may be a message for this consumer, or after `timeout` seconds.

        A notification 'due <epoch seconds>' makes this consumer the keeper for a delayed message: it sleeps on
        until then (or a sooner notification) instead of receiving now.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            notes = list(self._conn.notifies(timeout=max(0.0, deadline - time.monotonic()), stop_after=1))
            if not notes:
                return  # the timeout
            payload = notes[0].payload
            if not payload.startswith("due "):
                return
            deadline = min(deadline, time.monotonic() + float(payload[4:]) - time.time())
            if deadline <= time.monotonic():
                return

    def close(self) -> None:
        if self._conn.closed:
            return
        try:
            self.queue.leave(self.receiver)
        finally:
            self._conn.close()


class ConsumerState(Protocol):
    stopping: bool
    busy: bool


def consume(
    queue: PostgresQueue,
    lease: ConsumerLease,
    handle: Callable[[ReceivedMessage], bool],
    state: ConsumerState,
    *,
    idle_wait_seconds: float = IDLE_WAIT_SECONDS,
    idle_exit_seconds: float | None = None,
) -> None:
    """A consumer's loop: receive one message, `handle` it (True: done, delete it; False: retry it soon), repeat.

    The delete rides on the next receive. When that message was the last one due, the receive that took it has
    registered the consumer as a waiter: it waits for a notification (or ACK_WITHIN_SECONDS) before that next
    receive, instead of receiving at once to find nothing. `state.busy` is true while a message is in hand (a stop
    request then waits for it); the loop ends when `state.stopping` is set, or after `idle_exit_seconds` without a
    message.
    """
    handled: ReceivedMessage | None = None  # deleted with the next receive
    wait: float | None = None  # how long to wait before the next receive (None: at once)
    last_message = time.monotonic()
    try:
        while not state.stopping:
            if wait is not None:
                lease.wait(wait)
                if state.stopping:
                    break
            state.busy = True
            delivery = queue.receive_next(lease.receiver, ack=handled, idle_wait_seconds=idle_wait_seconds)
            received_at = time.monotonic()
            handled = None
            next_in = delivery.next_visible_in_seconds
            if not delivery.messages:
                state.busy = False
                idle = received_at - last_message
                if state.stopping or (idle_exit_seconds is not None and idle > idle_exit_seconds):
                    break
                wait = idle_wait_seconds if next_in is None else min(max(next_in, 0.0), idle_wait_seconds)
                continue
            message = delivery.messages[0]
            last_message = received_at
            # Registered as a waiter (`more` False): a send this invocation makes to this queue may hand its message
            # to this consumer before any other (at concurrency 1 a next step sent by message stays in this warm
            # process instead of waking an idle one); then it receives at once after the invocation.
            invocation = None if delivery.more else _Invocation(queue, lease.receiver)
            token = _INVOKING.set(invocation)
            try:
                done = handle(message)
            finally:
                _INVOKING.reset(token)
            if done:
                handled = message
            else:
                queue.retry_later(message)
            if delivery.more or (invocation is not None and invocation.picked):
                wait = None
            else:
                # A waiter already: until a notification, the keeper's due time, or the acknowledgement's limit.
                wait = ACK_WITHIN_SECONDS if handled is not None else idle_wait_seconds
                if next_in is not None:
                    wait = min(wait, max(0.0, received_at + next_in - time.monotonic()))
            state.busy = False
    finally:
        if handled is not None:
            # Stopping: if this fails, the message comes back after its visibility timeout.
            with contextlib.suppress(Exception):
                queue.delete(handled)
