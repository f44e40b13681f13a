"""Stage 1, the edge: the raw input topics read in batches, outside faust's per-message path.

faust spends ~230 µs of machinery per message it delivers to an agent (DESIGN-NOTES §1), so a
design in which every input record is a faust message cannot pass ~4-5k events/s per worker.
Here one aiokafka consumer per worker, in its own consumer group (``<app_id>-edge``), reads
up to ``batch_size`` records at once, validates them (:class:`~kpistream.ingest.packing.Packer`),
dead-letters the rejects, produces one packed record per internal partition, waits for the
brokers' acknowledgements and only then commits the raw offsets: at-least-once, and every
item carries its source coordinates so the aggregate stage recognises a re-delivery.

It is a mode Service of the app: started and stopped with the worker. A failure that retrying
cannot fix (authorisation, a topic deleted under it, a broker unreachable at start) crashes
the app, so the worker exits non-zero naming the cause, never a healthy-looking worker that
reads nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    CommitFailedError,
    GroupAuthorizationFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    RebalanceInProgressError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from mode import Service

from kpistream.connections import kafka_options
from kpistream.contracts.wire import EventPack, RawMark, encode_event_pack
from kpistream.exceptions import KpistreamError
from kpistream.ingest.dead_letter import DeadLetters
from kpistream.ingest.packing import Packer, RawRecord, with_marks
from kpistream.ingest.validate import Validator
from kpistream.observability.logs import RateLimitedLog
from kpistream.runtime import Runtime
from kpistream.settings import parse_duration_ms

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 20.0  # the broker must answer within this at start, or the worker exits
MISSING_TOPIC_GRACE_S = 20.0  # how long an input topic may be missing before that is fatal
# aiokafka's end_offsets may wait forever for a partition that does not exist
END_OFFSETS_TIMEOUT_S = 10.0
AUTHORIZATION_ERRORS = (TopicAuthorizationFailedError, GroupAuthorizationFailedError,
                        ClusterAuthorizationFailedError)
RETRIABLE = (CommitFailedError, RebalanceInProgressError, IllegalStateError)


class EdgeError(KpistreamError):
    """The edge reader cannot go on; the worker exits with this message."""


class CommittedOffsets:
    """Committed offsets of the raw partitions this edge reads, for the lag gauge.

    A commit or a lookup that was awaiting the broker across a rebalance answers for an
    earlier ownership of its partitions: another worker may have read and committed past it
    since, and the partition may come back here with nothing left to read, so that offset
    would never be corrected (a CI run showed 470 records of "lag" on a partition committed
    to its end, after a SIGKILL and two rebalances). Each rebalance starts a new epoch; a
    result is kept only if no rebalance happened while it was awaited."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}
        self.epoch = 0
        # The largest offset ever known committed per partition, kept across rebalances: a
        # partition's log never ends below it unless its topic was deleted and created again
        # (whose committed offsets Kafka may drop with it).
        self.highest: dict[tuple[str, int], int] = {}

    def rebalanced(self, revoked: list[TopicPartition]) -> None:
        self.epoch += 1
        for tp in revoked:
            self.offsets.pop((tp.topic, tp.partition), None)

    def record(self, epoch: int, offsets: dict[TopicPartition, int]) -> None:
        """Offsets committed (or looked up) by a call started in ``epoch``."""
        for tp, offset in offsets.items():
            key = (tp.topic, tp.partition)
            self.highest[key] = max(offset, self.highest.get(key, offset))
            if epoch == self.epoch:
                self.offsets[key] = offset

    def looked_up(self, epoch: int, tp: TopicPartition, offset: int) -> None:
        """The group's committed offset, read from the broker: kept unless this edge already
        knows a later one (its own commit may have been recorded while the lookup was
        under way)."""
        key = (tp.topic, tp.partition)
        self.highest[key] = max(offset, self.highest.get(key, offset))
        if epoch == self.epoch and offset > self.offsets.get(key, -1):
            self.offsets[key] = offset

    def unknown(self, assignment: set[TopicPartition]) -> list[TopicPartition]:
        return sorted(tp for tp in assignment if (tp.topic, tp.partition) not in self.offsets)

    def lag(self, tp: TopicPartition, end: int) -> int:
        return max(0, end - self.offsets.get((tp.topic, tp.partition), 0))


