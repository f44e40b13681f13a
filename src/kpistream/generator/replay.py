"""``kpistream replay FILE``: produce recorded input records into the input topics.

JSONL lines are either ``{"kind": "order"|"spend"|"survey", "value": {...}}`` (what
``kpistream generate --jsonl`` writes) or plain input objects when ``--kind`` names their
topic. CSV files need ``--kind``; their header names the fields (empty cells are left out).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import orjson

from kpistream.generator.traffic import Record

KINDS = ("order", "spend", "survey")


def read_records(path: Path, kind: str | None) -> Iterator[Record]:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"--kind must be one of {', '.join(KINDS)}")
    if path.suffix.lower() == ".csv":
        if kind is None:
            raise ValueError("a CSV file needs --kind (order, spend or survey)")
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                yield Record(kind, {k: v for k, v in row.items() if v not in ("", None)})
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                body = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc
            if kind is None:
                if not isinstance(body, dict) or body.get("kind") not in KINDS:
                    raise ValueError(f"{path}:{number}: expected {{\"kind\", \"value\"}} "
                                     "or pass --kind")
                yield Record(body["kind"], body["value"])
            else:
                yield Record(kind, body)
