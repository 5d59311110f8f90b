"""The matrix: check x record against the reference, check x pair of records, the failures; text and JSON,
and a report for a browser: Markdown tables with the heatmap on top (write_report).

    python -m conformance.matrix records/matrix.json records/matrix.md
        the report (.md, .png, .html) again from a comparison's JSON: nothing is compared
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from common import provenance, tables
from common.fsio import atomic_write_text

from . import heatmap
from .compare import Check, Comparison


def _cell(row: Check) -> str:
    mark = "ok" if row.passed else "FAIL"
    if row.measured is None:
        return mark if row.passed or row.check == "record" else f"FAIL ({row.detail})"
    return f"{mark} {row.measured:.1e} ({row.ratio:.2g})"


def _grid(rows: list[Check], key, columns: list[str]) -> list[list[str]]:
    keys = list(dict.fromkeys((r.variant, r.check) for r in rows))
    cells = {(r.variant, r.check, key(r)): _cell(r) for r in rows}
    return [[v, c] + [cells.get((v, c, col), "-") for col in columns] for v, c in keys]


def render(result: Comparison) -> str:
    """Where it was made (date, commit, command, CPU and its ISA flags, versions), what was compared,
    the two matrices, and one line per failure (with the record's path)."""
    rows = result.rows
    lines = ["Provenance:"] + [f"  {line}" for line in provenance.lines(result.provenance or provenance.collect())]
    lines += ["", "Records:"] + [f"  {line}" for line in result.compared]
    vs_ref = [r for r in rows if r.against in ("reference", "spec")]
    if vs_ref:
        columns = list(dict.fromkeys(r.backend for r in vs_ref))
        lines += ["", "Against the float64 reference and the spec: measured error (its share of the bound, "
                      "3 x the error model's spread + floor; <= 1 passes)"]
        lines += tables.text(["variant", "check"] + columns, _grid(vs_ref, lambda r: r.backend, columns))
    pairs = [r for r in rows if r.against not in ("reference", "spec", "-")]
    if pairs:
        columns = list(dict.fromkeys(f"{r.backend} ~ {r.against}" for r in pairs))
        lines += ["", "Record against record (bound: the sum of both records' bounds)"]
        lines += tables.text(["variant", "check"] + columns, _grid(pairs, lambda r: f"{r.backend} ~ {r.against}",
                                                                   columns))
    lines += ["", verdict(result)] + [f"  {line}" for line in failures(result)]
    return "\n".join(lines)


def verdict(result: Comparison) -> str:
    """The closing line: how many rows passed and failed, and the worst share of a bound on each side."""
    rows = result.rows
    failed = [r for r in rows if not r.passed]
    numeric = [r for r in rows if r.check not in ("shapes", "params", "record")]
    worst = {side: max((r.ratio for r in numeric if (r.against == "reference") == (side == "reference")),
                       default=None) for side in ("reference", "pairs")}
    # A pair's bound holds the distance of the two records' references where their kernels see other
    # hyperparameters (MXNet's float32 batch-norm momentum): where that distance dominates (float64, the
    # chaotic d2l-bn) the pair's share nears 1 while each record is well inside its own bound.
    shares = [f"{worst['reference']:.2g} against the reference" if worst["reference"] is not None else "",
              f"{worst['pairs']:.2g} record against record" if worst["pairs"] is not None else ""]
    return (f"{len(rows) - len(failed)} passed, {len(failed)} failed; {result.numeric_checks} numeric checks; "
            f"worst share of its bound: {', '.join(filter(None, shares)) or 'none'}")


def failures(result: Comparison) -> list[str]:
    """One line per failed row, starting with FAIL, with the record's path (gpu/report.py reads them)."""
    out = []
    for r in result.rows:
        if not r.passed:
            measured = "" if r.measured is None else f"{r.measured:.3g} ({r.ratio:.3g} x its bound) "
            out.append(f"FAIL {r.variant} {r.check} [{r.backend} vs {r.against}]: {measured}{r.detail}"
                       + (f" [{r.path}]" if r.path else ""))
    return out


def to_json(result: Comparison) -> dict:
    def clean(x):
        return None if isinstance(x, float) and not np.isfinite(x) else x

    return {"passed": result.passed, "numeric_checks": result.numeric_checks,
            "provenance": result.provenance or provenance.collect(), "compared": result.compared,
            "checks": [{k: clean(v) for k, v in asdict(r).items()} for r in result.rows]}


def from_json(doc: dict) -> Comparison:
    """A comparison again from to_json's output (records/matrix.json): a share or error that JSON could
    not hold (inf, NaN: written as null) comes back as inf."""
    names = {f.name for f in fields(Check)}
    rows = []
    for row in doc["checks"]:
        values = {k: v for k, v in row.items() if k in names}
        values["ratio"] = math.inf if values.get("ratio") is None else values["ratio"]
        rows.append(Check(**values))
    return Comparison(rows=rows, compared=list(doc.get("compared", [])), provenance=dict(doc.get("provenance", {})))


# --- the report for a browser: Markdown tables under the heatmap -----------------------------------
def _md_cell(row: Check | None) -> str:
    if row is None:
        return "–"
    text = _cell(row)
    return f"**FAIL**{text[4:]}" if text.startswith("FAIL") else text


def _md_tables(rows: list[Check], key, *, label: list[str]) -> list[str]:
    """One Markdown table per variant: a row per key(row) (a record, or a pair), a column per check."""
    out = []
    for variant in dict.fromkeys(r.variant for r in rows):
        held = [r for r in rows if r.variant == variant]
        checks = list(dict.fromkeys(r.check for r in held))
        keys = list(dict.fromkeys(key(r) for r in held))
        cells = {(key(r), r.check): r for r in held}
        body = [list(k) + [_md_cell(cells.get((k, c))) for c in checks] for k in keys]
        out += [f"### {variant}", ""] + tables.markdown(label + checks, body) + [""]
    return out


def markdown(result: Comparison, *, image: str = "", page: str = "") -> str:
    """The matrix for a browser: the heatmap (`image`, a path relative to the report) and the verdict on
    top, then where it was made, what was compared, one table per variant against the reference and
    one per variant record against record (folded), and the failures, one line each."""
    rows = result.rows
    lines = ["# Conformance matrix", ""]
    if image:
        lines += [f"![each check's share of its bound, per record; red past 1]({image})", ""]
    also = f" The same as a page, each cell with its number: [{page}]({page})." if page else ""
    lines += [verdict(result), "", heatmap.LEGEND + also, ""]
    made = provenance.lines(result.provenance or provenance.collect())
    lines += ["## Provenance", ""] + [f"- {line}" for line in made]
    lines += ["", "## Records", ""] + [f"- {line}" for line in result.compared]
    vs_ref = [r for r in rows if r.against in ("reference", "spec")]
    if vs_ref:
        lines += ["", "## Against the float64 reference and the spec", "",
                  "Each cell: ok or FAIL, the measured error (its share of the bound, 3 x the error model's spread "
                  "+ floor; <= 1 passes).", ""]
        lines += _md_tables(vs_ref, lambda r: (r.backend,), label=["record"])
    pairs = [r for r in rows if r.against not in ("reference", "spec", "-")]
    if pairs:
        lines += ["## Record against record", "", "The bound: the sum of both records' bounds.", ""]
        for variant in dict.fromkeys(r.variant for r in pairs):
            held = [r for r in pairs if r.variant == variant]
            count = len({(r.backend, r.against) for r in held})
            lines += ["<details>", f"<summary>{variant}: {count} pairs</summary>", ""]
            lines += _md_tables(held, lambda r: (r.backend, r.against), label=["record", "against"])[2:]
            lines += ["</details>", ""]
    failed = failures(result)
    lines += ["## Failures", ""] + (["```text", *failed, "```"] if failed else ["None."])
    return "\n".join(lines) + "\n"


def write_report(result: Comparison, md_path: str | Path) -> list[Path]:
    """The report for a browser: `md_path` (markdown), the heatmap beside it as .png (when matplotlib is
    installed) and as a self-contained .html; each written atomically, the .md last, so that the
    pictures it links are there when it appears. Returns the paths written."""
    md_path = Path(md_path)
    png, page = md_path.with_suffix(".png"), md_path.with_suffix(".html")
    prov = result.provenance or provenance.collect()
    title = f"Conformance matrix, {prov.get('date', 'undated')}"
    drawn = heatmap.write_png(result.rows, png, title=f"{title}: {verdict(result)}")
    heatmap.write_html(result.rows, page, title=title, summary=verdict(result), image=png.name if drawn else "")
    atomic_write_text(md_path, markdown(result, image=png.name if drawn else "", page=page.name))
    return [md_path, page] + ([png] if drawn else [])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m conformance.matrix MATRIX.json REPORT.md")
    print(*write_report(from_json(json.loads(Path(sys.argv[1]).read_text())), sys.argv[2]))