async def gather_batch(getmany: Callable[..., Awaitable[dict[TopicPartition, list[Any]]]],
                       batch_size: int, within_s: float,
                       stopping: Callable[[], bool]) -> dict[TopicPartition, list[Any]]:
    """One edge batch: up to ``batch_size`` records, gathered for up to ``within_s`` after
    the first ones came (``getmany`` is the consumer's). A single ``getmany`` returns what
    one fetch brought: at live rates a handful of records, and every batch costs each stage
    a message per partition, so a worker fed 1,500 events/s live judged only ~700/s at
    100% CPU (while it judges 6,000/s of a backlog)."""
    fetched = await getmany(timeout_ms=int(within_s * 1000), max_records=batch_size)
    count = sum(len(records) for records in fetched.values())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while 0 < count < batch_size and not stopping():
        left_ms = int((deadline - loop.time()) * 1000)
        if left_ms <= 0:
            break
        more = await getmany(timeout_ms=left_ms, max_records=batch_size - count)
        for tp, records in more.items():
            fetched.setdefault(tp, []).extend(records)
            count += len(records)
    return fetched


def claims(marks: list[RawMark]) -> list[tuple[str, int, int | None, bool]]:
    return [(m.topic, m.partition, m.newest_ts, m.at_end) for m in marks]


