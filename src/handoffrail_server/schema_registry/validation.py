"""JSON Schema validation of packet contexts with jsonschema, offline and in bounded time.

jsonschema on its own fetches any `$ref` it cannot resolve over the network, and matches
`pattern`s with backtracking `re`. Here nothing is fetched (registration requires every reference
to resolve inside the schema; validation also finds jsonschema's bundled meta-schemas), and
regular expressions run on `patterns` (the `regex` module), and every keyword of a validation
draws on one time budget: a schema whose `anyOf`s nest through `$ref`s costs 2^depth keyword
checks, and a stalled event loop would stall every tenant of the process.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from fractions import Fraction
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012, Schema, specification_with

from handoffrail_server.schema_registry.patterns import (
    Budget,
    BudgetExceeded,
    PatternUnsupported,
    compile_pattern,
    search,
)

#: seconds one validation may take (the event loop waits meanwhile)
VALIDATION_SECONDS = 0.25
#: seconds all validations of one request may take together (a batch validates many packets)
REQUEST_VALIDATION_SECONDS = 1.0

#: retrieves nothing: without a registry of its own, jsonschema fetches unknown `$ref` URLs
_OFFLINE: Registry[Schema] = Registry()
_BUDGET: ContextVar[Budget | None] = ContextVar("schema_validation_budget", default=None)
_REQUEST_BUDGET: ContextVar[Budget | None] = ContextVar("schema_request_budget", default=None)


class SchemaUnusable(ValueError):
    """The schema passes its meta-schema but cannot validate anything here; says why."""


# -- keywords that match regular expressions, on `patterns` instead of `re` ---------------------


def _search(pattern: str, text: str) -> bool:
    budget = _BUDGET.get()
    return search(pattern, text, budget or Budget(VALIDATION_SECONDS))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: Mapping[str, Any], instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """jsonschema's `additionalProperties`, whose `patternProperties` matching used `re`."""
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [
        key
        for key in instance
        if key not in properties and not any(_search(pattern, key) for pattern in patterns)
    ]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            regexes = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {regexes}")
        else:
            verb = "was" if len(extras) == 1 else "were"
            listed = ", ".join(repr(extra) for extra in sorted(extras, key=str))
            yield ValidationError(
                f"Additional properties are not allowed ({listed} {verb} unexpected)"
            )


# -- uniqueItems in linear time ------------------------------------------------------------------


def _canonical(value: Any) -> Hashable:
    """A hashable stand-in, equal for values JSON Schema calls equal: `1` and `1.0` alike,
    `true` and `1` not, objects whatever their key order, arrays in order."""
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)  # 1 == 1.0 and hash(1) == hash(1.0)
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, list | tuple):
        return (4, tuple(_canonical(item) for item in value))
    if isinstance(value, Mapping):
        return (5, frozenset((key, _canonical(item)) for key, item in value.items()))
    return (0, value)  # None


