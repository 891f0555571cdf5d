"""The fake's JSON answers: ``json_object`` answers, values that satisfy a JSON Schema, and
the broken ones it injects (``invalid_json_rate``, ``schema_mismatch_rate``).

Values honour ``type`` (a nullable type is null about one time in seven), ``enum``,
``const``, ``properties``/``required`` (optional properties appear about seven times in
ten), ``items``/``prefixItems``, ``minItems``/``maxItems``, ``minimum``/``maximum``
(and exclusive ones), ``minLength``/``maxLength``, common ``format``s, ``anyOf``/``oneOf``
(one branch), ``allOf`` (merged) and local ``$ref``. Not ``pattern``. Deeper than
``_DEEP`` levels (recursive schemas) optional parts are left out.

The fake checks ``pipeline.structured``, so it shares no code with it: it resolves its own
``$ref`` pointers (``_resolve``).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from typing import Any

import orjson

_DEEP = 6
_GIVE_UP = 40
_SENTIMENTS = ("positive", "neutral", "negative")
_NON_NULL = ("string", "integer", "number", "boolean", "array", "object")
_SAMPLES = {"string": "unexpected", "integer": 12345, "number": 1.5, "boolean": True,
            "array": ["unexpected"], "object": {"unexpected": True}, "null": None}  # fmt: skip
"""A value of each JSON type: one whose type a schema does not allow breaks it."""


def _resolve(root: Any, ref: str) -> Any:
    """What a local reference (``#`` or a JSON pointer ``#/a/0/b``) names in ``root``, or None
    (a remote reference, or a path that is not there); ``~1`` and ``~0`` unescape to / and ~."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def json_object_answer(rng: random.Random, words: Sequence[str]) -> dict[str, Any]:
    """What ``response_format = {"type": "json_object"}`` gets: a small fixed-shape object."""
    return {
        "summary": _sentence(rng, words, 6, 16),
        "sentiment": rng.choice(_SENTIMENTS),
        "keywords": rng.sample(list(words), rng.randint(1, 4)),
    }


def _sentence(rng: random.Random, words: Sequence[str], low: int, high: int) -> str:
    text = " ".join(rng.choices(words, k=rng.randint(low, high)))
    return text[:1].upper() + text[1:] + "."


def _types(schema: dict[str, Any]) -> list[str]:
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list) and declared:
        return [t for t in declared if isinstance(t, str)]
    if "properties" in schema:
        return ["object"]
    if "items" in schema or "prefixItems" in schema:
        return ["array"]
    return list(_NON_NULL[:4])


