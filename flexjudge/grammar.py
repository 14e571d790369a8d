"""A decoding constraint as a context-free grammar: what JSON Schema cannot say, a grammar can.

`lark_grammar(schema)` turns a pairwise constraint from `flexjudge.constraints` into an llguidance Lark
grammar that accepts exactly the compact JSON the schema accepts, with one more rule: **a dimension's
winner follows its scores.** After a dimension's criteria the grammar knows the running margin
sum(score_1 - score_2) (a finite state: at most 5 criteria of a 10-point split), so the winner that
follows may only be candidate 1 when the margin is positive and candidate 2 when it is negative (either
on a tie). JSON Schema has no way to relate one value to a sum of others.

The schema stays the one definition: the grammar is derived from it, and schemas without split criteria
(pointwise, user schemas) are left to the engines' JSON Schema support (`lark_grammar` returns None).
Supported keywords are the ones `flexjudge.constraints` emits: objects with every property required and
no others, arrays (`items`, `prefixItems`, `minItems`, `maxItems`), strings (`const`, `enum`,
`minLength`, `maxLength`), integers, `enum`, `const`, `anyOf`; anything else raises `ValueError`.
The output is compact JSON (no whitespace), as the engines emit under `whitespace_flexible: false`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["WINNER_AFTER", "has_split_criteria", "lark_grammar"]

WINNER_AFTER = {"dims": "cat_winner", "criteria": "winner"}
"""Criteria array -> the dimension winner that follows it (flex wire format, native format)."""

_SCORES = ("score_1", "score_2")
_KEYWORDS = {
    *("type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems"),
    *("maxItems", "enum", "const", "anyOf", "minLength", "maxLength"),
}
_CHAR = r"/(\\([\"\\\/bfnrt]|u[a-fA-F0-9]{4})|[^\"\\\x00-\x1F])/"  # JSON: any character but " \ and controls


def lark_grammar(schema: dict[str, Any]) -> str | None:
    """The Lark grammar for `schema` with winners that follow the scores, or None when `schema` holds no
    split criteria (nothing to add to JSON Schema)."""
    if not has_split_criteria(schema) and not has_point_criteria(schema):
        return None
    builder = _Builder()
    start = builder.value(schema)
    return "\n".join([f"start: {start}", f"JSON_CHAR: {_CHAR}", *builder.rules]) + "\n"


def has_split_criteria(node: Any) -> bool:
    """Whether a schema holds criteria with a 10-point split (the judgment constraints do)."""
    if isinstance(node, dict):
        return _split_shares(node) is not None or any(has_split_criteria(v) for v in node.values())
    if isinstance(node, list):
        return any(has_split_criteria(v) for v in node)
    return False


def has_point_criteria(node: Any) -> bool:
    """Whether a schema holds pointwise criteria on a scale the grammar handles (the pointwise
    constraint does, on scales of up to 11 values)."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if (
            isinstance(properties, dict)
            and "score" in properties
            and _point_values(properties.get("criteria")) is not None
        ):
            return True
        return any(has_point_criteria(v) for v in node.values())
    if isinstance(node, list):
        return any(has_point_criteria(v) for v in node)
    return False


def _split_shares(items: Any) -> list[tuple[int, dict[str, Any]]] | None:
    """For `anyOf` criterion alternatives with constant scores summing to 10: (score_1, alternative) each."""
    if not isinstance(items, dict) or set(items) != {"anyOf"}:
        return None
    shares = []
    for option in items["anyOf"]:
        properties = option.get("properties", {}) if isinstance(option, dict) else {}
        consts = [properties.get(key, {}).get("const") for key in _SCORES]
        if not all(isinstance(c, int) for c in consts) or sum(consts) != 10:
            return None
        shares.append((consts[0], option))
    return shares


_MAX_POINT_VALUES = 11
"""Scales up to this many values (1..10, 0..10) get the dimension-score rule; its states grow with the
square of the scale, so wider scales are left to JSON Schema (and `check`)."""


