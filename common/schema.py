"""The schema layer in front of the suite's JSON input: pydantic models say what a spec
(common/spec.py), a record's metadata (conformance/records.py) and a run's files and settings
(training/runs.py) hold, field by field (presence, type, range, no unknown field), and `check` turns
the first failure into the one line every reader prints: the file (or source), the field's path,
what was expected and what was there.

    x.json: layers[2].kernel_size: expected an integer from 1 to 64, got 65
    r.safetensors: metadata.backend: expected one of [the registry's names], got a number (5)
    run/metrics.jsonl:1: unknown field(s) ['extra']; expected some of the fields ['type', ...]

Models are strict (JSON's types as they are: "10" is not 10, 1.0 and true are not integers) and
closed (extra="forbid"). Each leaf type is built with `expect`, which words its failure; what is not
structure (sizes that must work out, file sizes, duplicated keys, integers past any float) stays
code in the modules that read the input. The readers keep the raw JSON they validated: the models
are a gate, not a data format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictFloat,
    StrictInt,
    ValidationError,
    WrapValidator,
    model_validator,
)


class MessageError(ValueError):
    """What a validator raises when its message is complete (no ', got ...' follows)."""


class ExpectedError(ValueError):
    """What a validator raises for 'expected PHRASE'; `one_line` adds what was there (with its JSON type
    when `mismatch`: the type was wrong, not the value)."""

    def __init__(self, phrase: str, *, mismatch: bool):
        super().__init__(f"expected {phrase}")
        self.phrase, self.mismatch = phrase, mismatch


class Schema(BaseModel):
    """A JSON object with known fields: not an object, an unknown field or a missing one is one error
    at the object's path (all the unknown, or all the missing, names at once)."""
    model_config = ConfigDict(extra="forbid", strict=True)
    expected: ClassVar[str] = "an object"  # said when the value is not an object at all

    @model_validator(mode="wrap")
    @classmethod
    def _object(cls, data, handler):
        if not isinstance(data, dict):
            raise ExpectedError(cls.expected, mismatch=True)
        try:
            return handler(data)
        except ValidationError as e:
            own = [err for err in e.errors() if len(err["loc"]) == 1]
            unknown = [err["loc"][0] for err in own if err["type"] == "extra_forbidden"]
            missing = [err["loc"][0] for err in own if err["type"] == "missing"]
            if unknown:
                known = list(cls.model_fields)
                raise MessageError(f"unknown field(s) {unknown}; expected some of the fields {known}") from None
            if missing:
                raise MessageError(f"missing field(s) {missing}") from None
            raise


def _refusal(err: dict) -> ValueError | None:
    """The MessageError or ExpectedError a validator raised for this error, if one did."""
    raised = (err.get("ctx") or {}).get("error")
    return raised if isinstance(raised, (MessageError, ExpectedError)) else None


def _kept(err: dict) -> bool:
    """Errors `expect` never rewords: complete messages, and a union's tag (`one_line` gives it its path)."""
    return isinstance(_refusal(err), MessageError) or err["type"] == "union_tag_invalid"


def _type_error(err: dict) -> bool:
    if isinstance(_refusal(err), ExpectedError):
        return _refusal(err).mismatch
    # strict floats take integers: a float_type error for one is an integer past any float, a value error
    return err["type"].endswith("_type") and not (err["type"] == "float_type" and type(err["input"]) is int)


def expect(tp, phrase: str, *, accept: Callable[[Any], bool] | None = None, whole: bool = False):
    """`tp`, whose failure reads 'expected PHRASE, got ...'. accept: a predicate on the raw JSON value,
    asked first (it must answer for any value); whole: a failure inside (an entry of a list) reads as
    this value's too, else it keeps its own path and words."""
    def validate(value, handler):
        if accept is not None and not accept(value):
            try:
                handler(value)
                mismatch = False
            except ValidationError as e:
                mismatch = any(_type_error(err) for err in e.errors())
            raise ExpectedError(phrase, mismatch=mismatch)
        try:
            return handler(value)
        except ValidationError as e:
            errors = e.errors()
            if not any(_kept(err) for err in errors) and (whole or all(not err["loc"] for err in errors)):
                raise ExpectedError(phrase, mismatch=any(_type_error(err) for err in errors)) from None
            raise
    return Annotated[tp, WrapValidator(validate)]


# --- the leaf types the three inputs share -------------------------------------------------------
def integer(low: int, high: int | None = None):
    words = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"
    return expect(Annotated[int, Strict(), Field(ge=low, le=high)], words)