class EdgeReader(Service):
    def __init__(self, runtime: Runtime, crash: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.crash_app = crash
        settings = runtime.settings
        self.topics = list(settings.input_topics)
        self.packer = Packer(Validator(settings), settings.input_topics, settings.partitions,
                             settings.pack_max_bytes, settings.retention_ms)
        self.rate_log = RateLimitedLog(logger, settings.log_interval_s)
        self.dead_letters = DeadLetters(settings.topic_dlq, runtime.outbox, self.rate_log)
        self.consumer: AIOKafkaConsumer | None = None
        self.newest: dict[tuple[str, int], int] = {}
        self.last_marks: list[tuple[str, int, int | None, bool]] | None = None
        self.ends: dict[tuple[str, int], int] = {}  # listed after the last batch read
        self.committed = CommittedOffsets()
        self.last_records: dict[TopicPartition, float] = {}  # monotonic ms: last read/assigned
        self.idle_lag_ms = settings.idle_lag_ms

    async def on_start(self) -> None:
        settings = self.runtime.settings
        self.consumer = AIOKafkaConsumer(
            **kafka_options(settings),
            group_id=settings.edge_group_id, enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=settings.edge_fetch_partition_bytes,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            session_timeout_ms=parse_duration_ms(settings.session_timeout),
            heartbeat_interval_ms=max(1000, parse_duration_ms(settings.session_timeout) // 5),
            client_id=f"{settings.app_id}-edge")
        reader = self

        class Forget(ConsumerRebalanceListener):  # type: ignore[misc]
            """What this edge knew of partitions it no longer reads is stale."""

            async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
                reader.committed.rebalanced(revoked)
                for tp in revoked:
                    reader.last_records.pop(tp, None)

            async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
                reader.committed.rebalanced([])

        try:
            await asyncio.wait_for(self.consumer.start(), START_TIMEOUT_S)
        except AUTHORIZATION_ERRORS as exc:
            raise self._not_authorised(exc) from exc
        except (TimeoutError, KafkaError, OSError) as exc:
            raise EdgeError(f"edge reader cannot connect to Kafka at "
                            f"{settings.kafka_bootstrap}: {exc!r}") from exc
        # Subscribed after start: a consumer subscribed before waits in start() for its
        # first assignment, which a rebalance held up by a crashed member delays by a whole
        # session timeout; getmany waits for it instead.
        self.consumer.subscribe(self.topics, listener=Forget())

    async def on_stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()

    @Service.task
    async def _read(self) -> None:
        try:
            await self._read_batches()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.critical("edge_reader_failed cause=%r", exc)
            await self.crash_app(EdgeError(f"edge reader failed: {exc!r}"))

    async def _read_batches(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        missing_since: float | None = None
        while not self.should_stop:
            try:
                fetched = await self._fetch(consumer)
            except UnknownTopicOrPartitionError as exc:
                raise EdgeError(f"an input topic disappeared: {exc!r}") from exc
            except AUTHORIZATION_ERRORS as exc:
                raise self._not_authorised(exc) from exc
            except KafkaConnectionError as exc:
                self.rate_log.warning("edge_fetch_retry", error=repr(exc))
                await asyncio.sleep(1)
                continue
            raw_partitions = self._raw_partitions()
            denied = sorted(set(self.topics) & consumer._client.cluster.unauthorized_topics)
            if denied:
                raise self._not_authorised(TopicAuthorizationFailedError(", ".join(denied)))
            if raw_partitions is None:
                now = asyncio.get_running_loop().time()
                missing_since = missing_since or now
                if now - missing_since > MISSING_TOPIC_GRACE_S:
                    raise EdgeError(f"input topics missing: {self._missing_topics()}")
                continue
            missing_since = None
            self._check_not_recreated()
            await self._process(fetched, raw_partitions)

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list[Any]]:
        settings = self.runtime.settings
        return await gather_batch(consumer.getmany, settings.batch_size,
                                  settings.batch_within_s, lambda: self.should_stop)

    def _check_not_recreated(self) -> None:
        """An input partition whose log ends below an offset the group committed was deleted
        and created again empty (by the broker's auto.create.topics.enable, when any
        client asks for it: aiokafka's metadata requests allow it). Read on, the worker
        would look healthy and read nothing of what the topic held."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            committed = self.committed.highest.get((tp.topic, tp.partition))
            if end is not None and committed is not None and committed > end:
                raise EdgeError(
                    f"input topic {tp.topic!r} was deleted under the worker and created "
                    f"again: partition {tp.partition} ends at offset {end}, below offset "
                    f"{committed} already read and committed")

    def _not_authorised(self, exc: Exception) -> EdgeError:
        settings = self.runtime.settings
        user = settings.kafka_sasl_username or "this client"
        return EdgeError(
            f"edge reader is not authorised: {exc!r}; {user} needs Describe and Read on the "
            f"input topics {self.topics} and Read on consumer group "
            f"{settings.edge_group_id!r} (docs/security.md)")

    def _raw_partitions(self) -> int | None:
        assert self.consumer is not None
        total = 0
        for topic in self.topics:
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                return None
            total += len(parts)
        return total

    def _missing_topics(self) -> list[str]:
        assert self.consumer is not None
        return [t for t in self.topics if not self.consumer.partitions_for_topic(t)]

    def _marks(self, now: float) -> list[RawMark]:
        assert self.consumer is not None
        marks = []
        for tp in sorted(self.consumer.assignment()):
            end = self.consumer.highwater(tp)
            listed = self.ends.get((tp.topic, tp.partition))
            if end is not None and listed is not None:
                end = max(end, listed)
            position = self._position(tp)
            # "Nothing left to read" (SPEC §3) once at the end offset AND nothing new came
            # for idle_lag: a partition of a stream replayed fast reaches its end offset
            # between two produce batches many minutes of event time behind the others.
            # A partition just assigned counts as busy until it stayed quiet that long: its
            # previous reader may have left it mid-stream. One that never held a record has
            # nothing to read at once: otherwise an input topic nobody writes to would hold
            # every judgement back for idle_lag after each start (a replayed backlog's late
            # events were accepted).
            caught_up = end is not None and position is not None and position >= end
            quiet = now - self.last_records.setdefault(tp, now) >= self.idle_lag_ms
            at_end = caught_up and (quiet or end == 0)
            marks.append(RawMark(tp.topic, tp.partition, self.newest.get(
                (tp.topic, tp.partition)), at_end, position))
        return marks

    async def _list_ends(self) -> dict[tuple[str, int], int]:
        """The broker's end offsets of every raw partition, this edge's and the others'
        (one ListOffsets request per leader), retried while the broker is out of reach for
        up to ``producer_request_timeout``, as long as the packs may wait to be delivered."""
        assert self.consumer is not None
        consumer = self.consumer
        loop = asyncio.get_running_loop()
        grace_s = parse_duration_ms(self.runtime.settings.producer_request_timeout) / 1000
        failing_since: float | None = None
        while True:
            partitions = [TopicPartition(topic, p) for topic in self.topics
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            try:
                listed = await asyncio.wait_for(consumer.end_offsets(partitions),
                                                END_OFFSETS_TIMEOUT_S)
            except AUTHORIZATION_ERRORS as exc:
                raise self._not_authorised(exc) from exc
            except (TimeoutError, KafkaError) as exc:
                now = loop.time()
                failing_since = failing_since or now
                if now - failing_since > grace_s or self.should_stop:
                    raise EdgeError(f"edge reader cannot list the input topics' end "
                                    f"offsets: {exc!r}") from exc
                self.rate_log.warning("edge_end_offsets_retry", error=repr(exc))
                await asyncio.sleep(1)
                continue
            return {(tp.topic, tp.partition): end for tp, end in listed.items()}

    def _position(self, tp: TopicPartition) -> int | None:
        """Next offset getmany will return, without a round trip (``consumer.position`` may
        wait for the broker); None before the partition has a position."""
        assert self.consumer is not None
        subscription = self.consumer._subscription.subscription
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None or tp not in assignment.tps:
            return None
        state = assignment.state_value(tp)
        return int(state.position) if state.has_valid_position else None

    async def _process(self, fetched: dict[TopicPartition, list[Any]],
                       raw_partitions: int) -> None:
        runtime = self.runtime
        now = runtime.now_ms()
        records = [RawRecord(tp.topic, tp.partition, m.offset, m.key, m.value)
                   for tp, messages in fetched.items() for m in messages]
        batch = self.packer.pack(records, now, raw_partitions, self.newest)
        for coords, ts in batch.newest.items():
            held = self.newest.get(coords)
            self.newest[coords] = ts if held is None or ts > held else held
        wall = time.monotonic() * 1000
        for tp, messages in fetched.items():
            if messages:
                self.last_records[tp] = wall
        if not records and claims(self._marks(wall)) == self.last_marks:
            return
        # Listed after the batch was read: the aggregate stage learns, with this batch's
        # events, of every partition that had grown by then (PartitionState.learn_ends).
        self.ends = await self._list_ends()
        marks = self._marks(wall)
        # A new position alone goes only with events: what the watermark depends on is
        # each partition's newest event time and whether it is read to its end.
        changed = claims(marks) != self.last_marks
        packs = with_marks(batch, marks, runtime.settings.partitions, raw_partitions, changed,
                           self.ends)
        for rejection, source in batch.rejections:
            self.dead_letters.send(rejection.error, rejection.detail, source, now)
        self._send(packs)
        await runtime.outbox.flush()
        self.last_marks = claims(marks)
        if records:
            await self._commit({tp: messages[-1].offset + 1
                                for tp, messages in fetched.items() if messages})

    def _send(self, packs: dict[int, list[EventPack]]) -> None:
        topic = self.runtime.settings.topic_events
        for p, p_packs in packs.items():
            for pack in p_packs:
                self.runtime.outbox.send(topic, None, encode_event_pack(pack), p)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self.consumer is not None
        epoch = self.committed.epoch
        try:
            await self.consumer.commit(offsets)
        except RETRIABLE as exc:
            # Partitions moved to another worker: it reads them again from the last commit,
            # and the aggregate stage recognises the re-delivered records by their source.
            self.rate_log.warning("edge_commit_skipped", error=repr(exc))
            return
        self.committed.record(epoch, offsets)

    async def refresh_committed(self) -> None:
        """Learn the committed offsets of assigned partitions this edge has not committed
        itself (assigned from another worker, or nothing read since the start), and look
        again at those it has read to their end but knows a commit behind: a commit that
        failed across a rebalance (IllegalGeneration) is redone by whoever reads the
        partition next, and the gauge must show that commit, not the failed one (a CI run
        showed a lag of 169 on a partition the group had committed to its end)."""
        if self.consumer is None:
            return
        assignment = self.consumer.assignment()
        check = set(self.committed.unknown(assignment))
        for tp in assignment:
            end, position = self.consumer.highwater(tp), self._position(tp)
            if (end is not None and position is not None and position >= end
                    and self.committed.lag(tp, end) > 0):
                check.add(tp)
        for tp in sorted(check):
            epoch = self.committed.epoch
            try:
                offset = await self.consumer.committed(tp)
            except KafkaError:
                continue
            if offset is not None:
                self.committed.looked_up(epoch, tp, offset)

    def lag(self) -> list[tuple[str, int, int]]:
        """(topic, partition, end - committed) of the raw partitions this edge reads."""
        if self.consumer is None:
            return []
        out = []
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is not None:
                out.append((tp.topic, tp.partition, self.committed.lag(tp, end)))
        return out
