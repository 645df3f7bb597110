"""`PostgresQueue` against a real Postgres: SQS's semantics (visibility, receipts, delay, redrive), SKIP LOCKED
concurrency, orphan release through the consumers' liveness locks, notifications, durability."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from babychain.local.queue import (
    ACK_WITHIN_SECONDS,
    RECEIVE_ATTEMPTS,
    RECEIVER_LOCK_CLASS,
    ConsumerLease,
    Delivery,
    PostgresQueue,
    ReceivedMessage,
    consume,
    release_orphans,
)
from babychain.store.errors import StoreError
from babychain.store.postgres import PostgresStore


@pytest.fixture
def store(database_url: str) -> Iterator[PostgresStore]:
    s = PostgresStore(database_url, max_size=4)
    yield s
    s.close()


def _receive_one(queue: PostgresQueue, receiver: int = 1) -> ReceivedMessage:
    messages, _next_in = queue.receive(receiver)
    assert len(messages) == 1, messages
    return messages[0]


def _poll(fetch: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def test_send_receive_delete_round_trip(store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=30)
    other = PostgresQueue(store, "callbacks", visibility_timeout_seconds=30)
    queue.send({"step_id": "a", "seq": 1})
    queue.send_many([{"step_id": "b", "seq": 1}, {"step_id": "c", "seq": 1}])
    assert other.receive(1) == ([], None)  # queues are separate
    assert queue.stats() == {"visible": 3, "in_flight": 0, "delayed": 0, "dead": 0}

    first = _receive_one(queue)
    assert first.body == {"step_id": "a", "seq": 1}  # oldest first
    assert first.receive_count == 1 and first.receipt and first.sent_at
    rest, _ = queue.receive(1, max_messages=10)
    assert [m.body["step_id"] for m in rest] == ["b", "c"]
    assert queue.stats() == {"visible": 0, "in_flight": 3, "delayed": 0, "dead": 0}
    assert len({first.receipt, *(m.receipt for m in rest)}) == 3

    assert queue.delete(first) is True
    assert queue.delete(first) is False  # already gone
    for message in rest:
        assert queue.delete(message) is True
    assert queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    assert queue.receive(1) == ([], None)


def test_receive_acknowledges_the_previous_message_in_the_same_call(store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=0.3)
    queue.send_many([{"n": 1}, {"n": 2}])
    first = _receive_one(queue)
    second, _ = queue.receive(1, ack=first)
    assert [m.body for m in second] == [{"n": 2}]
    assert queue.stats()["in_flight"] == 1  # the first is gone, the second is held
    # An ack with a stale receipt deletes nothing: once the lease ran out, the redelivered copy is someone else's.
    time.sleep(0.4)
    again = _receive_one(queue)
    assert again.body == {"n": 2} and again.receipt != second[0].receipt
    assert queue.receive(1, ack=second[0])[0] == []
    assert queue.stats()["in_flight"] == 1
    assert queue.receive(1, ack=again)[0] == []
    assert queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}


def test_visibility_timeout_redelivers_with_a_new_receipt_and_stale_receipts_cannot_delete(
    store: PostgresStore,
) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=0.4)
    queue.send({"n": 1})
    first = _receive_one(queue, receiver=11)
    assert first.receive_count == 1
    hidden, next_in = queue.receive(12)
    assert hidden == []  # invisible while the first receiver holds it
    assert next_in is not None and 0 < next_in <= 0.4
    time.sleep(next_in + 0.05)
    second = _receive_one(queue, receiver=12)
    assert second.id == first.id and second.body == {"n": 1}
    assert second.receive_count == 2
    assert second.receipt != first.receipt
    assert queue.delete(first) is False  # the first receiver's lease ran out: its receipt is stale
    assert queue.stats()["in_flight"] == 1
    assert queue.delete(second) is True
    assert queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}


def test_delayed_message_becomes_visible_after_its_delay(store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=30)
    started = time.monotonic()
    queue.send({"poll": 1}, delay_seconds=0.5)
    early, next_in = queue.receive(1)
    assert early == []
    assert next_in is not None and 0.3 < next_in <= 0.5
    assert queue.stats()["delayed"] == 1
    message = _poll(lambda: queue.receive(1)[0])
    elapsed = time.monotonic() - started
    assert [m.body for m in message] == [{"poll": 1}]
    assert 0.45 <= elapsed < 3.0
    # A negative delay is no delay.
    queue.send({"poll": 2}, delay_seconds=-5)
    assert [m.body for m in queue.receive(1)[0]] == [{"poll": 2}]


def test_next_visible_in_seconds_when_nothing_is_due(store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=30)
    assert queue.receive(1) == ([], None)  # an empty queue: nothing to wait for
    queue.send({"now": 1})
    queue.send({"later": 1}, delay_seconds=5)
    messages, next_in = queue.receive(1)
    assert [m.body for m in messages] == [{"now": 1}]
    assert next_in is None  # a consumer that got work does not need the wait (and the lookup is skipped)
    # Nothing due now: the wait is until the delayed message (the received one is hidden for 30 s now).
    messages, next_in = queue.receive(1)
    assert messages == [] and next_in is not None and 4 < next_in <= 5


def test_retry_later_brings_a_failed_message_back_after_the_short_wait(store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=30, retry_after_failure_seconds=0.3)
    queue.send({"step": "x"})
    message = _receive_one(queue)
    assert queue.retry_later(message) is True
    assert queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 1, "dead": 0}
    assert queue.receive(1)[0] == []
    started = time.monotonic()
    again = _poll(lambda: queue.receive(1)[0])
    # Back after about 0.3 s, not after the 30 s visibility timeout.
    assert len(again) == 1 and again[0].receive_count == 2
    assert time.monotonic() - started < 2.0
    assert queue.retry_later(message) is False  # stale receipt
    assert queue.delete(again[0]) is True


def test_redrive_moves_a_message_to_the_dead_letters_after_max_receives(store: PostgresStore) -> None:
    queue = PostgresQueue(store, "callbacks", visibility_timeout_seconds=0, max_receives=3)
    queue.send({"run_id": "poison"})
    counts = [_receive_one(queue).receive_count for _ in range(3)]
    assert counts == [1, 2, 3]
    messages, _ = queue.receive(1)
    assert messages == []  # the fourth receive buries it instead of delivering it
    assert queue.dead_letters() == [{"run_id": "poison"}]
    assert queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 1}
    assert PostgresQueue(store, "steps").dead_letters() == []
    # The queue keeps working for other messages.
    queue.send({"run_id": "healthy"})
    healthy = _receive_one(queue)
    assert healthy.body == {"run_id": "healthy"} and queue.delete(healthy)
    assert queue.receive(1) == ([], None)


def test_concurrent_consumers_receive_each_message_exactly_once(database_url: str, store: PostgresStore) -> None:
    total = 200
    PostgresQueue(store, "steps").send_many([{"n": n} for n in range(total)])
    received: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)
    deadline = time.monotonic() + 30

    def consume(index: int) -> None:
        own = PostgresStore(database_url, max_size=1)
        queue = PostgresQueue(own, "steps", visibility_timeout_seconds=60)
        try:
            start.wait()
            while time.monotonic() < deadline:
                messages, _ = queue.receive(index + 1, max_messages=1 + index % 2 * 4)  # batches of 1 and 5
                if not messages:
                    if sum(len(r) for r in received) >= total:
                        return
                    time.sleep(0.005)  # the rest are locked by the others right now
                    continue
                for message in messages:
                    received[index].append(message.body["n"])
                    assert message.receive_count == 1
                    assert queue.delete(message)
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    everything = [n for r in received for n in r]
    duplicates = [n for n, c in Counter(everything).items() if c > 1]
    assert not duplicates
    assert sorted(everything) == list(range(total))  # none lost
    assert sum(1 for r in received if r) >= 2  # really concurrent
    assert PostgresQueue(store, "steps").stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}


def test_messages_of_a_dead_consumer_are_released_at_once(database_url: str, store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=60)
    lease = ConsumerLease(database_url, 4242, queue)
    watcher = ConsumerLease(database_url, 4343, queue)
    try:
        queue.send({"step": "held"})
        held = _receive_one(queue, receiver=4242)
        assert release_orphans(store) == 0  # its consumer lives
        assert queue.receive(4343) == ([], pytest.approx(60, abs=2))
        assert queue.stats()["in_flight"] == 1

        watcher.wait(0.05)  # drains the notification of the send
        lease.close()  # the consumer's connection ends, as when its process is killed
        assert _poll(lambda: release_orphans(store)) == 1
        started = time.monotonic()
        watcher.wait(5)  # the release notifies the queue's consumers
        assert time.monotonic() - started < 1.5
        again = _receive_one(queue, receiver=4343)
        assert again.id == held.id and again.receive_count == 2
        assert queue.delete(held) is False and queue.delete(again) is True
        assert release_orphans(store) == 0
    finally:
        lease.close()
        watcher.close()


def test_release_orphans_leaves_messages_of_live_consumers_and_unheld_messages_alone(
    database_url: str, store: PostgresStore
) -> None:
    queue = PostgresQueue(store, "steps", visibility_timeout_seconds=60)
    leases = [ConsumerLease(database_url, receiver, queue) for receiver in (501, 502)]
    try:
        queue.send_many([{"n": 1}, {"n": 2}])
        queue.send({"n": 3}, delay_seconds=60)
        _receive_one(queue, receiver=501)
        _receive_one(queue, receiver=502)
        leases[1].close()
        assert _poll(lambda: release_orphans(store)) == 1  # only 502's message; 501 lives, 3 is merely delayed
        assert [m.body for m in queue.receive(501)[0]] == [{"n": 2}]
        assert queue.stats() == {"visible": 0, "in_flight": 2, "delayed": 1, "dead": 0}
    finally:
        for lease in leases:
            lease.close()


def _woken(lease: ConsumerLease, timeout: float) -> bool:
    started = time.monotonic()
    lease.wait(timeout)
    return time.monotonic() - started < timeout * 0.8


def test_a_send_wakes_one_registered_consumer_per_message(database_url: str, store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps")
    first, second = ConsumerLease(database_url, 77, queue), ConsumerLease(database_url, 78, queue)
    sender = PostgresStore(database_url, max_size=1)
    try:
        assert not _woken(first, 0.3)  # nothing sent: the whole timeout
        # Both find nothing and register (the queue is empty: nothing to keep time for).
        assert queue.receive(77, idle_wait_seconds=30) == ([], None)
        assert queue.receive(78, idle_wait_seconds=30) == ([], None)

        PostgresQueue(sender, "callbacks").send({"other": "queue"})
        assert not _woken(first, 0.3) and not _woken(second, 0.01)  # another queue's send wakes neither

        timer = threading.Timer(0.2, lambda: PostgresQueue(sender, "steps").send({"wake": "up"}))
        timer.start()
        assert _woken(second, 5)  # the most recently idle one, well before the timeout
        timer.join()
        assert not _woken(first, 0.3)  # and only that one
        (message,), _ = queue.receive(78, idle_wait_seconds=30)
        assert message.body == {"wake": "up"}
        # Busy with it, 78 is no waiter: the next send wakes 77.
        PostgresQueue(sender, "steps").send({"n": 1})
        assert _woken(first, 5) and not _woken(second, 0.3)
        assert [m.body for m in queue.receive(77, idle_wait_seconds=30)[0]] == [{"n": 1}]
        # Both done and idle again: a send of two messages wakes both.
        assert queue.receive(78, ack=message, idle_wait_seconds=30)[0] == []
        assert queue.receive(77, idle_wait_seconds=30)[0] == []
        PostgresQueue(sender, "steps").send_many([{"n": 2}, {"n": 3}])
        assert _woken(first, 5) and _woken(second, 5)
    finally:
        first.close()
        second.close()
        sender.close()


def test_a_receive_that_takes_the_last_due_message_registers_its_consumer_as_a_busy_waiter(
    database_url: str, store: PostgresStore
) -> None:
    queue = PostgresQueue(store, "steps")
    busy, idle = ConsumerLease(database_url, 81, queue), ConsumerLease(database_url, 82, queue)
    sender_store = PostgresStore(database_url, max_size=1)
    sender = PostgresQueue(sender_store, "steps")
    try:
        queue.send_many([{"n": 1}, {"n": 2}])
        first = queue.receive_next(81, ack=None, idle_wait_seconds=30)
        assert [m.body for m in first.messages] == [{"n": 1}] and first.more  # another is due: receive again
        assert _waiters(database_url) == []
        last = queue.receive_next(81, ack=first.messages[0], idle_wait_seconds=30)
        assert [m.body for m in last.messages] == [{"n": 2}] and not last.more  # the last: wait after it
        assert _waiters(database_url) == [81]
        assert queue.stats() == {"visible": 0, "in_flight": 1, "delayed": 0, "dead": 0}  # the first acknowledged
        # An idle consumer is woken before the busy one; then the busy one.
        assert queue.receive(82, idle_wait_seconds=30) == ([], None)
        sender.send({"n": 3})
        assert _woken(idle, 5) and not _woken(busy, 0.3)
        sender.send({"n": 4})
        assert _woken(busy, 5)
        # Its receive acknowledges the message it held and takes one; the other is the idle one's.
        mine = queue.receive_next(81, ack=last.messages[0], idle_wait_seconds=30)
        theirs = queue.receive_next(82, ack=None, idle_wait_seconds=30)
        assert sorted(m.body["n"] for m in (*mine.messages, *theirs.messages)) == [3, 4]
        assert queue.stats() == {"visible": 0, "in_flight": 2, "delayed": 0, "dead": 0}
        # 81 saw the other message due (it receives again after its own); 82 took the last one and waits after it.
        assert mine.more and not theirs.more
        assert _waiters(database_url) == [82]
        # Without a message, the receive registers the consumer as before (and acknowledges).
        for delivery, receiver in ((mine, 81), (theirs, 82)):
            again = queue.receive_next(receiver, ack=delivery.messages[0], idle_wait_seconds=30)
            assert again.messages == [] and not again.more
        assert queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    finally:
        busy.close()
        idle.close()
        sender_store.close()


def test_a_keeper_with_more_to_receive_takes_the_queue_lock_before_it_leaves_its_row(
    database_url: str, store: PostgresStore
) -> None:
    """A receive with more due deletes its waiter row, and a keeper hands its role on under the queue's lock. It takes
    that lock before it touches its row: a send holding the lock shared may be waiting for the row (PostgreSQL waits
    for a newer version's holder even under SKIP LOCKED), and a receive waiting for the lock while holding the row
    was a deadlock. Here the lock is held shared as by a send under way: the receive still answers at once."""
    queue = PostgresQueue(store, "steps")
    lease = ConsumerLease(database_url, 91, queue)
    try:
        queue.send({"n": 0}, delay_seconds=60)
        assert queue.receive(91, idle_wait_seconds=30)[1] is not None  # registered as the keeper of that message
        queue.send_many([{"n": 1}, {"n": 2}])
        answers: list[Delivery] = []
        with psycopg.connect(database_url) as send_under_way:
            send_under_way.execute("select pg_advisory_xact_lock_shared(7273, hashtext('steps'))")
            receiving = threading.Thread(
                target=lambda: answers.append(queue.receive_next(91, ack=None, idle_wait_seconds=30)), daemon=True
            )
            receiving.start()
            receiving.join(5)
            assert not receiving.is_alive(), "the receive waits for the lock while it holds its waiter row"
            # Its row is gone and not held: the send can go on.
            send_under_way.execute("set local lock_timeout = '1s'")
            assert send_under_way.execute("select from bc_queue_waiters for update").fetchall() == []
        [delivery] = answers
        assert [m.body for m in delivery.messages] == [{"n": 1}] and delivery.more
    finally:
        lease.close()


class _GivesUpFirst(PostgresStore):
    """A real store whose first `failures` receives fail as one that gave up under the queue's lock does."""

    def __init__(self, database_url: str, failures: int) -> None:
        super().__init__(database_url, max_size=1)
        self.failures = failures
        self.receives = 0

    def call(self, function: str, params: dict[str, Any]) -> Any:
        if function == "bc_queue_receive":
            self.receives += 1
            if self.receives <= self.failures:
                raise StoreError(
                    "bc_queue_receive: 55P03: canceling statement due to lock timeout", function=function, code="55P03"
                )
        return super().call(function, params)


def test_a_receive_that_gave_up_under_the_queue_lock_is_tried_again(database_url: str, store: PostgresStore) -> None:
    PostgresQueue(store, "steps").send_many([{"n": 1}, {"n": 2}])
    flaky = _GivesUpFirst(database_url, failures=2)
    try:
        queue = PostgresQueue(flaky, "steps")
        first = queue.receive_next(1, ack=None, idle_wait_seconds=30)
        assert flaky.receives == 3 and [m.body for m in first.messages] == [{"n": 1}]
        flaky.failures = 4 + RECEIVE_ATTEMPTS  # the next one keeps failing: the error is raised after the attempts
        with pytest.raises(StoreError) as caught:
            queue.receive_next(1, ack=first.messages[0], idle_wait_seconds=30)
        assert caught.value.sqlstate == "55P03" and flaky.receives == 3 + RECEIVE_ATTEMPTS
        # Nothing of the failed receives happened: the message is still held, the other still due.
        assert queue.stats() == {"visible": 1, "in_flight": 1, "delayed": 0, "dead": 0}
    finally:
        flaky.close()


def test_a_send_naming_its_busy_waiting_sender_hands_the_message_to_the_sender_first(
    database_url: str, store: PostgresStore
) -> None:
    queue = PostgresQueue(store, "steps")
    busy, idle = ConsumerLease(database_url, 83, queue), ConsumerLease(database_url, 84, queue)
    other_store = PostgresStore(database_url, max_size=1)
    try:
        assert queue.receive(84, idle_wait_seconds=30) == ([], None)  # idle
        queue.send({"n": 1})
        assert _woken(idle, 5)
        # 84 does not receive it: 83 takes it, the last due one, and waits after it (a busy waiter).
        held = queue.receive_next(83, ack=None, idle_wait_seconds=30)
        assert [m.body for m in held.messages] == [{"n": 1}] and not held.more
        queue.receive(84, idle_wait_seconds=30)  # idle again, registered anew (not notified)

        def send(body: dict[str, Any], sender: int | None) -> Any:
            extra = {} if sender is None else {"sender": sender}
            return other_store.call("bc_queue_send", {"queue": "steps", "messages": [{"body": body}], **extra})

        # Named as the sender (its invocation sends), the busy waiter is chosen before the idle one: told in the
        # answer, not notified (it receives when its invocation returns); no one else is woken.
        assert send({"n": 2}, 83) == {"sent": 1, "sender": True}
        assert _notified(database_url) == {83: True, 84: False}
        assert not _woken(idle, 0.3) and not _woken(busy, 0.01)
        # Chosen already: another send by it wakes the idle one, as a send that names no sender does.
        assert send({"n": 3}, 83) == {"sent": 1, "sender": False}
        assert _woken(idle, 5) and not _woken(busy, 0.3)
        mine = queue.receive_next(83, ack=held.messages[0], idle_wait_seconds=30)
        theirs = queue.receive_next(84, ack=None, idle_wait_seconds=30)
        assert sorted(m.body["n"] for m in (*mine.messages, *theirs.messages)) == [2, 3]
        # A sender that is no waiter (it saw more due and receives again at once) is not chosen: the idle one is.
        for delivery, receiver in ((mine, 83), (theirs, 84)):
            queue.receive_next(receiver, ack=delivery.messages[0], idle_wait_seconds=30)
        queue.send_many([{"n": 4}, {"n": 5}])
        assert _woken(busy, 5) and _woken(idle, 5)
        first = queue.receive_next(83, ack=None, idle_wait_seconds=30)
        assert first.more and 83 not in _waiters(database_url)
        queue.receive(84, ack=None, idle_wait_seconds=30)  # takes n=5; then idle
        queue.receive(84, idle_wait_seconds=30)
        assert send({"n": 6}, 83) == {"sent": 1, "sender": False}
        assert _woken(idle, 5)
        # Without a sender the answer is the count, as before.
        assert send({"n": 7}, None) == 1
    finally:
        busy.close()
        idle.close()
        other_store.close()


def _notified(database_url: str) -> dict[int, bool]:
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("select receiver, notified from bc_queue_waiters").fetchall())  # type: ignore[arg-type]