def number(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """A finite number (an integer is one too) in an interval: (0, 10], [0, 1)."""
    bounds = {"gt" if low_open else "ge": low, "lt" if high_open else "le": high}
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return expect(Annotated[float, Strict(), Field(allow_inf_nan=False, **bounds)], f"a number in {interval}")


def one_of(choices: Collection[str]):
    """One of some strings (a string that is none of them is a wrong value, anything else a wrong type)."""
    return expect(Annotated[str, Strict()], f"one of {list(choices)}",
                  accept=lambda v: not isinstance(v, str) or v in choices)


BOOLEAN = expect(Annotated[bool, Strict()], "true or false")
STRING = expect(Annotated[str, Strict()], "a string")
INTEGER = expect(StrictInt, "an integer")  # any size: ranges past this are the reader's (with their own words)
NUMBER = expect(StrictInt | StrictFloat, "a number", whole=True)  # as given: an integer stays one; NaN and inf too
OBJECT = expect(dict[str, Any], "an object")


def text(limit: int):
    """A string printed in a table or a message: one line (no control character) of at most `limit`."""
    def fits(value) -> bool:
        return not isinstance(value, str) or (len(value) <= limit and not any(
            ord(c) < 32 or ord(c) == 127 for c in value))
    return expect(Annotated[str, Strict()], f"a string of one line, at most {limit:,} characters", accept=fits)


# --- ValidationError -> one line -----------------------------------------------------------------
def json_type(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def shown(value, *, with_type: bool = False) -> str:
    """A value as JSON (a number as Python writes it: nan, inf), cut to 60 characters; always one line."""
    try:
        text_ = json.dumps(value) if isinstance(value, (dict, list, str, bool, type(None))) else repr(value)
    except (ValueError, TypeError, RecursionError):  # nothing JSON gives: an integer past Python's digit limit
        text_ = f"<{type(value).__name__}>"
    text_ = text_ if len(text_) <= 60 else text_[:57] + "..."
    return f"{json_type(value)} ({text_})" if with_type and value is not None else text_


def _key(name: str) -> str:
    plain = name and all(c.isalnum() or c in "._-+" for c in name)  # a spec's name as a key stays as it is
    return name if plain else shown(name)


def path_of(loc: tuple, data, *, root: str = "", tags: Collection[str] = ()) -> str:
    """`layers[2].kernel_size` for pydantic's ('layers', 2, 'nin_block', 'kernel_size'): the member a
    tagged union chose (one of `tags`, right after a list index) is not a field and is left out; a
    dictionary key that is wrong reads '(a key)'."""
    out, node, after_index = root, data, False
    for part in loc:
        if after_index and part in tags and isinstance(node, dict) and node.get("type") == part:
            after_index = False
            continue
        if part == "[key]":
            out += " (a key)"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + _key(str(part))
        after_index = isinstance(part, int)
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
    return out


def _has(node, part) -> bool:
    return part in node if isinstance(node, dict) else isinstance(part, int) and -len(node) <= part < len(node)


def one_line(error: ValidationError, data, *, source: str, root: str = "", tags: Collection[str] = ()) -> str:
    """The first failure of `error` as `SOURCE: PATH: expected ..., got ...`."""
    err = error.errors(include_url=False)[0]
    where = path_of(err["loc"], data, root=root, tags=tags)
    value, refusal = err.get("input"), _refusal(err)
    if isinstance(refusal, ExpectedError):
        said = f"{refusal}, got {shown(value, with_type=refusal.mismatch)}"
    elif isinstance(refusal, MessageError):
        said = str(refusal)
    elif err["type"] == "union_tag_invalid":  # a layer's "type" that names no kind
        field = str(err["ctx"]["discriminator"]).strip("'")
        where = f"{where}.{field}" if where else field
        said = f"expected one of [{err['ctx']['expected_tags']}], got {shown(value.get(field))}"
    else:  # pydantic's own words, for a type no `expect` wraps
        said = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {shown(value)}"
    line = f"{source}: {where}: {said}" if where else f"{source}: {said}"
    return " ".join(line.splitlines())


def check(model: type[BaseModel], data, *, source: str, error: type[Exception], root: str = "",
          tags: Collection[str] = ()) -> BaseModel:
    """`model` validated from `data`, or `error` with the one line of its first failure."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise error(one_line(e, data, source=source, root=root, tags=tags)) from None