class SchemaValues:
    """Draws values valid against one schema, from a seeded ``random.Random``."""

    def __init__(self, root: Any, rng: random.Random, words: Sequence[str]) -> None:
        self.root = root
        self.rng = rng
        self.words = words

    def value(self, schema: Any, depth: int = 0) -> Any:
        """A value valid against ``schema`` (None when there is none, e.g. ``false``)."""
        rng = self.rng
        if depth > _GIVE_UP or schema is False:
            return None
        if not isinstance(schema, dict):
            return self.value({"type": list(_NON_NULL[:4])}, depth)
        if isinstance(schema.get("$ref"), str):
            return self.value(_resolve(self.root, schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return rng.choice(schema["enum"])
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = _merge(merged, self._deref(part))
            return self.value(merged, depth + 1)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self.value(self._pick_branch(branches, depth), depth + 1)
        types = _types(schema)
        non_null = [t for t in types if t != "null"]
        if not non_null or ("null" in types and (depth >= _DEEP or rng.random() < 0.15)):
            return None
        kind = rng.choice(non_null)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "array":
            return self._array(schema, depth)
        if kind == "object":
            return self._object(schema, depth)
        return None

    def _deref(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < _GIVE_UP:
            schema, seen = _resolve(self.root, schema["$ref"]), seen + 1
        return schema

    def _pick_branch(self, branches: list[Any], depth: int) -> Any:
        nulls = [b for b in branches if isinstance(b, dict) and b.get("type") == "null"]
        others = [b for b in branches if b not in nulls]
        if nulls and (not others or depth >= _DEEP or self.rng.random() < 0.15):
            return nulls[0]
        return self.rng.choice(others)

    def _string(self, schema: dict[str, Any]) -> str:
        rng = self.rng
        fmt = schema.get("format")
        if fmt == "date-time":
            text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "email":
            text = f"{rng.choice(self.words)}@example.com"
        elif fmt in ("uri", "url"):
            text = f"https://example.com/{rng.choice(self.words)}"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        else:
            text = " ".join(rng.choices(self.words, k=rng.randint(1, 8)))
        low = schema.get("minLength", 0)
        high = schema.get("maxLength")
        if isinstance(low, int) and len(text) < low:
            text += "x" * (low - len(text))
        if isinstance(high, int) and len(text) > high:
            text = text[:high]
        return text

    def _bounds(self, schema: dict[str, Any], step: float) -> tuple[float, float]:
        low = schema.get("minimum")
        if isinstance(schema.get("exclusiveMinimum"), int | float):
            low = schema["exclusiveMinimum"] + step
        high = schema.get("maximum")
        if isinstance(schema.get("exclusiveMaximum"), int | float):
            high = schema["exclusiveMaximum"] - step
        low = float(low) if isinstance(low, int | float) else None
        high = float(high) if isinstance(high, int | float) else None
        if low is None:
            low = min(0.0, high - 100) if high is not None else 0.0
        if high is None:
            high = low + 100
        return low, max(low, high)

    def _integer(self, schema: dict[str, Any]) -> int:
        low, high = self._bounds(schema, 1)
        lo, hi = int(-(-low // 1)), int(high // 1)
        value = self.rng.randint(lo, max(lo, hi))
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            value = (value // step) * step
            if value < lo:
                value += step
        return value

    def _number(self, schema: dict[str, Any]) -> float:
        low, high = self._bounds(schema, 0.01)
        return min(high, max(low, round(self.rng.uniform(low, high), 2)))

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        values = [self.value(s, depth + 1) for s in prefix] if isinstance(prefix, list) else []
        low = schema.get("minItems", 0 if depth >= _DEEP else 1)
        high = schema.get("maxItems")
        low = low if isinstance(low, int) else 0
        cap = low if depth >= _DEEP else low + 3
        high = min(high, cap) if isinstance(high, int) else cap
        count = self.rng.randint(low, max(low, high)) - len(values)
        items = schema.get("items", True)
        if items is False or not isinstance(items, dict | bool):
            return values
        seen = {orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in values}
        for _ in range(max(0, count) * (3 if schema.get("uniqueItems") else 1)):
            if count <= 0:
                break
            item = self.value(items, depth + 1)
            if schema.get("uniqueItems"):
                key = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                if key in seen:
                    continue
                seen.add(key)
            values.append(item)
            count -= 1
        return values

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        required = schema.get("required")
        required = set(required) if isinstance(required, list) else set()
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or (depth < _DEEP and self.rng.random() < 0.7):
                out[name] = self.value(sub, depth + 1)
        return out


def _merge(base: dict[str, Any], extra: Any) -> dict[str, Any]:
    """``allOf`` parts merged: properties and required united, other keys overridden."""
    if not isinstance(extra, dict):
        return base
    merged = {**base, **{k: v for k, v in extra.items() if k not in ("properties", "required")}}
    if "properties" in base or "properties" in extra:
        merged["properties"] = {**base.get("properties", {}), **extra.get("properties", {})}
    if "required" in base or "required" in extra:
        merged["required"] = [*base.get("required", []), *extra.get("required", [])]
    return merged


def break_schema(root: Any, value: Any) -> Any:
    """Valid JSON that fails ``root``: a required property dropped, else one given a wrong
    type, else a value of the wrong type altogether (unchanged if the schema takes anything)."""
    schema = root
    for _ in range(_GIVE_UP):
        if not (isinstance(schema, dict) and isinstance(schema.get("$ref"), str)):
            break
        schema = _resolve(root, schema["$ref"])
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict):
        required = [name for name in schema.get("required", []) if name in value]
        if required:
            return {k: v for k, v in value.items() if k != required[0]}
        for name, sub in (schema.get("properties") or {}).items():
            wrong = _wrong_for(sub)
            if wrong is not None:
                return {**value, name: wrong}
    wrong = _wrong_for(schema)
    return value if wrong is None else wrong


def _wrong_for(schema: Any) -> Any:
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    allowed = set(_types(schema))
    if "number" in allowed:
        allowed.add("integer")
    return next((_SAMPLES[t] for t in _SAMPLES if t not in allowed), None)


def break_json(text: str, rng: random.Random) -> str:
    """Text that is not JSON: cut short, fenced as markdown, or after a line of prose."""
    choice = rng.randrange(3)
    if choice == 0 and text[:1] in "{[":
        return text[: len(text) // 2]
    if choice == 1:
        return f"```json\n{text}\n```"
    return f"Here is the JSON you asked for:\n{text}"


def strict_problem(schema: Any, name: str) -> str | None:
    """Why OpenAI's strict mode would refuse ``schema``, or None (its main rules only)."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return f"Invalid schema for response_format '{name}': schema must be a JSON Schema of 'type: \"object\"'."
    stack: list[tuple[Any, tuple[str, ...]]] = [(schema, ())]
    while stack:
        node, where = stack.pop()
        if isinstance(node, list):
            stack.extend((item, (*where, str(i))) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        properties = node.get("properties")
        if isinstance(properties, dict):
            if node.get("additionalProperties") is not False:
                return (
                    f"Invalid schema for response_format '{name}': In context={where}, "
                    "'additionalProperties' is required to be supplied and to be false."
                )
            missing = [key for key in properties if key not in (node.get("required") or [])]
            if missing:
                return (
                    f"Invalid schema for response_format '{name}': In context={where}, 'required' is "
                    f"required to be supplied and to be an array including every key in properties. Missing '{missing[0]}'."
                )
        for key, child in node.items():
            if key not in ("enum", "const", "default", "examples"):
                stack.append((child, (*where, key)))
    return None
