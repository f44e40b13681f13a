"""Wait until Kafka answers a metadata request that lists a broker (not only an open port)."""

from __future__ import annotations

import asyncio
import sys
import time

from aiokafka import AIOKafkaClient


async def ready(bootstrap: str) -> bool:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return bool(metadata.brokers())
    except Exception:
        return False
    finally:
        await client.close()


def main() -> int:
    bootstrap = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 90.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(ready(bootstrap)):
            return 0
        time.sleep(1)
    print(f"Kafka at {bootstrap} did not answer a metadata request within {timeout:.0f}s",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
