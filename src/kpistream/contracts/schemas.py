"""The JSON Schemas (draft-07) that ship in the package under ``kpistream/schemas/`` (SPEC §5).

They are the contract of SPEC.md §1, §2, §5 and §6: ingest validation compiles the three input
schemas, the docs and tests use the output ones. ``load_schema("orders")`` returns a fresh
``dict`` each call (the file is read once), so callers may mutate it freely.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import orjson

from kpistream.contracts.records import EventKind

INPUT_SCHEMAS: dict[EventKind, str] = {
    "order": "orders",
    "spend": "ad_spend",
    "survey": "survey_response",
}
OUTPUT_SCHEMAS: tuple[str, ...] = ("kpi_update", "alert", "dlq", "customer_profile")
SCHEMA_NAMES: tuple[str, ...] = (*INPUT_SCHEMAS.values(), *OUTPUT_SCHEMAS)


@cache
def _schema_bytes(name: str) -> bytes:
    return (resources.files("kpistream") / "schemas" / f"{name}.json").read_bytes()


def load_schema(name: str) -> dict[str, Any]:
    """The schema ``name`` (``orders``, ``ad_spend``, ``survey_response``, ``kpi_update``,
    ``alert``, ``dlq``, ``customer_profile``; a trailing ``.json`` is accepted) as a new dict."""
    if name.endswith(".json"):
        name = name[: -len(".json")]
    if name not in SCHEMA_NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    schema = orjson.loads(_schema_bytes(name))
    if not isinstance(schema, dict):  # pragma: no cover - the shipped files are objects
        raise TypeError(f"schema {name!r} is not a JSON object")
    return schema
