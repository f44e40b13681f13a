"""The offset-gap rule: a stage knows the next offset it expects per partition (the applied
offset of its packed state) and notices when its consumer skipped records.

faust can drop a fetched record while flow is suspended around a rebalance
(``Consumer._drain_messages`` marks it read even when ``wait_first`` returned on
``suspend_flow``) and its commit tolerates a one-record gap at the head of the acked offsets
(``Consumer._new_offset``: ``min(acked) - committed > 1``), so a record can be committed
without ever reaching the agent. Observed here after a SIGKILL and restart. Our stages do not
trust the committed offset: each keeps the next offset it expects per partition and seeks
back when a batch starts beyond it. Internal topics are neither compacted nor
transactional, so their offsets are contiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

Item = TypeVar("Item")


def split_contiguous(offsets: Sequence[int], expected: int | None) -> tuple[int, int | None]:
    """How many leading items to apply, and the offset to seek to when a gap follows them.

    ``offsets`` are one partition's, in delivery order; items at or below ``expected``
    are replays (applied idempotently), the first item beyond it marks a gap."""
    count = 0
    next_offset = expected
    for offset in offsets:
        if next_offset is not None and offset > next_offset:
            return count, next_offset
        count += 1
        next_offset = offset + 1 if next_offset is None else max(next_offset, offset + 1)
    return count, None