def test_a_message_sent_inside_an_invocation_stays_with_its_consumer_when_it_waits_next(
    database_url: str, store: PostgresStore
) -> None:
    """A chain of messages, each sent by the handler of the one before (a next step sent by message at concurrency 1):
    the consumer that sends takes the next itself, right after its invocation; the idle one is never woken."""
    states = [_State(), _State()]
    stores = [PostgresStore(database_url, max_size=1) for _ in states]
    handled: list[tuple[int, int]] = []
    receives = Counter[int]()
    done = threading.Event()
    leases: list[ConsumerLease] = []
    threads: list[threading.Thread] = []

    class Counting(PostgresQueue):
        def _receive(self, *args: Any, **kw: Any) -> Delivery:
            delivery = super()._receive(*args, **kw)
            receives[args[0]] += 1
            return delivery

    def handler(index: int, queue: PostgresQueue) -> Callable[[ReceivedMessage], bool]:
        def handle(message: ReceivedMessage) -> bool:
            n = message.body["n"]
            handled.append((index, n))
            if n < 20:
                queue.send({"n": n + 1})  # inside the invocation, on the queue it consumes (svc.step_queue)
            else:
                done.set()
            return True

        return handle

    try:
        for index, (state, own) in enumerate(zip(states, stores, strict=True)):
            queue = Counting(own, "steps")
            lease = ConsumerLease(database_url, 1100 + index, queue)
            leases.append(lease)
            thread = threading.Thread(
                target=consume,
                args=(queue, lease, handler(index, queue), state),
                kwargs={"idle_wait_seconds": 60.0},
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        assert _poll(lambda: len(_waiters(database_url)) == 2)  # both idle and registered
        PostgresQueue(store, "steps").send({"n": 0})
        assert done.wait(20)
        assert [n for _, n in handled] == list(range(21))
        first = handled[0][0]
        # Every later message was taken by the consumer that sent it: the one the first send woke.
        assert {index for index, _ in handled} == {first}, handled
        # One receive per message, plus the one that registered it at the start and the one that acknowledges the
        # last message (within ACK_WITHIN_SECONDS): the other never woke to find nothing, and the sender was not
        # notified by its own sends (a notification left pending would end a later wait at once: empty receives).
        assert _poll(lambda: receives[1100 + first] == 23, ACK_WITHIN_SECONDS + 3), receives
        time.sleep(0.3)
        assert receives == {1100 + first: 23, 1101 - first: 1}, receives
        assert PostgresQueue(store, "steps").stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    finally:
        for state in states:
            state.stopping = True
        with psycopg.connect(database_url, autocommit=True) as conn:
            for lease in leases:
                conn.execute(f"notify bc_queue_r{lease.receiver}")
        for thread in threads:
            thread.join(10)
        for lease in leases:
            lease.close()
        for own in stores:
            own.close()


def test_a_consumer_makes_one_receive_per_message_when_the_queue_runs_dry_each_time(
    database_url: str, store: PostgresStore
) -> None:
    consumers = _Consumers(database_url, 1)
    queue = PostgresQueue(store, "steps")
    time.sleep(0.3)  # idle and registered
    try:
        before = sum(consumers.receives.values())
        for n in range(20):  # one at a time, as runs at concurrency 1: the queue is empty after each
            queue.send({"n": n})
            consumers.wait_for(n + 1, 10)
        assert [body["n"] for body, _ in consumers.handled] == list(range(20))
        # The receive that takes a message registers the consumer, and the next send's wake-up brings the receive
        # that acknowledges it: one per message (it was two, the second finding nothing).
        receives = sum(consumers.receives.values()) - before
        assert receives <= 21 and consumers.empty_receives <= 2, (receives, consumers.empty_receives)
        # The last message is acknowledged without a send, within ACK_WITHIN_SECONDS.
        assert _poll(
            lambda: queue.stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}, ACK_WITHIN_SECONDS + 3
        )
    finally:
        consumers.stop()


