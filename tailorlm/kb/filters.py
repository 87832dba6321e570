"""OpenAI's vector-store filters (ComparisonFilter, CompoundFilter) over a file's attributes plus "filename"."""

from __future__ import annotations

from tailorlm.errors import InvalidRequestError

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")


def check_filter(spec: dict) -> dict:
    """`spec` if well formed, else InvalidRequestError (param "filters") naming what is wrong."""
    if not isinstance(spec, dict) or spec.get("type") not in COMPARISONS + COMPOUNDS:
        raise InvalidRequestError(
            f"invalid filter {spec!r}: type must be one of {', '.join(COMPARISONS + COMPOUNDS)}", param="filters")
    if spec["type"] in COMPOUNDS:
        if not isinstance(spec.get("filters"), list):
            raise InvalidRequestError(f"a {spec['type']!r} filter needs a list of filters", param="filters")
        for sub in spec["filters"]:
            check_filter(sub)
    elif not isinstance(spec.get("key"), str) or "value" not in spec:
        raise InvalidRequestError(f"a {spec['type']!r} filter needs a string key and a value", param="filters")
    return spec


def matches(spec: dict, attributes: dict) -> bool:
    """Whether a file with these attributes (filename included) passes the (checked) filter."""
    kind = spec["type"]
    if kind == "and":
        return all(matches(f, attributes) for f in spec["filters"])
    if kind == "or":
        return any(matches(f, attributes) for f in spec["filters"])
    value, present = attributes.get(spec["key"]), spec["key"] in attributes
    target = spec["value"]
    if kind in ("in", "nin"):
        inside = present and isinstance(target, list) and value in target
        return inside if kind == "in" else not inside
    if kind == "eq":
        return present and value == target
    if kind == "ne":
        return not present or value != target
    if not present or isinstance(value, bool) != isinstance(target, bool):
        return False
    try:
        return {"gt": value > target, "gte": value >= target, "lt": value < target, "lte": value <= target}[kind]
    except TypeError:  # a number against a string: no order, no match
        return False
