"""The `nin` subcommands of the idioms driver.

    nin idioms                         every topic in the terminal: notes, then the four snippets
    nin idioms --topic block loss      some topics
    nin idioms --list                  the topics
    nin idioms --json                  the topic data, with the cut source, as one JSON object
    nin idioms --html docs/idioms.html the self-contained page (docs/idioms.html is committed)
    nin idioms --check docs/idioms.html   exit 1 when that page is not what the source and results give now
    nin idioms --html docs/idioms.html --screenshot docs/idioms.png --narrow-screenshot docs/idioms-800.png
                                       and screenshots at 1400 and 800 pixels (needs Chromium)

The page needs Jinja2 and markdown-it-py, the side-by-side terminal view rich: the main environment's
(requirements/main.txt). They are imported when used, so that `nin` itself starts without them.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from pathlib import Path

from common.backends import ROOT
from common.fsio import atomic_write_text, check_writable

from . import browser, facts, render, source
from .topics import TOPICS


def add_commands(sub) -> None:
    """Add this driver's subcommands to the `nin` parser's subparsers (nin/cli.py calls it)."""
    p = sub.add_parser("idioms", help="the four frameworks side by side, cut from the live source, with the evidence",
                       description="The four implementations side by side per topic, cut from the backend files "
                                   "by function, with the differences that matter and the test or check that "
                                   "proves each is handled. Topics: " + ", ".join(t.key for t in TOPICS) + ".")
    p.add_argument("--topic", nargs="+", metavar="TOPIC",
                   help="topics to show (default: all): " + ", ".join(t.key for t in TOPICS))
    p.add_argument("--list", action="store_true", help="list the topics and exit")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the topic data and the cut source as JSON")
    out.add_argument("--html", metavar="FILE", help="write the self-contained HTML page to FILE")
    out.add_argument("--check", metavar="FILE",
                     help="exit 1 when FILE is stale: records/matrix.json or results/mutations/*.json changed "
                          "since it was generated, or a fresh render of every topic differs")
    p.add_argument("--screenshot", metavar="PNG",
                   help=f"with --html: also a screenshot of the page, {browser.WIDE} pixels wide (needs Chromium)")
    p.add_argument("--narrow-screenshot", metavar="PNG",
                   help=f"with --html: also a screenshot {browser.NARROW} pixels wide, where the frameworks follow one "
                        "another (needs Chromium)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="highlight the terminal view (auto: when stdout is a terminal and NO_COLOR is unset)")
    p.set_defaults(func=main)


def _fail(message: str) -> int:
    print(f"nin idioms: {message}", file=sys.stderr)
    return 2


def _topics(names):
    if not names:
        return TOPICS
    known = {t.key: t for t in TOPICS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--topic: unknown topic {unknown[0]!r}; expected one of {', '.join(known)}")
    return tuple(known[n] for n in dict.fromkeys(names))


def main(args) -> int:
    try:
        topics = _topics(args.topic)
    except ValueError as e:
        return _fail(str(e))
    shots = {flag: path for flag, path in (("--screenshot", args.screenshot),
                                           ("--narrow-screenshot", args.narrow_screenshot)) if path}
    if shots and not args.html:
        return _fail(f"{next(iter(shots))}: needs --html FILE (the page to photograph)")
    if args.check and args.topic:
        return _fail("--check: compares the whole page; leave out --topic")
    if args.list:
        for t in topics:
            print(f"{t.key:<10} {t.title}")
        return 0
    for flag, path in {"--html": args.html, **shots}.items():
        if path:
            check_writable(path, flag)  # OutputError: nin prints it as one line, exit 2
    chromium = None
    if shots:
        chromium = browser.find()
        if chromium is None:
            return _fail(f"{next(iter(shots))}: {browser.missing()}")
    try:
        if args.json:
            print(json.dumps(render.to_json(topics), indent=2))
        elif args.check:
            return check(args.check)
        elif args.html:
            atomic_write_text(args.html, _html(topics))
            print(args.html)
            for flag, path in shots.items():
                width = browser.WIDE if flag == "--screenshot" else browser.NARROW
                browser.screenshot(chromium, Path(args.html), Path(path), width=width)
                print(path)
        else:
            color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty()
                                               and not os.environ.get("NO_COLOR"))
            sys.stdout.write(render.to_text(topics, color=color))
    except source.IdiomsError as e:  # the topic table cites what the source no longer has
        print(f"nin idioms: {e}", file=sys.stderr)
        return 1
    except browser.BrowserError as e:
        print(f"nin idioms: --screenshot: {e}", file=sys.stderr)
        return 1
    return 0


def _html(topics, *, root: Path = ROOT) -> str:
    """The whole page (idioms.page: Jinja2, markdown-it-py, Pygments), deterministic for a given source tree
    and given committed results."""
    from . import page  # Jinja2 and markdown-it-py are the main environment's, not MXNet's

    return page.page(topics, root=root)


def check(path: str, *, root: Path = ROOT) -> int:
    """0 when the page at `path` is what the source and the committed results give now; 1 otherwise, with
    what is stale in one line: first the results the page was computed from (the hashes it embeds), then
    the first difference from a fresh render."""
    try:
        committed = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        return _fail(f"--check: cannot read {path}: {e.strerror or e}")
    then = render.embedded_inputs(committed)
    if then is None:
        stale = ["it names none of the results it was computed from (generated before it embedded their hashes)"]
    else:
        stale = facts.changed_inputs(then, facts.input_hashes(root=root))
    if not stale:
        fresh = _html(TOPICS, root=root)
        if committed == fresh:
            print(f"{path} is up to date")
            return 0
        stale = [first_difference(committed, fresh)]
    print(f"nin idioms: {path} is stale: {'; '.join(stale)}; regenerate it with `{render.COMMAND}`", file=sys.stderr)
    return 1


def first_difference(old: str, new: str) -> str:
    """Where two renders first differ, in one line."""
    a, b = old.splitlines(), new.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            was = a[i1][:80] if i1 < i2 else "(nothing)"
            now = b[j1][:80] if j1 < j2 else "(nothing)"
            return f"line {i1 + 1} was {was!r}, a fresh render has {now!r}"
    return "they differ in line endings only"
