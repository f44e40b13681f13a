"""The outbox's failure semantics, with a fake producer: a record that cannot be delivered
stops the worker naming the cause, every later flush fails, and a cancelled flush gives back
what it had not handed to the producer. (On the real broker: tests/integration/
test_outbox.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kpistream.exceptions import DeliveryError
from kpistream.outbox import Outbox


class RefusingBroker(Exception):
    pass


class FakeProducer:
    """Acknowledges every record at once, but fails the ones sent to ``refused`` (as a
    broker refusing a record: the future fails), and blocks on ``held`` until released."""

    def __init__(self, refused: str = "", held: str = "") -> None:
        self.refused, self.held = refused, held
        self.release = asyncio.Event()
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: Any, headers: Any) -> asyncio.Future[Any]:
        if topic == self.held:
            await self.release.wait()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if topic == self.refused:
            future.set_exception(RefusingBroker(f"MessageSizeTooLarge on {topic}"))
        else:
            self.sent.append((topic, value))
            future.set_result(None)
        return future

    def _ensure_producer(self) -> Any:
        return self

    @property
    def client(self) -> Any:
        return self

    def add_topic(self, topic: str) -> None:
        pass


class FakeApp:
    def __init__(self, producer: FakeProducer, stopping: bool = False) -> None:
        self.producer = producer
        self.should_stop = stopping
        self.crashed: list[BaseException] = []

    async def stop_worker(self, reason: DeliveryError) -> None:
        self.crashed.append(reason)


def outbox_of(app: FakeApp) -> Outbox:
    return Outbox(app, app.stop_worker)


def test_a_refused_record_crashes_the_worker_naming_the_cause() -> None:
    async def run() -> None:
        app = FakeApp(FakeProducer(refused="dlq"))
        outbox = outbox_of(app)
        outbox.send("events", None, b"1", 0)
        outbox.send("dlq", None, b"2", 0)
        with pytest.raises(DeliveryError, match="MessageSizeTooLarge on dlq"):
            await outbox.flush()
        assert len(app.crashed) == 1 and "MessageSizeTooLarge" in str(app.crashed[0])
        # From then on nothing more is sent: the state may be ahead of the changelogs.
        outbox.send("events", None, b"3", 0)
        with pytest.raises(DeliveryError):
            await outbox.flush()
        assert app.producer.sent == [("events", b"1")]
        assert len(app.crashed) == 1

    asyncio.run(run())


def test_a_stopping_worker_is_not_crashed_by_its_closed_producer() -> None:
    async def run() -> None:
        app = FakeApp(FakeProducer(refused="rows"), stopping=True)
        outbox = outbox_of(app)
        outbox.send("rows", None, b"1")
        with pytest.raises(DeliveryError):
            await outbox.flush()
        assert app.crashed == []

    asyncio.run(run())


def test_a_cancelled_flush_gives_back_what_it_had_not_sent() -> None:
    """Another coroutine's records, queued before the cancelled flush took them, are sent by
    the next flush rather than lost."""
    async def run() -> None:
        producer = FakeProducer(held="slow")
        app = FakeApp(producer)
        outbox = outbox_of(app)
        outbox.send("fast", None, b"1")
        outbox.send("slow", None, b"2")
        outbox.send("other", None, b"3")  # (another coroutine's)
        flushing = asyncio.create_task(outbox.flush())
        await asyncio.sleep(0.01)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        producer.held = ""
        producer.release.set()
        await outbox.flush()
        assert producer.sent == [("fast", b"1"), ("slow", b"2"), ("other", b"3")]
        assert app.crashed == []

    asyncio.run(run())


def test_a_record_refused_while_another_flush_finished_still_crashes_the_worker() -> None:
    """A flush waiting in the producer's send while another coroutine's flush finishes (and
    drops the futures it saw done) keeps the refused record's future: the aggregate's
    dead letter was once appended to a list the edge's flush had just replaced, never
    awaited, and the worker went on ("Future exception was never retrieved")."""
    async def run() -> None:
        producer = FakeProducer(refused="dlq", held="dlq")
        app = FakeApp(producer)
        outbox = outbox_of(app)
        outbox.send("dlq", None, b"dead letter", 0)
        aggregate = asyncio.create_task(outbox.flush())
        await asyncio.sleep(0)  # in the producer's send, held
        outbox.send("events", None, b"pack", 0)
        await outbox.flush()  # the edge's: acknowledged at once
        producer.release.set()
        with pytest.raises(DeliveryError, match="MessageSizeTooLarge on dlq"):
            await aggregate
        assert len(app.crashed) == 1
    asyncio.run(run())
