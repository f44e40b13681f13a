"""The ceiling of any design with faust agents on the input: an agent that only iterates.

Usage (run by engine_bench.py): BARE_TOPICS=a,b BARE_EXPECTED=N BARE_BOOTSTRAP=host:port
python benchmarks/bare_faust.py worker  -> prints "rate <events/s>" and exits.
"""

from __future__ import annotations

import os
import time
import uuid

import faust

topics = os.environ["BARE_TOPICS"].split(",")
expected = int(os.environ["BARE_EXPECTED"])
app = faust.App(f"bare-faust-{uuid.uuid4().hex[:6]}",
                broker=f"kafka://{os.environ['BARE_BOOTSTRAP']}", store="memory://",
                topic_disable_leader=True, consumer_auto_offset_reset="earliest",
                web_port=int(os.environ.get("BARE_WEB_PORT", "6099")), autodiscover=False)
source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                   value_serializer="raw")


@app.agent(source)
async def iterate(stream):  # type: ignore[no-untyped-def]
    seen, started = 0, 0.0
    async for _ in stream:
        if not seen:
            started = time.perf_counter()
        seen += 1
        if seen >= expected:
            print(f"rate {expected / (time.perf_counter() - started):.0f}", flush=True)
            os._exit(0)


if __name__ == "__main__":
    app.main()
