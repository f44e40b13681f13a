"""The outbox keeps every topic it wrote to in the producer's metadata, on the real broker.

aiokafka forgets the leaders of untracked topics when it first tracks another one (see
``Outbox._track``); records queued for them then wait out the request timeout."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kpistream.app import create_app
from kpistream.outbox import Outbox
from kpistream.settings import Settings

pytestmark = pytest.mark.integration


async def _topics_stay_known(bootstrap: str, data_dir: Path) -> None:
    name = uuid.uuid4().hex[:6]
    early, late = f"outbox-early-{name}", f"outbox-late-{name}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    app = create_app(Settings(kafka_bootstrap=bootstrap, app_id=f"outbox-{name}",
                              data_dir=str(data_dir)))
    try:
        await admin.create_topics([NewTopic(early, 2, 1)])
        await app.producer.start()
        client = app.producer._ensure_producer().client
        await client.force_metadata_update()  # as faust does after declaring its topics
        outbox = Outbox(app)
        outbox.send(early, None, b"1", 0)
        await outbox.flush()
        await admin.create_topics([NewTopic(late, 2, 1)])  # a topic made after the start
        outbox.send(late, None, b"2", 0)
        await outbox.flush()
        await client.force_metadata_update()
        assert client.cluster.partitions_for_topic(early) == {0, 1}
        outbox.send(early, None, b"3", 1)
        await asyncio.wait_for(outbox.flush(), 20)
    finally:
        await app.producer.stop()
        await admin.delete_topics([early, late])
        await admin.close()


def test_topics_written_before_a_new_one_keep_their_leaders(stack, tmp_path: Path) -> None:
    asyncio.run(_topics_stay_known(stack.bootstrap, tmp_path))
