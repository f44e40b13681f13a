"""The key-value interface the pure stages write through, and its in-memory fake.

The Faust adapter (:mod:`kpistream.state.tables`) backs it with a changelog-backed table and
an explicit changelog partition, so state can be written from timers as well as agents.
Keys are strings whose first field is the partition; ``SEP`` separates fields and group names
are parsed from both ends, so a group may contain anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

SEP = "\x1f"


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

    def load(self, partition: int) -> list[tuple[int, bytes]]: ...


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

    def load(self, partition: int) -> list[tuple[int, bytes]]:
        return sorted((seq, value) for (p, seq), value in self.data.items() if p == partition)
