"""Flag types shared by every `nin` command: each flag has a range, checked when the command line is
parsed, and a value outside it is one line naming the flag (argparse adds `argument --flag:`).

    count(1, 100_000)      an integer in a closed range
    number(0, 100)         a finite number in a range, (low, high] unless told otherwise
    seconds                a timeout: > 0 and below a week (subprocess cannot wait longer than a C
                           double of seconds allows, and nobody means more)
    path                   a path that is not empty (`--out ""` must not mean the default)
    Distinct               an nargs="+" list in which no value is given twice (`--backend torch torch`
                           would run two workers on one file)
    UsageError             flags that parse but cannot work together (the `nin` command prints it as one line)
"""

from __future__ import annotations

import argparse
import math

WEEK_S = 7 * 24 * 3600


class UsageError(ValueError):
    """A flag or argument that cannot work; the message names it."""


def count(low: int, high: int):
    """An argparse type: an integer from `low` to `high` (digits only: '1e9', '1.5', 'nan' are refused)."""
    def parse(text: str) -> int:
        digits = text.strip()
        body = digits[1:] if digits[:1] in "+-" else digits
        if not (body.isascii() and body.isdigit() and len(body) < 20 and low <= int(digits) <= high):
            raise argparse.ArgumentTypeError(f"expected an integer from {low:,} to {high:,}, got {text!r}")
        return int(digits)
    return parse


def number(low: float, high: float, *, low_open: bool = True, what: str = "a number"):
    """An argparse type: a finite number in (low, high] (or [low, high] with low_open=False)."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (value > low if low_open else value >= low) and value <= high  # NaN fails both
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"expected {what} in {interval}, got {text!r}")
        return value
    return parse


def seconds(text: str) -> float:
    """An argparse type: a timeout in seconds, > 0 and below a week."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < WEEK_S:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0 and below a week, got {text!r}")
    return value


def address(text: str) -> str:
    """An argparse type: HOST:PORT, where node 0 of a multi-machine run listens (a name, an IPv4 address, or
    an IPv6 one in brackets; the port from 1 to 65535)."""
    host, colon, port = text.strip().rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (colon and bare and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535
            and all(c.isalnum() or c in ".-_:" for c in bare) and (":" not in bare or bare != host)):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 1 to 65535), got {text!r}")
    return text.strip()


def path(text: str) -> str:
    """An argparse type: a path that is not empty or blank (an empty --out must not mean the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"expected a path, got one with a NUL byte: {text!r}")
    return text


class Distinct(argparse.Action):
    """nargs="+" where a value given twice is refused: `--backend torch torch` asks for one thing twice,
    and its two workers would write one file. A flag given again replaces its list (argparse's rule)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = set()
        for value in values:
            if value in seen:
                parser.error(f"argument {option_string}: {value!r} is given twice")
            seen.add(value)
        setattr(namespace, self.dest, list(values))