def _point_values(array: Any) -> list[int] | None:
    """For a pointwise criteria array (objects ending in an enumerated integer `score`): the scores."""
    items = array.get("items") if isinstance(array, dict) else None
    properties = items.get("properties") if isinstance(items, dict) else None
    if not isinstance(properties, dict) or list(properties)[-1:] != ["score"]:
        return None
    values = properties["score"].get("enum")
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        return None
    return values if 1 < len(values) <= _MAX_POINT_VALUES else None


def _literal(json_text: str) -> str:
    """A Lark string literal matching `json_text` exactly."""
    return json.dumps(json_text, ensure_ascii=False)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Builder:
    """Rules for each distinct sub-schema, named r0, r1, ...; identical sub-schemas share one rule."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self._names: dict[str, str] = {}
        self._strings: dict[tuple[int, int | None], str] = {}

    def _name(self, key: Any) -> tuple[str, bool]:
        """The rule name for `key` and whether it is new (then the caller appends its rule)."""
        text = _json(key)
        if text in self._names:
            return self._names[text], False
        name = self._names[text] = f"r{len(self._names)}"
        return name, True

    def value(self, node: Any) -> str:
        """A Lark expression for one JSON value matching `node`."""
        if not isinstance(node, dict):
            raise ValueError(f"unsupported schema node {node!r}")
        node = {k: v for k, v in node.items() if k not in ("description", "title")}
        unknown = set(node) - _KEYWORDS
        if unknown:
            raise ValueError(f"unsupported schema keyword(s): {', '.join(sorted(unknown))}")
        if "const" in node:
            return _literal(_json(node["const"]))
        if "enum" in node:
            return "(" + " | ".join(_literal(_json(v)) for v in node["enum"]) + ")"
        kind = node.get("type")
        if kind == "string":
            return self._string(int(node.get("minLength", 0)), node.get("maxLength"))
        if kind == "integer":
            return self._string_rule("INT", "/-?(0|[1-9][0-9]*)/")
        if "anyOf" not in node and kind not in ("object", "array"):
            raise ValueError(f"unsupported schema node {node!r}")
        name, new = self._name(node)
        if new:
            if "anyOf" in node:
                body = " | ".join(self.value(v) for v in node["anyOf"])
            elif kind == "object":
                body = self._object(node)
            else:
                body = self._array(node)
            self.rules.append(f"{name}: {body}")
        return name

    def _string_rule(self, name: str, body: str) -> str:
        if f"{name}: {body}" not in self.rules:
            self.rules.append(f"{name}: {body}")
        return name

    def _string(self, low: int, high: int | None) -> str:
        key = (low, high)
        if key not in self._strings:
            self._strings[key] = f"STRING_{len(self._strings)}"
            bounds = "*" if (low, high) == (0, None) else f"{{{low},{'' if high is None else high}}}"
            self.rules.append(f'{self._strings[key]}: "\\"" JSON_CHAR{bounds} "\\""')
        return self._strings[key]

    def _members(self, properties: dict[str, Any], keys: list[str], first: bool) -> list[str]:
        """`"key":value` for each key, comma-separated (a leading comma unless `first`)."""
        return [
            _literal(("" if first and i == 0 else ",") + _json(key) + ":") + " " + self.value(properties[key])
            for i, key in enumerate(keys)
        ]

    def _object(self, node: dict[str, Any]) -> str:
        properties: dict[str, Any] = node.get("properties", {})
        if set(node.get("required", ())) != set(properties) or node.get("additionalProperties") is not False:
            raise ValueError("only objects with every property required and no others are supported")
        keys = list(properties)
        for i, key in enumerate(keys):
            values = _point_values(properties[key]) if key == "criteria" else None
            if values is not None and "score" in keys[i + 1 :]:
                before = self._members(properties, keys[:i], first=True)
                label = _literal(("," if i else "") + _json(key) + ":")
                criteria = self._scored_criteria(properties[key], values, properties, keys[i + 1 :])
                return " ".join(['"{"', *before, label, criteria])
            winner = WINNER_AFTER.get(key)
            shares = _split_shares(properties[key].get("items")) if winner else None
            if shares is not None and winner in keys[i + 1 :]:
                before = self._members(properties, keys[:i], first=True)
                label = _literal(("," if i else "") + _json(key) + ":")
                criteria = self._criteria(properties[key], shares, properties, keys[i + 1 :], winner)
                return " ".join(['"{"', *before, label, criteria])
        return " ".join(['"{"', *self._members(properties, keys, first=True), '"}"'])

    def _array(self, node: dict[str, Any]) -> str:
        prefix = [self.value(item) for item in node.get("prefixItems", ())]
        items = node.get("items", True)
        low, high = int(node.get("minItems", 0)), node.get("maxItems")
        if low < len(prefix):
            raise ValueError("arrays whose prefixItems may be cut short are not supported")
        if items is True:
            raise ValueError("arrays need an items schema")
        if items is False or (high is not None and high <= len(prefix)):
            return " ".join(['"["', ' "," '.join(prefix) or "", '"]"']).replace('"["  "]"', '"[" "]"')
        item = self.value(items)
        required = prefix + [item] * max(low - len(prefix), 0)
        optional = None if high is None else high - len(required)
        if required:
            tail = f'("," {item})' + ("*" if optional is None else f"{{0,{optional}}}")
            return '"[" ' + ' "," '.join(required) + f" {tail} " + '"]"'
        more = f'("," {item})' + ("*" if optional is None else f"{{0,{optional - 1}}}")
        return f'"[" ({item} {more})? "]"'

    def _criteria(
        self,
        array: dict[str, Any],
        shares: list[tuple[int, dict[str, Any]]],
        properties: dict[str, Any],
        rest: list[str],
        winner: str,
    ) -> str:
        """`[criteria]` and every property after it, the winner decided by the running margin."""
        low, high = int(array.get("minItems", 1)), int(array.get("maxItems", 5))
        if low < 1 or high > 8:
            raise ValueError("split criteria arrays need 1 to 8 items")
        name, new = self._name({"criteria": array, "rest": {k: properties[k] for k in rest}})
        if not new:
            return name
        # Every criterion shares the part before its scores; each share is one literal closing it.
        first = shares[0][1]
        keys = list(first["properties"])
        if keys[-2:] != list(_SCORES) or any(list(o["properties"])[:-2] != keys[:-2] for _, o in shares):
            raise ValueError("split criteria must share their properties and end with score_1, score_2")
        head, _ = self._name({"criterion head": {k: first["properties"][k] for k in keys[:-2]}})
        self.rules.append(f'{head}: "{{" ' + " ".join(self._members(first["properties"], keys[:-2], True)))
        sep = "," if len(keys) > 2 else ""
        tails = [(share, _literal(f'{sep}"score_1":{share},"score_2":{10 - share}}}')) for share, _ in shares]
        endings = {sign: self._rest(properties, rest, winner, sign) for sign in (1, -1, 0)}

        def state(count: int, margin: int) -> str:
            return f"{name}_{count}_{'m' if margin < 0 else 'p'}{abs(margin)}"

        def step(count: int, margin: int) -> str:
            options = [f"{tail} {state(count + 1, margin + 2 * share - 10)}" for share, tail in tails]
            return f"{head} ({' | '.join(options)})"

        self.rules.append(f'{name}: "[" {step(0, 0)}')
        for count in range(1, high + 1):
            for margin in range(-10 * count, 10 * count + 1, 2):
                alternatives = ['"," ' + step(count, margin)] if count < high else []
                if count >= low:
                    alternatives.append('"]" ' + endings[(margin > 0) - (margin < 0)])
                self.rules.append(f"{state(count, margin)}: " + " | ".join(alternatives))
        return name

    def _scored_criteria(
        self, array: dict[str, Any], values: list[int], properties: dict[str, Any], rest: list[str]
    ) -> str:
        """`[criteria]` and every property after it, the dimension score kept between the lowest and the
        highest criterion score (the running minimum and maximum are the state)."""
        low, high = int(array.get("minItems", 1)), int(array.get("maxItems", 5))
        if low < 1 or high > 8:
            raise ValueError("scored criteria arrays need 1 to 8 items")
        name, new = self._name({"scored criteria": array, "rest": {k: properties[k] for k in rest}})
        if not new:
            return name
        item = array["items"]
        keys = list(item["properties"])
        head, _ = self._name({"criterion head": {k: item["properties"][k] for k in keys[:-1]}})
        self.rules.append(f'{head}: "{{" ' + " ".join(self._members(item["properties"], keys[:-1], True)))
        sep = "," if len(keys) > 1 else ""
        tails = [(v, _literal(f'{sep}"score":{_json(v)}}}')) for v in values]
        ordered = sorted(values)
        endings: dict[tuple[int, int], str] = {}

        def ending(lo: int, hi: int) -> str:
            if (lo, hi) not in endings:
                allowed = [v for v in ordered if lo <= v <= hi]
                endings[lo, hi] = f"{name}_end_{ordered.index(lo)}_{ordered.index(hi)}"
                self.rules.append(f"{endings[lo, hi]}: " + self._rest_scored(properties, rest, allowed))
            return endings[lo, hi]

        def state(count: int, lo: int, hi: int) -> str:
            return f"{name}_{count}_{ordered.index(lo)}_{ordered.index(hi)}"

        def step(count: int, lo: int | None, hi: int | None) -> str:
            options = [
                f"{tail} {state(count + 1, v if lo is None else min(lo, v), v if hi is None else max(hi, v))}"
                for v, tail in tails
            ]
            return f"{head} ({' | '.join(options)})"

        self.rules.append(f'{name}: "[" {step(0, None, None)}')
        for count in range(1, high + 1):
            for a, lo in enumerate(ordered):
                for hi in ordered[a:]:
                    if count == 1 and lo != hi:
                        continue  # one criterion: its score is both bounds
                    alternatives = ['"," ' + step(count, lo, hi)] if count < high else []
                    if count >= low:
                        alternatives.append('"]" ' + ending(lo, hi))
                    self.rules.append(f"{state(count, lo, hi)}: " + " | ".join(alternatives))
        return name

    def _rest_scored(self, properties: dict[str, Any], rest: list[str], allowed: list[int]) -> str:
        """The properties after pointwise criteria and the closing brace, `score` limited to `allowed`."""
        parts = []
        for key in rest:
            label = _literal("," + _json(key) + ":")
            if key == "score":
                parts.append(f"{label} (" + " | ".join(_literal(_json(v)) for v in allowed) + ")")
            else:
                parts.append(f"{label} {self.value(properties[key])}")
        return " ".join([*parts, '"}"'])

    def _rest(self, properties: dict[str, Any], rest: list[str], winner: str, sign: int) -> str:
        """The properties after the criteria and the closing brace, the winner limited by `sign`."""
        parts = []
        for key in rest:
            label = _literal("," + _json(key) + ":")
            if key != winner:
                parts.append(f"{label} {self.value(properties[key])}")
                continue
            values = properties[key].get("enum")
            if not isinstance(values, list) or len(values) < 2:
                raise ValueError(f"{winner} must be an enum whose first two values are candidates 1 and 2")
            allowed = [values[0]] if sign > 0 else [values[1]] if sign < 0 else values
            parts.append(f"{label} (" + " | ".join(_literal(_json(v)) for v in allowed) + ")")
        return " ".join([*parts, '"}"'])
