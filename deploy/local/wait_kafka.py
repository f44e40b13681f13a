"""Wait until Kafka answers a metadata request that lists a broker (not only an open port).

    wait_kafka.py BOOTSTRAP [TIMEOUT_S] [--pid PID] [--log FILE]...

Exits 0 as soon as a metadata response lists at least one broker. Otherwise retries until
TIMEOUT_S (default 90) and exits 1 with a clear message and the tail of each --log file; with
--pid it gives up at once when that process (the broker being waited for) has exited.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaClient


async def brokers(bootstrap: str) -> int:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await client.bootstrap()
        metadata = await client.fetch_all_metadata()
        return len(metadata.brokers())
    except Exception:
        return 0
    finally:
        await client.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def tail(path: str, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text) or "(empty)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap")
    parser.add_argument("timeout", nargs="?", type=float, default=90.0)
    parser.add_argument("--pid", type=int, help="give up when this process exits")
    parser.add_argument("--log", action="append", default=[], help="show its tail on failure")
    args = parser.parse_args()
    # aiokafka logs every refused connection while the broker starts; the result is what counts
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    deadline = time.monotonic() + args.timeout
    reason = f"did not answer a metadata request within {args.timeout:.0f} s"
    while True:
        if asyncio.run(brokers(args.bootstrap)) > 0:
            return 0
        if args.pid is not None and not alive(args.pid):
            reason = f"exited (process {args.pid}) before answering a metadata request"
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    print(f"error: Kafka at {args.bootstrap} {reason}", file=sys.stderr)
    for log in args.log:
        print(f"--- last lines of {log} ---\n{tail(log)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
