"""Nothing stated without a file: every relative link of README.md and docs/*.md reaches a file of the
checkout, and every result file they link names its date, its command and its machine."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = ("results/", "benchmarks/results/")  # committed measurements; records/ names its own (test_provenance)

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DATE = re.compile(r"(?<!\d)20\d\d-[01]\d-[0-3]\d(?!\d)")
COMMAND = re.compile(r"\bcommands?\b", re.IGNORECASE)
# A machine: a CPU or GPU model by name, or a line that says which machine or host it was.
MACHINE = re.compile(r"\b(EPYC|Xeon|Ryzen|Core\(TM\)|Graviton|Neoverse|Apple M\d|[AH]\d00|GH200|RTX|GPU)\b"
                     r"|\bmachine\b|\bhost\b", re.IGNORECASE)


def relative_links(page: Path) -> list[tuple[int, str]]:
    return links_in(page.read_text())


def links_in(text: str) -> list[tuple[int, str]]:
    """(line number, target without its #fragment) of every link outside code blocks that is not a
    URL or a bare anchor."""
    out = []
    in_code = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue
            out.append((number, target.split("#", 1)[0]))
    return out


def provenance_missing(text: str) -> list[str]:
    """What a result file does not name: a date (YYYY-MM-DD), a command, a machine."""
    return [what for what, pattern in (("a date YYYY-MM-DD", DATE), ("a command", COMMAND), ("a machine", MACHINE))
            if not pattern.search(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_a_file(page):
    broken = [f"{page.relative_to(ROOT)}:{n}: {t}" for n, t in relative_links(page)
              if not (page.parent / t).exists()]
    assert not broken, "links to nothing:\n" + "\n".join(broken)


def test_every_result_the_docs_link_names_its_date_command_and_machine():
    """Every Markdown result file under results/ or benchmarks/results/ that README.md or a page of
    docs/ links."""
    linked = sorted({(page.parent / t).resolve() for page in PAGES for _, t in relative_links(page)})
    results = [p for p in linked if p.is_file() and p.suffix == ".md"
               and any(str(p.relative_to(ROOT)).startswith(r) for r in RESULTS)]
    assert results, "the README links no result file"
    missing = {str(p.relative_to(ROOT)): provenance_missing(p.read_text()) for p in results}
    assert not {k: v for k, v in missing.items() if v}, missing


def test_the_checks_see_what_they_should():
    page = "See [a](results/x.md), ![b](docs/p.png \"t\"), [c](https://x.org/a.md), [d](#anchor), [e](y.md#s).\n"
    assert [t for _, t in links_in(page + "```\n[f](in/code.md)\n```\n")] == ["results/x.md", "docs/p.png", "y.md"]
    assert provenance_missing("Measured 2026-11-26 on the machine below.\nCommand: `nin bench`") == []
    assert provenance_missing("numbers only: 73 GFLOP/s") == ["a date YYYY-MM-DD", "a command", "a machine"]



NIN_COMMAND = re.compile(r"`(nin [^`]+)`|^\s*(nin [a-z-]+ .*)$", re.MULTILINE)


def cited_results() -> list[Path]:
    linked = sorted({(page.parent / t).resolve() for page in PAGES for _, t in relative_links(page)})
    return [p for p in linked if p.is_file() and p.suffix == ".md"
            and any(str(p.relative_to(ROOT)).startswith(r) for r in RESULTS)]


def test_the_commands_of_cited_results_still_parse():
    """A cited result names the command that made it; that command must still mean something to
    today's `nin` (an old `--backend tf` or `--compile off` does not parse: measure again)."""
    import shlex

    from nin import cli

    bad = []
    for path in cited_results():
        for inline, line in NIN_COMMAND.findall(path.read_text()):
            words = shlex.split((inline or line).replace("\\\n", " "), comments=True)
            if len(words) < 3:  # a command named in prose (`nin record`), not a command line
                continue
            try:
                cli.parser().parse_args(words[1:])
            except SystemExit:
                bad.append(f"{path.relative_to(ROOT)}: {' '.join(words)[:150]}")
    assert not bad, "commands that no longer parse:\n" + "\n".join(bad)


def test_the_readme_s_backend_table_is_the_registry_s():
    """README.md's first table (package, framework, idiom, registry backends) lists every package of
    common/backends.py, in its order, each with its backends in order: a package or a backend added to
    or taken from the registry fails here until the table says so."""
    from common import backends

    rows = {}
    for line in (ROOT / "README.md").read_text().split("\n\n## ")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `nin_") and len(cells) == 4:
            rows[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[3])
    registered = {p: [n for n, b in backends.BACKENDS.items() if b.package == p and b in backends.REGISTERED]
                  for p in dict.fromkeys(b.package for b in backends.REGISTERED)}
    assert rows == registered and list(rows) == list(registered), \
        f"README.md's backend table: {rows}; the registry (common/backends.py): {registered}"
