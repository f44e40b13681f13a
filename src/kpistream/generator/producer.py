"""Produce generated or recorded input records to the input topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaProducer

from kpistream.connections import kafka_options
from kpistream.encoding import json_bytes
from kpistream.generator.traffic import Record, event_time_ms
from kpistream.settings import Settings


def topic_of(settings: Settings, kind: str) -> str:
    return {"order": settings.topic_orders, "spend": settings.topic_ad_spend,
            "survey": settings.topic_surveys}[kind]


async def produce(settings: Settings, records: Iterable[Record], *,
                  rate: float | None = None, keyed: bool = True, live_from_ms: int | None = None,
                  on_sent: Callable[[int], None] | None = None) -> int:
    """Send records (keyed by their id unless ``keyed`` is False); ``rate`` in records/s
    paces the stream (None: as fast as possible); with ``live_from_ms`` a record whose event
    time is later than that waits until the wall clock reaches it. Returns how many were
    sent."""
    producer = AIOKafkaProducer(**kafka_options(settings), linger_ms=20,
                                max_batch_size=256 * 1024, acks="all")
    await producer.start()
    sent = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        for record in records:
            if live_from_ms is not None:
                wait_s = (event_time_ms(record.value) - time.time() * 1000) / 1000
                if wait_s > 0:
                    await producer.flush()
                    await asyncio.sleep(wait_s)
            key = None
            if keyed:
                ident = next((str(v) for k, v in record.value.items() if k.endswith("_id")), None)
                key = ident.encode() if ident else None
            await producer.send(topic_of(settings, record.kind), json_bytes(record.value),
                                key=key)
            sent += 1
            if on_sent is not None:
                on_sent(sent)
            if rate:
                ahead = sent / rate - (loop.time() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return sent
