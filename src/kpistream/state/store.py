"""The key-value interface the pure stages write through, and its in-memory fake.

The Faust adapter (:mod:`kpistream.state.tables`) backs it with a changelog-backed table and
an explicit changelog partition, so state can be written from timers as well as agents.
Keys are strings whose first field is the partition; ``SEP`` separates fields and group names
are parsed from both ends, so a group may contain anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from hashlib import blake2b
from typing import Any, Protocol, TypeVar

SEP = "\x1f"
M = TypeVar("M")


class Store(Protocol):
    def get(self, key: str) -> Any: ...

    def put(self, partition: int, key: str, value: list[Any]) -> None: ...

    def delete(self, partition: int, key: str) -> None: ...

    def keys_of(self, partition: int) -> Iterator[str]: ...


class DictStore:
    """In-memory :class:`Store` for unit and property tests; ``writes`` counts changelog
    records so tests can drop some of them to simulate a crash."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.writes = 0

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, partition: int, key: str, value: list[Any]) -> None:
        self.writes += 1
        self.data[key] = value

    def delete(self, partition: int, key: str) -> None:
        self.writes += 1
        self.data.pop(key, None)

    def keys_of(self, partition: int) -> Iterator[str]:
        prefix = f"{partition}{SEP}"
        return iter([key for key in self.data if key.startswith(prefix)])


class PackLog(Protocol):
    """Per-partition log of packed changelog records, keyed by a sequence number (an input
    offset). The state of a partition is rebuilt by replaying its records in order."""

    def get(self, partition: int, seq: int) -> bytes | None: ...

    def put(self, partition: int, seq: int, value: bytes) -> None: ...

    def delete(self, partition: int, seq: int) -> None: ...

    def seqs(self, partition: int) -> list[int]:
        """The seqs held for the partition, in order (without reading the records)."""


def records(log: PackLog, partition: int, seqs: Iterable[int]) -> Iterator[tuple[int, bytes]]:
    """The partition's records of ``seqs`` in order, read one at a time: a rebuild holds one
    record, not the partition's whole changelog (a restart's peak memory)."""
    for seq in seqs:
        data = log.get(partition, seq)
        if data is not None:
            yield seq, data


class DictPackLog:
    """In-memory :class:`PackLog`; ``writes`` counts changelog records."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, int], bytes] = {}
        self.writes = 0

    def get(self, partition: int, seq: int) -> bytes | None:
        return self.data.get((partition, seq))

    def put(self, partition: int, seq: int, value: bytes) -> None:
        self.writes += 1
        self.data[(partition, seq)] = value

    def delete(self, partition: int, seq: int) -> None:
        self.writes += 1
        self.data.pop((partition, seq), None)

    def seqs(self, partition: int) -> list[int]:
        return sorted(seq for p, seq in self.data if p == partition)


class Snapshots(Protocol[M]):
    """Where a stopping worker leaves a partition's state for its next start on the same
    disk: the partition's on-disk map (``M``) kept as it is, the rest encoded."""

    def save(self, p: int, kept: M, data: bytes) -> None:
        """Persist ``kept`` (closing it) and keep ``data`` with it."""

    def take(self, p: int) -> tuple[bytes, M] | None:
        """The data and the reopened map left for partition p, once (None if none)."""


def pack_digest(data: bytes) -> str:
    """What a snapshot records of the changelog record it was taken at, to know it again."""
    return blake2b(data, digest_size=16).hexdigest()
