"""Follow KPI updates from the compacted Kafka topic and keep the latest row of each
(window, dimension, group) — the current state, rebuilt from the topic
(run: python examples/follow_updates.py; stops after 5 s without updates)."""

import asyncio
import os

from kpistream.client import KpiRow, RowDeleted, kafka_updates

BOOTSTRAP = os.environ.get("KPISTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TOPIC = os.environ.get("KPISTREAM_TOPIC_KPI_UPDATES", "kpi-updates")


async def main() -> dict[tuple[str, str, str], KpiRow]:
    rows: dict[tuple[str, str, str], KpiRow] = {}
    async for update in kafka_updates(BOOTSTRAP, topic=TOPIC, idle_timeout_s=5):
        key = (update.window, update.dimension, update.group)
        if isinstance(update, RowDeleted):
            rows.pop(key, None)
        else:
            rows[key] = update
    for (window, dimension, group), row in sorted(rows.items())[:10]:
        print(window, dimension, group, "orders", row.orders, "roas", row.roas)
    print(f"{len(rows)} rows")
    return rows


if __name__ == "__main__":
    asyncio.run(main())
