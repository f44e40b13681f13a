"""The shipped JSON Schemas: valid draft-07, loadable, and matching the contract."""

from __future__ import annotations

import math
from typing import Any

import fastjsonschema
import pytest

from kpistream.contracts.schemas import INPUT_SCHEMAS, OUTPUT_SCHEMAS, SCHEMA_NAMES, load_schema
from kpistream.contracts.wire import CustomerRecord
from kpistream.kpi.catalogue import KPI_FIELDS, ROW_FIELDS, SPEND_ALLOCATED
from kpistream.kpi.formulas import WindowSums, compute_kpis
from kpistream.kpi.profiles import PROFILE_FIELDS, build_profile

DRAFT_07 = "http://json-schema.org/draft-07/schema#"

# The draft-07 meta-schema (https://json-schema.org/draft-07/schema), without its "$id" so that
# fastjsonschema resolves its "#" references locally.
META_SCHEMA: dict[str, Any] = {
    "$schema": DRAFT_07,
    "definitions": {
        "schemaArray": {"type": "array", "minItems": 1, "items": {"$ref": "#"}},
        "nonNegativeInteger": {"type": "integer", "minimum": 0},
        "nonNegativeIntegerDefault0": {
            "allOf": [{"$ref": "#/definitions/nonNegativeInteger"}, {"default": 0}]
        },
        "simpleTypes": {
            "enum": ["array", "boolean", "integer", "null", "number", "object", "string"]
        },
        "stringArray": {
            "type": "array", "items": {"type": "string"}, "uniqueItems": True, "default": []
        },
    },
    "type": ["object", "boolean"],
    "properties": {
        "$id": {"type": "string", "format": "uri-reference"},
        "$schema": {"type": "string", "format": "uri"},
        "$ref": {"type": "string", "format": "uri-reference"},
        "$comment": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "default": True,
        "readOnly": {"type": "boolean", "default": False},
        "examples": {"type": "array", "items": True},
        "multipleOf": {"type": "number", "exclusiveMinimum": 0},
        "maximum": {"type": "number"},
        "exclusiveMaximum": {"type": "number"},
        "minimum": {"type": "number"},
        "exclusiveMinimum": {"type": "number"},
        "maxLength": {"$ref": "#/definitions/nonNegativeInteger"},
        "minLength": {"$ref": "#/definitions/nonNegativeIntegerDefault0"},
        "pattern": {"type": "string", "format": "regex"},
        "additionalItems": {"$ref": "#"},
        "items": {
            "anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/schemaArray"}], "default": True
        },
        "maxItems": {"$ref": "#/definitions/nonNegativeInteger"},
        "minItems": {"$ref": "#/definitions/nonNegativeIntegerDefault0"},
        "uniqueItems": {"type": "boolean", "default": False},
        "contains": {"$ref": "#"},
        "maxProperties": {"$ref": "#/definitions/nonNegativeInteger"},
        "minProperties": {"$ref": "#/definitions/nonNegativeIntegerDefault0"},
        "required": {"$ref": "#/definitions/stringArray"},
        "additionalProperties": {"$ref": "#"},
        "definitions": {"type": "object", "additionalProperties": {"$ref": "#"}, "default": {}},
        "properties": {"type": "object", "additionalProperties": {"$ref": "#"}, "default": {}},
        "patternProperties": {
            "type": "object", "additionalProperties": {"$ref": "#"},
            "propertyNames": {"format": "regex"}, "default": {},
        },
        "dependencies": {
            "type": "object",
            "additionalProperties": {
                "anyOf": [{"$ref": "#"}, {"$ref": "#/definitions/stringArray"}]
            },
        },
        "propertyNames": {"$ref": "#"},
        "const": True,
        "enum": {"type": "array", "items": True},
        "type": {
            "anyOf": [
                {"$ref": "#/definitions/simpleTypes"},
                {
                    "type": "array", "items": {"$ref": "#/definitions/simpleTypes"},
                    "minItems": 1, "uniqueItems": True,
                },
            ]
        },
        "format": {"type": "string"},
        "contentMediaType": {"type": "string"},
        "contentEncoding": {"type": "string"},
        "if": {"$ref": "#"},
        "then": {"$ref": "#"},
        "else": {"$ref": "#"},
        "allOf": {"$ref": "#/definitions/schemaArray"},
        "anyOf": {"$ref": "#/definitions/schemaArray"},
        "oneOf": {"$ref": "#/definitions/schemaArray"},
        "not": {"$ref": "#"},
    },
    "default": True,
}
check_meta = fastjsonschema.compile(META_SCHEMA, use_default=False)


