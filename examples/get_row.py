"""Look up the current 1-hour CPO of every channel (run: python examples/get_row.py)."""

import asyncio
import os

import redis

from kpistream.client import get_row

REDIS_URL = os.environ.get("KPISTREAM_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("KPISTREAM_REDIS_PREFIX", "kpi")


async def main() -> None:
    channels = redis.Redis.from_url(REDIS_URL, decode_responses=True).smembers(
        f"{PREFIX}:index:channel")
    for channel in sorted(channels):
        row = await get_row(REDIS_URL, "1h", "channel", channel, prefix=PREFIX)
        if row is not None:
            cpo = "n/a" if row.cpo is None else f"{row.cpo:.2f} {row.currency}"
            print(f"{channel:12} orders={row.orders} cpo={cpo}")


if __name__ == "__main__":
    asyncio.run(main())