def _unique_items(
    validator: Any, unique: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """jsonschema's `uniqueItems` compares every pair of items it cannot sort (objects, mixed
    types): 5,000 objects took 20 s of the event loop. Here: one hash per item."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Hashable] = set()
    try:
        for item in instance:
            key = _canonical(item)
            if key in seen:
                yield ValidationError(f"{reprlib.repr(instance)} has non-unique elements")
                return
            seen.add(key)
    except RecursionError:
        raise BudgetExceeded("items nested too deeply to compare") from None


def _overflow_safe(check: _Keyword) -> _Keyword:
    """jsonschema's `multipleOf` with a float divisor divides in floating point: an integer
    past ~1e308 raised OverflowError (a 500). Such a number is checked exactly instead."""

    def multiple_of(
        validator: Any, divisor: Any, instance: Any, schema: Mapping[str, Any]
    ) -> Iterator[ValidationError]:
        try:
            yield from check(validator, divisor, instance, schema)
        except OverflowError:
            if Fraction(instance) % Fraction(divisor):
                yield ValidationError(f"{reprlib.repr(instance)} is not a multiple of {divisor}")

    return multiple_of


_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "uniqueItems": _unique_items,
}
_BOUNDED: dict[type[Validator], type[Validator]] = {}

_Keyword = Callable[[Any, Any, Any, Mapping[str, Any]], Any]


def _timed(check: _Keyword) -> _Keyword:
    """`check`, first spending from the validation's budget (`BudgetExceeded` when it is gone)."""

    def keyword(validator: Any, value: Any, instance: Any, schema: Mapping[str, Any]) -> Any:
        budget = _BUDGET.get()
        if budget is not None:
            budget.remaining()
        return check(validator, value, instance, schema)

    return keyword


def _validator_class(schema: Mapping[str, Any]) -> type[Validator]:
    """The draft of the schema's `$schema` (2020-12 by default), with bounded regex keywords
    and every keyword checking the validation's time budget."""
    if not isinstance(schema.get("$schema", ""), str):
        raise SchemaUnusable("$schema must be a string")  # validator_for would crash on it
    base = validator_for(schema, default=Draft202012Validator)
    bounded = _BOUNDED.get(base)
    if bounded is None:
        keywords = {
            **base.VALIDATORS,
            **{k: v for k, v in _KEYWORDS.items() if k in base.VALIDATORS},
        }
        for name in ("multipleOf", "divisibleBy"):  # divisibleBy: draft 3's name
            if name in keywords:
                keywords[name] = _overflow_safe(keywords[name])
        timed = {name: _timed(check) for name, check in keywords.items()}
        bounded = _BOUNDED[base] = extend(base, timed)  # type: ignore[no-untyped-call]
    return bounded


@contextmanager
def request_budget() -> Iterator[None]:
    """Within this block, all validations together take at most `REQUEST_VALIDATION_SECONDS`,
    each still at most `VALIDATION_SECONDS`."""
    token = _REQUEST_BUDGET.set(Budget(REQUEST_VALIDATION_SECONDS))
    try:
        yield
    finally:
        _REQUEST_BUDGET.reset(token)


def _validation_budget() -> Budget:
    budget = Budget(VALIDATION_SECONDS)
    shared = _REQUEST_BUDGET.get()
    if shared is not None:
        budget.deadline = min(budget.deadline, shared.deadline)
    return budget


# -- checks ------------------------------------------------------------------------------------


def _subschemas(
    schema: Mapping[str, Any], validator_class: type[Validator]
) -> Iterator[tuple[Any, Mapping[str, Any]]]:
    """Every schema object in `schema`, each with the resolver its references start from."""
    meta_schema = validator_class.META_SCHEMA
    dialect = meta_schema.get("$id") or meta_schema.get("id") or "urn:unknown-dialect"
    root = specification_with(dialect, default=DRAFT202012).create_resource(schema)
    stack = [(_OFFLINE.resolver_with_root(root), root)]
    while stack:
        resolver, resource = stack.pop()
        if isinstance(resource.contents, Mapping):
            yield resolver, resource.contents
        stack.extend((resolver.in_subresource(sub), sub) for sub in resource.subresources())


def _unbounded_keywords(schema: Mapping[str, Any], validator_class: type[Validator]) -> None:
    """Refuse `unevaluatedProperties` next to `patternProperties` anywhere in the document.

    jsonschema computes unevaluated properties in code of its own that matches patterns with
    `re`; no keyword replaced here reaches it, so the combination would not be bounded."""
    if "unevaluatedProperties" not in validator_class.VALIDATORS:
        return
    unevaluated = patterned = False
    stack: list[Any] = [schema]
    while stack and not (unevaluated and patterned):
        value = stack.pop()
        if isinstance(value, Mapping):
            unevaluated = unevaluated or "unevaluatedProperties" in value
            patterned = patterned or bool(value.get("patternProperties"))
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    if unevaluated and patterned:
        raise SchemaUnusable(
            "unevaluatedProperties cannot be combined with patternProperties "
            "(their regular expressions would not be matched in bounded time)"
        )


def _check_subschemas(schema: dict[str, Any], validator_class: type[Validator]) -> None:
    references = [key for key in ("$ref", "$dynamicRef") if key in validator_class.VALIDATORS]
    for resolver, subschema in _subschemas(schema, validator_class):
        for keyword in references:
            if keyword not in subschema:
                continue
            reference = subschema[keyword]
            if not isinstance(reference, str):
                raise SchemaUnusable(f"{keyword} must be a string")
            try:
                resolver.lookup(reference)
            except (Unresolvable, ValueError):
                raise SchemaUnusable(
                    f"{keyword} {reference!r} does not resolve inside the schema "
                    "(remote references are never fetched)"
                ) from None
        if isinstance(subschema.get("pattern"), str):
            compile_pattern(subschema["pattern"])
        if isinstance(subschema.get("patternProperties"), Mapping):
            for pattern in subschema["patternProperties"]:
                compile_pattern(pattern)


def check(schema: dict[str, Any]) -> None:
    """Raise `SchemaError` (meta-schema) or `SchemaUnusable` unless `schema` can be used.

    Every `$ref` and `$dynamicRef` must resolve inside the schema (nothing is ever fetched),
    every regular expression must be one `patterns` supports."""
    validator_class = _validator_class(schema)
    validator_class.check_schema(schema)
    try:
        _check_subschemas(schema, validator_class)
    except SchemaUnusable:
        raise
    except PatternUnsupported as exc:
        raise SchemaUnusable(f"unsupported regular expression: {exc}") from None
    except ValueError as exc:  # urljoin() on a malformed `$id`
        raise SchemaUnusable(f"an identifier is not a valid URI: {exc}") from None
    _unbounded_keywords(schema, validator_class)


def first_error(schema: dict[str, Any], instance: Any) -> ValidationError | None:
    """The first way `instance` fails `schema`, or None.

    Raises `SchemaUnusable` for what `check` refuses (schemas stored before it existed), and
    `BudgetExceeded` when it needs more than `VALIDATION_SECONDS` (or than what is left of the
    request's budget, inside `request_budget`)."""
    validator_class = _validator_class(schema)
    _unbounded_keywords(schema, validator_class)
    validator = validator_class(schema, registry=_OFFLINE)
    token = _BUDGET.set(_validation_budget())
    try:
        return next(iter(validator.iter_errors(instance)), None)
    except Unresolvable as exc:  # what jsonschema raises is a subclass
        raise SchemaUnusable(f"a reference does not resolve inside the schema: {exc}") from None
    except PatternUnsupported as exc:
        raise SchemaUnusable(f"unsupported regular expression: {exc}") from None
    except ValueError as exc:  # urljoin() on a malformed `$id`
        raise SchemaUnusable(f"an identifier is not a valid URI: {exc}") from None
    except RecursionError:
        raise SchemaUnusable("the schema refers to itself without end") from None
    finally:
        _BUDGET.reset(token)