def subschemas(schema: Any) -> list[dict[str, Any]]:
    """Every object (sub)schema of a schema, depth first."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        found.append(schema)
        for key in ("properties", "definitions"):
            for sub in schema.get(key, {}).values():
                found += subschemas(sub)
        for key in ("if", "then", "else", "not", "items", "additionalProperties"):
            found += subschemas(schema.get(key))
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in schema.get(key, []):
                found += subschemas(sub)
    return found


def test_names() -> None:
    assert set(SCHEMA_NAMES) == {
        "orders", "ad_spend", "survey_response", "kpi_update", "alert", "dlq",
        "customer_profile"}
    assert set(INPUT_SCHEMAS) == {"order", "spend", "survey"}
    assert set(OUTPUT_SCHEMAS) <= set(SCHEMA_NAMES)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_is_valid_draft_07(name: str) -> None:
    schema = load_schema(name)
    assert schema["$schema"] == DRAFT_07
    check_meta(schema)
    assert schema == load_schema(name), "the meta-schema check must not fill in defaults"
    fastjsonschema.compile(schema)
    for sub in subschemas(schema):
        for field in sub.get("required", []):
            assert field in schema["properties"], f"{name}: required {field} is not described"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_meta_check_catches_broken_schemas(name: str) -> None:
    schema = load_schema(name)
    schema["required"] = "order_id"  # must be an array
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check_meta(schema)


def test_load_schema_forms_and_isolation() -> None:
    assert load_schema("orders.json") == load_schema("orders")
    first = load_schema("orders")
    first["properties"].clear()
    assert load_schema("orders")["properties"], "callers get their own copy"
    with pytest.raises(KeyError):
        load_schema("../settings")
    with pytest.raises(KeyError):
        load_schema("nope")


@pytest.mark.parametrize("name", INPUT_SCHEMAS.values())
def test_inputs_allow_unknown_fields(name: str) -> None:
    assert load_schema(name).get("additionalProperties", True) is True


@pytest.mark.parametrize(("name", "ids"), [
    ("orders", ["order_id"]), ("ad_spend", ["spend_id"]), ("survey_response", ["response_id"]),
])
def test_id_lengths(name: str, ids: list[str]) -> None:
    for field in ids:
        prop = load_schema(name)["properties"][field]
        assert (prop["type"], prop["minLength"], prop["maxLength"]) == ("string", 1, 128)


# --- the KPI message --------------------------------------------------------------------------

check_kpi = fastjsonschema.compile(load_schema("kpi_update"))


def kpi_message(sums: WindowSums, dimension: str = "campaign",
                group: str = "summer-sale") -> dict[str, Any]:
    kpis = compute_kpis(sums, allocated_spend=12.5 if dimension == "segment" else None)
    message: dict[str, Any] = {
        "window": "1h", "dimension": dimension, "group": group,
        "window_start": 1763802900000, "window_end": 1763806500000,
        "updated_at": 1763806500123, "currency": "EUR",
    }
    message.update({name: kpis.get(name) for name in KPI_FIELDS})
    if dimension == "segment":
        message[SPEND_ALLOCATED] = True
    message["schema_version"] = 1
    return message


def test_kpi_schema_lists_every_kpi() -> None:
    schema = load_schema("kpi_update")
    assert set(schema["properties"]) == {*ROW_FIELDS, *KPI_FIELDS, SPEND_ALLOCATED, "deleted",
                                         "schema_version"}
    row, deletion = schema["oneOf"]  # a row, or (Pub/Sub) a deleted row naming itself
    assert set(row["required"]) == set(schema["properties"]) - {SPEND_ALLOCATED, "deleted"}
    assert set(deletion["required"]) == {*ROW_FIELDS[:3], "deleted", "schema_version"}


def test_kpi_message_with_nulls_for_undefined_kpis() -> None:
    message = kpi_message(WindowSums(spend=120.0, spend_records=3))  # spend, no orders
    for name in ("cpo", "aov", "nps", "nps_moe", "ces", "ces_easy_pct", "csat"):
        assert message[name] is None
    assert message["roas"] == 0.0
    check_kpi(message)


@pytest.mark.parametrize(("sums", "dimension"), [
    (WindowSums(orders=3, revenue=90.0, spend=30.0, spend_records=2, nps_responses=4,
                promoters=2, passives=1, detractors=1, ces_responses=2, ces_sum=11.0,
                ces_easy=2, csat_responses=5, csat_satisfied=4), "campaign"),
    (WindowSums(orders=3, revenue=90.0, nps_responses=1, promoters=1), "segment"),
    (WindowSums(nps_responses=3, detractors=3), "all"),
    (WindowSums(ces_responses=1, ces_sum=7.0, ces_easy=1), "channel"),
])
def test_kpi_message_samples(sums: WindowSums, dimension: str) -> None:
    message = kpi_message(sums, dimension)
    check_kpi(message)
    for name in KPI_FIELDS:
        value = message[name]
        assert value is None or (isinstance(value, (int, float)) and math.isfinite(value))
    if dimension == "segment":
        assert (message["spend"], message["cpo"], message[SPEND_ALLOCATED]) == (12.5, 12.5 / 3,
                                                                               True)


@pytest.mark.parametrize("change", [
    {"schema_version": 2},
    {"orders": "3"},
    {"orders": -1},
    {"nps": 101.0},
    {"dimension": "country"},
    {"window_end": "1763806500000"},
    {"currency": None},
])
def test_kpi_schema_rejects(change: dict[str, Any]) -> None:
    message = {**kpi_message(WindowSums(orders=1, revenue=5.0)), **change}
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check_kpi(message)


def test_kpi_schema_requires_undefined_kpis_as_null_not_absent() -> None:
    message = kpi_message(WindowSums(orders=1, revenue=5.0))
    del message["nps"]
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check_kpi(message)


# --- the alert message --------------------------------------------------------------------

check_alert = fastjsonschema.compile(load_schema("alert"))
ALERT: dict[str, Any] = {
    "schema_version": 1, "alert_id": "cpo_spike:campaign:summer-sale:1763806500000",
    "alert": "cpo_spike", "kind": "cpo_shift", "state": "firing", "dimension": "campaign",
    "group": "summer-sale", "statistic": 12.4, "baseline_cpo": 8.5, "spend": 340.0,
    "orders": 12, "expected_orders": 40.0, "cpo": 28.33, "started_at": 1763806500000,
    "updated_at": 1763806560000,
}


@pytest.mark.parametrize("change", [
    {},
    {"state": "resolved"},
    {"kind": "orders_stopped", "orders": 0, "cpo": None},
    {"kind": "no_baseline", "statistic": None, "baseline_cpo": None, "expected_orders": None,
     "orders": 0, "cpo": None},
])
def test_alert_samples(change: dict[str, Any]) -> None:
    check_alert({**ALERT, **change})


@pytest.mark.parametrize("change", [
    {"schema_version": 2}, {"alert": "other"}, {"state": "pending"}, {"dimension": "segment"},
    {"kind": "spike"}, {"orders": 1.5}, {"started_at": None},
])
def test_alert_schema_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        check_alert({**ALERT, **change})


# --- the customer profile --------------------------------------------------------------------

check_profile = fastjsonschema.compile(load_schema("customer_profile"))


def test_profile_schema_lists_every_field() -> None:
    schema = load_schema("customer_profile")
    assert set(schema["properties"]) == {*PROFILE_FIELDS, "schema_version"}
    assert set(schema["required"]) == set(schema["properties"])


@pytest.mark.parametrize("record", [
    CustomerRecord({"o1": [1_000, 25.5, "search", "c1", "vip"],
                    "o2": [2_000, 10.0, "email", "unattributed", "new"]},
                   {"nps": [3_000, "r1", 6], "csat": [2_500, "r2", 5]}),
    CustomerRecord({}, {"ces": [4_000, "r3", 7]}),  # responses only
])
def test_profile_messages_match_the_schema(record: CustomerRecord) -> None:
    message = build_profile("cust-1", record, 5_000, lambda entry: 2.5, 86_400_000)
    check_profile(message)
    assert tuple(message) == (*PROFILE_FIELDS, "schema_version")


def test_profile_fields() -> None:
    record = CustomerRecord({"o2": [2_000, 10.0, "email", "c2", "new"],
                             "o1": [1_000, 30.0, "search", "c1", "vip"],
                             "o0": [2_000, 20.0, "social", "c3", "b2b"]},
                            {"nps": [3_000, "r1", 6]})
    message = build_profile("cust-1", record, 9, lambda entry: None, 86_400_000)
    assert message["revenue"] == 60.0 and message["aov"] == 20.0
    assert (message["first_order_at"], message["acquisition_channel"],
            message["acquisition_campaign"]) == (1_000, "search", "c1")
    assert (message["last_order_at"], message["segment"]) == (2_000, "new")  # ties: greatest id
    assert (message["nps_last"], message["nps_category"]) == (6, "detractor")
    assert message["ces_last"] is None and message["last_activity_at"] == 3_000