def test_a_consumer_that_stops_passes_its_wake_up_on(database_url: str, store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps")
    stays, stops = ConsumerLease(database_url, 91, queue), ConsumerLease(database_url, 92, queue)
    try:
        queue.receive(91, idle_wait_seconds=30)
        queue.receive(92, idle_wait_seconds=30)
        queue.send({"for": "92"})  # the most recently idle: 92, which stops instead of receiving
        stops.close()
        assert _woken(stays, 5)
        assert [m.body for m in queue.receive(91, idle_wait_seconds=30)[0]] == [{"for": "92"}]
    finally:
        stays.close()
        stops.close()


def test_registrations_of_dead_consumers_are_forgotten(database_url: str, store: PostgresStore) -> None:
    queue = PostgresQueue(store, "steps")
    alive = ConsumerLease(database_url, 61, queue)
    dead = psycopg.connect(database_url, autocommit=True)  # a consumer's lease, without the polite leave
    dead.execute("select pg_advisory_lock(%s, %s)", (RECEIVER_LOCK_CLASS, 62))
    try:
        queue.receive(61, idle_wait_seconds=30)
        queue.receive(62, idle_wait_seconds=30)
        dead.close()  # killed while idle
        assert _poll(lambda: release_orphans(store) == 0 and _waiters(database_url) == [61])
        queue.send({"n": 1})
        assert _woken(alive, 5)  # not lost on the dead one
    finally:
        alive.close()


def _waiters(database_url: str) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return [r for (r,) in conn.execute("select receiver from bc_queue_waiters order by receiver")]


class _State:
    def __init__(self) -> None:
        self.stopping = False
        self.busy = False


class _Consumers:
    """Consumer threads running the containers' loop (`consume`) with a recording handler; no safety-net wake-ups
    within a test (idle wait 60 s), so a lost notification shows as a message that is late by a minute."""

    def __init__(self, database_url: str, count: int, *, fail_first: bool = False) -> None:
        self._dsn = database_url
        self.handled: list[tuple[dict[str, Any], float]] = []
        self.receives = Counter[int]()
        self.empty_receives = 0
        self._lock = threading.Lock()
        self._states = [_State() for _ in range(count)]
        self._stores = [PostgresStore(database_url, max_size=1) for _ in range(count)]
        self._failed: set[str] = set()
        self._fail_first = fail_first
        self.crashed: list[BaseException] = []  # what ended a consumer's loop other than `stop`
        self._leases: list[ConsumerLease] = []
        self._threads: list[threading.Thread] = []
        for index, (state, store) in enumerate(zip(self._states, self._stores, strict=True)):
            queue = _CountingQueue(store, "steps", self, index, retry_after_failure_seconds=0.3)
            lease = ConsumerLease(database_url, 1000 + index, queue)
            self._leases.append(lease)
            thread = threading.Thread(target=self._consume, args=(queue, lease, state), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _consume(self, queue: PostgresQueue, lease: ConsumerLease, state: _State) -> None:
        try:
            consume(queue, lease, self._handle, state, idle_wait_seconds=60.0)
        except BaseException as exc:
            self.crashed.append(exc)
            raise

    def _handle(self, message: ReceivedMessage) -> bool:
        with self._lock:
            key = str(message.body)
            if self._fail_first and key not in self._failed:
                self._failed.add(key)
                return False
            self.handled.append((message.body, time.time()))
        return True

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.handled) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        for state in self._states:
            state.stopping = True
        for lease in self._leases:
            # Wakes the idle ones (their own channel), then they see `stopping`.
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                conn.execute(f"notify bc_queue_r{lease.receiver}")
        for thread in self._threads:
            thread.join(10)
        for lease in self._leases:
            lease.close()
        for store in self._stores:
            store.close()


class _CountingQueue(PostgresQueue):
    def __init__(self, store: PostgresStore, name: str, owner: _Consumers, index: int, **kw: Any) -> None:
        super().__init__(store, name, **kw)
        self._owner, self._index = owner, index

    def _receive(self, *args: Any, **kw: Any) -> Delivery:
        delivery = super()._receive(*args, **kw)
        with self._owner._lock:
            self._owner.receives[self._index] += 1
            self._owner.empty_receives += not delivery.messages
        return delivery


def test_concurrent_sends_each_wake_a_consumer_and_none_is_missed(database_url: str, store: PostgresStore) -> None:
    consumers = _Consumers(database_url, 4)
    total, senders = 240, 6
    time.sleep(0.3)  # all four idle and registered
    try:
        failed: list[BaseException] = []

        def send(index: int) -> None:
            own = PostgresStore(database_url, max_size=1)
            queue = PostgresQueue(own, "steps")
            try:
                n = index
                while n < total:
                    if n % 7 == 0 and n + senders < total:  # some batches of two
                        queue.send_many([{"n": n, "at": time.time()}, {"n": n + senders, "at": time.time()}])
                        n += 2 * senders
                    else:
                        queue.send({"n": n, "at": time.time()})
                        n += senders
                    time.sleep(0.002 * (n % 3))  # bursts and gaps, so consumers keep going idle
            except BaseException as exc:  # a send that failed (a deadlock once did) says so, not as missed messages
                failed.append(exc)
                raise
            finally:
                own.close()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failed and not any(t.is_alive() for t in threads), failed
        consumers.wait_for(total, 20)
        assert consumers.crashed == []  # no consumer's loop died (a receive in a deadlock once did)
        ns = sorted(body["n"] for body, _ in consumers.handled)
        assert ns == list(range(total))  # each exactly once, none missed
        late = sorted(handled - body["at"] for body, handled in consumers.handled)
        assert late[-1] < 5.0, late[-10:]  # no lost wake-up (that would be a minute)
        assert late[len(late) // 2] < 1.0, late[len(late) // 2]
        assert sum(1 for c in consumers.receives.values() if c > 5) >= 2  # really concurrent
        # One wake-up per message: 34-37 receives found nothing in 240 messages here; waking every idle consumer
        # on each send would be about three per send.
        assert consumers.empty_receives <= total // 2, (consumers.empty_receives, consumers.receives)
    finally:
        consumers.stop()
    assert PostgresQueue(store, "steps").stats() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}


def test_delayed_messages_are_picked_up_on_time_by_one_consumer(database_url: str, store: PostgresStore) -> None:
    consumers = _Consumers(database_url, 4)
    queue = PostgresQueue(store, "steps")
    time.sleep(0.3)
    try:
        receives_before = sum(consumers.receives.values())
        delays = [0.4, 0.8, 1.2, 0.6, 1.0]
        sent_at = time.time()
        for n, delay in enumerate(delays):
            queue.send({"n": n, "due": sent_at + delay}, delay_seconds=delay)
        queue.send({"n": 9, "due": sent_at + 1.5}, delay_seconds=1.5)
        consumers.wait_for(len(delays) + 1, 10)
        assert sorted(body["n"] for body, _ in consumers.handled) == [0, 1, 2, 3, 4, 9]
        for body, handled in consumers.handled:
            # On time: not before it is due, and not a minute late (a keeper that was never told).
            assert body["due"] - 0.01 <= handled < body["due"] + 1.5, (body, handled - body["due"])
        # Not every idle consumer wakes for each due time: one keeps time (and passes the role on).
        receives = sum(consumers.receives.values()) - receives_before
        # Two per message (the one that takes it; the acknowledgement that finds nothing); waking all four: 5.
        assert receives <= 2 * (len(delays) + 1) + 3, (receives, consumers.receives)
    finally:
        consumers.stop()


def test_a_failed_message_comes_back_after_the_retry_wait(database_url: str, store: PostgresStore) -> None:
    consumers = _Consumers(database_url, 2, fail_first=True)
    time.sleep(0.3)
    try:
        sent = time.time()
        PostgresQueue(store, "steps").send({"n": 1})
        consumers.wait_for(1, 10)
        assert [body for body, _ in consumers.handled] == [{"n": 1}]
        assert 0.25 <= consumers.handled[0][1] - sent < 3.0  # the 0.3 s retry wait, not the idle minute
    finally:
        consumers.stop()


def test_messages_survive_the_store_that_sent_them(database_url: str) -> None:
    first = PostgresStore(database_url, max_size=1)
    queue = PostgresQueue(first, "steps", visibility_timeout_seconds=30)
    queue.send_many([{"n": 1}, {"n": 2}])
    queue.send({"n": 3}, delay_seconds=0.2)
    in_flight = _receive_one(queue)
    first.close()

    second = PostgresStore(database_url, max_size=1)
    try:
        queue = PostgresQueue(second, "steps", visibility_timeout_seconds=30)
        assert queue.stats() == {"visible": 1, "in_flight": 1, "delayed": 1, "dead": 0}
        assert [m.body for m in queue.receive(2)[0]] == [{"n": 2}]
        assert [m.body for m in _poll(lambda: queue.receive(2)[0])] == [{"n": 3}]
        assert queue.delete(in_flight) is True  # the receipt outlives the store too
    finally:
        second.close()


# Receives, acknowledgements and visibility changes commit without waiting for the WAL flush (a loss in a crash only
# delivers a message again; 20261202030000_queue_acks_without_flush.sql). Nothing else may: a send, a run's create and
# every transition are acknowledged to someone and must survive a crash.
WITHOUT_FLUSH = {"bc_queue_receive", "bc_queue_delete", "bc_queue_change_visibility"}


def test_only_the_queues_receives_and_acknowledgements_skip_the_wal_flush(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        named = {
            name
            for (name,) in conn.execute(
                "select p.proname from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
                "where n.nspname in ('public', 'babychain_private') and p.prosrc ilike '%synchronous_commit%'"
            ).fetchall()
        }
        # A function's SET clause would be undone when it returns, before the commit reads the setting.
        in_set_clauses = conn.execute(
            "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace "
            "where n.nspname in ('public', 'babychain_private') "
            "and exists (select from unnest(p.proconfig) c where c like 'synchronous_commit=%%')"
        ).fetchone()
    assert named == WITHOUT_FLUSH
    assert in_set_clauses == (0,)


def _commit_setting(conn: psycopg.Connection[Any], function: str, params: dict[str, Any]) -> tuple[Any, str]:
    """Calls `function` in a transaction of its own; its answer and the synchronous_commit its commit will use."""
    with conn.transaction():
        answer = conn.execute(f"select public.{function}(%s)", [Jsonb(params)]).fetchone()[0]  # type: ignore[index]
        setting = conn.execute("select current_setting('synchronous_commit')").fetchone()[0]  # type: ignore[index]
    return answer, setting


def test_receive_and_acknowledge_commit_without_the_flush_and_sends_and_transitions_with_it(database_url: str) -> None:
    run_id = str(uuid.uuid4())
    steps = [
        {
            "step_index": i,
            "step_key": key,
            "step_kind": "image",
            "model_identifier": "local/image",
            "params": {},
            "depends_on": [] if i == 0 else ["a"],
        }
        for i, key in enumerate(("a", "b"))
    ]
    run = {
        "id": run_id,
        "owner_id": f"test:{run_id}",
        "chain_slug": "flush",
        "chain_version": "1",
        "mode": "local",
        "input": {},
        "webhook_url": None,
        "request_hash": "h",
        "run_timeout_seconds": 3600,
        "callback_event_id": f"evt_{run_id}",
        "steps": steps,
    }
    queue = {"queue": "flush", "max_messages": 1, "visibility_timeout_seconds": 30, "max_receives": 5, "receiver": 7}
    with psycopg.connect(database_url, autocommit=True) as conn:  # each call its own transaction
        assert conn.execute("show synchronous_commit").fetchone() == ("on",)
        created, setting = _commit_setting(conn, "bc_create_run_queued", {"run": run, "queue": "flush", "message": {}})
        assert setting == "on"
        step = created["run"]["steps"][0]
        assert _commit_setting(conn, "bc_queue_send", {"queue": "flush", "messages": [{"body": {"n": 2}}]})[1] == "on"
        received, setting = _commit_setting(conn, "bc_queue_receive", queue)
        assert setting == "off"
        message = received["messages"][0]
        assert message["body"]["step_id"] == step["id"]
        taken, setting = _commit_setting(
            conn,
            "bc_take_step",
            {"run_id": run_id, "step_id": step["id"], "seq": step["seq"], "submit_timeout_seconds": 60},
        )
        assert taken["action"] == "claimed" and setting == "on"
        completed, setting = _commit_setting(
            conn,
            "bc_complete_step",
            {
                "step_id": step["id"],
                "attempt": 1,
                "output_files": ["file:///a"],
                "provider": "local",
                "provider_job_id": "job-1",
                "provider_metadata": {},
            },
        )
        assert completed["next_step"]["step_key"] == "b" and setting == "on"
        # The next receive acknowledges the first message; an acknowledgement alone and a visibility change too.
        received, setting = _commit_setting(conn, "bc_queue_receive", {**queue, "ack": message})
        assert received["messages"][0]["body"] == {"n": 2} and setting == "off"
        held = received["messages"][0]
        changed, setting = _commit_setting(
            conn, "bc_queue_change_visibility", {**held, "queue": "flush", "visibility_timeout_seconds": 0}
        )
        assert changed is True and setting == "off"
        again = _commit_setting(conn, "bc_queue_receive", queue)[0]["messages"][0]
        assert _commit_setting(conn, "bc_queue_delete", {**again, "queue": "flush"}) == (True, "off")
        # Outside those transactions the session's own setting is untouched.
        assert conn.execute("show synchronous_commit").fetchone() == ("on",)


def _run_request(owner: str) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    return {
        "id": run_id,
        "owner_id": owner,
        "chain_slug": "chain3",
        "chain_version": "2026-05-23",
        "mode": "local",
        "input": {"text_to_image_params": {"prompt": "a lighthouse", "seed": 7}},
        "metadata": {"team": "blue"},
        "webhook_url": "https://hooks.example.com/x",
        "idempotency_key": "same-key",
        "request_hash": "h1",
        "run_timeout_seconds": 3600,
        "callback_event_id": f"evt_{run_id}",
        "estimate": {"usd": 0.1},
        "steps": [
            {
                "step_index": i,
                "step_key": key,
                "step_kind": "image",
                "model_identifier": "local/image",
                "params": {"n": i},
                "depends_on": [] if i == 0 else [prev],
            }
            for i, (prev, key) in enumerate(zip(("", "a", "b"), ("a", "b", "c"), strict=True))
        ],
    }


def test_the_queued_create_stores_and_answers_what_the_create_does(database_url: str) -> None:
    """bc_create_run_queued inserts the run and steps itself (20261202062000_create_run_queued_lean.sql), beside
    bc_create_run (the AWS shape's create): both store the same rows and answer the same run."""
    varying = {
        "id",
        "run_id",
        "owner_id",
        "callback_event_id",
        "created_at",
        "updated_at",
        "deadline_at",
        "next_check_at",
    }

    def stored(conn: psycopg.Connection[Any], run_id: str) -> list[dict[str, Any]]:
        rows = conn.execute(
            "select to_jsonb(r) from chain_runs r where r.id = %s union all "
            "(select to_jsonb(s) from chain_steps s where s.run_id = %s order by s.step_index)",
            (run_id, run_id),
        ).fetchall()
        return [{k: v for k, v in row.items() if k not in varying} for (row,) in rows]

    def answer(run: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in run.items() if k not in varying} | {
            "steps": [{k: v for k, v in s.items() if k not in varying} for s in run["steps"]]
        }

    plain, queued = _run_request(f"test:{uuid.uuid4()}"), _run_request(f"test:{uuid.uuid4()}")
    with psycopg.connect(database_url, autocommit=True) as conn:
        by_create = conn.execute("select bc_create_run(%s)", [Jsonb(plain)]).fetchone()[0]  # type: ignore[index]
        by_queued = conn.execute(  # type: ignore[index]
            "select bc_create_run_queued(%s)", [Jsonb({"run": queued, "queue": "same", "message": {"kind": "s"}})]
        ).fetchone()[0]
        assert by_create["created"] is True and by_queued["created"] is True
        assert answer(by_queued["run"]) == answer(by_create["run"])
        assert stored(conn, queued["id"]) == stored(conn, plain["id"])
        assert len(stored(conn, queued["id"])) == 4
        first = by_queued["run"]["steps"][0]
        (body,) = conn.execute("select body from bc_queue_messages where queue = 'same'").fetchone()  # type: ignore[misc]
        assert body == {"kind": "s", "run_id": queued["id"], "step_id": first["id"], "seq": first["seq"]}
        # A replay answers the same run and sends nothing.
        replay = conn.execute(  # type: ignore[index]
            "select bc_create_run_queued(%s)",
            [Jsonb({"run": {**queued, "id": str(uuid.uuid4())}, "queue": "same", "message": {}})],
        ).fetchone()[0]
        assert replay == {"run": by_queued["run"], "created": False}
        assert conn.execute("select count(*) from bc_queue_messages where queue = 'same'").fetchone() == (1,)
