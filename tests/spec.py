"""Validate response bodies against the official OpenAI OpenAPI spec.

The spec (MIT, with its license) is vendored in tests/spec_data, so a clone with nothing beside it tests the same."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent / "spec_data" / "openai-openapi.yaml"


def _honour_nullable(node: object) -> object:
    """Parts of the spec still use OpenAPI 3.0's `nullable: true`, which JSON Schema ignores, and its boolean
    exclusive bounds, which JSON Schema reads as numbers (true == 1): make both mean what they say."""
    if isinstance(node, dict):
        node = {k: _honour_nullable(v) for k, v in node.items()}
        for bound in ("Minimum", "Maximum"):  # 3.0's boolean `exclusiveMinimum: true` is 2020-12's number
            if node.get(f"exclusive{bound}") is True and bound.lower() in node:
                node[f"exclusive{bound}"] = node.pop(bound.lower())
        if node.pop("nullable", False):
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
                if "enum" in node:
                    node["enum"] = [*node["enum"], None]
            elif "type" not in node:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_honour_nullable(v) for v in node]
    return node


@lru_cache(maxsize=1)
def _spec() -> tuple[dict, Registry]:
    spec = _honour_nullable(yaml.load(SPEC_PATH.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return spec, Registry().with_resource("urn:openai-spec", resource)


def validate(body: dict, schema_name: str) -> None:
    """Raise jsonschema.ValidationError if `body` does not match components.schemas[schema_name]."""
    spec, registry = _spec()
    if schema_name not in spec["components"]["schemas"]:
        raise KeyError(schema_name)
    schema = {"$ref": f"urn:openai-spec#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema, registry=registry).validate(body)


@lru_cache(maxsize=1)
def _event_schemas() -> dict[str, str]:
    """Stream event type (`response.output_text.delta`) -> the name of its schema."""
    spec, _ = _spec()
    out = {}
    for name, schema in spec["components"]["schemas"].items():
        enum = (schema.get("properties", {}).get("type") or {}).get("enum") if isinstance(schema, dict) else None
        if name.endswith("Event") and enum and len(enum) == 1:
            out[enum[0]] = name
    return out


def validate_event(event: dict) -> None:
    """Validate one Responses stream event against the schema of its own type (errors that name the field)."""
    validate(event, _event_schemas()[event["type"]])
