"""Memory and speed of the pure customer stage (no Kafka, no changelog): ``--customers`` ids,
three orders each on average, applied in batches of 1,000 facts. ``--trace`` measures the
memory held with tracemalloc (which slows it down); without it, facts/s. Figures in
docs/crm.md."""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc

from kpistream.contracts.records import Order
from kpistream.contracts.wire import CustomerFact, CustomerFacts
from kpistream.settings import Settings
from kpistream.state.customers import CustomerState
from kpistream.state.store import DictPackLog

BASE_MS = 1_800_000_000_000
BATCH = 1_000


class NoChangelog(DictPackLog):
    def put(self, partition: int, seq: int, value: bytes) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    state = CustomerState(Settings(clock="event"), NoChangelog())
    rng = random.Random(1)
    orders = args.customers * 3
    if args.trace:
        tracemalloc.start()
    started = time.perf_counter()
    facts: list[CustomerFact] = []
    offset = 0
    for i in range(orders):
        ts = BASE_MS + i * 1000
        order = Order(f"o-{i}", ts, "placed", f"c-{rng.randrange(args.customers)}", 42.5,
                      "search", f"cmp-{i % 50:03d}", "vip")
        facts.append((offset, i, 1, order))
        if len(facts) == BATCH:
            state.process(0, [(offset, CustomerFacts(0, facts))], ts)
            offset, facts = offset + 1, []
    elapsed = time.perf_counter() - started
    held = len(state.parts[0].customers)
    if args.trace:
        current, _ = tracemalloc.get_traced_memory()
        print(f"{held:,} customers, {orders:,} orders: {current / 1e6:,.0f} MB held, "
              f"{current / orders:,.0f} bytes per order")
    else:
        print(f"{held:,} customers, {orders:,} orders: {orders / elapsed:,.0f} facts/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
