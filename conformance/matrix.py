"""The matrix: check x record against the reference, check x pair of records, the failures; text and JSON."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from common import provenance, tables

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
    failed = [r for r in rows if not r.passed]
    numeric = [r for r in rows if r.check not in ("shapes", "params", "record")]
    worst = {side: max((r.ratio for r in numeric if (r.against == "reference") == (side == "reference")),
                       default=None) for side in ("reference", "pairs")}
    # A pair's bound holds the distance of the two records' references where their kernels see other
    # hyperparameters (MXNet's float32 learning rate): where that distance dominates (float64, the
    # chaotic d2l-bn) the pair's share nears 1 while each record is well inside its own bound.
    shares = [f"{worst['reference']:.2g} against the reference" if worst["reference"] is not None else "",
              f"{worst['pairs']:.2g} record against record" if worst["pairs"] is not None else ""]
    lines += ["", f"{len(rows) - len(failed)} passed, {len(failed)} failed; {result.numeric_checks} numeric checks; "
                  f"worst share of its bound: {', '.join(filter(None, shares)) or 'none'}"]
    for r in failed:
        measured = "" if r.measured is None else f"{r.measured:.3g} ({r.ratio:.3g} x its bound) "
        lines.append(f"  FAIL {r.variant} {r.check} [{r.backend} vs {r.against}]: {measured}{r.detail}"
                     + (f" [{r.path}]" if r.path else ""))
    return "\n".join(lines)


def to_json(result: Comparison) -> dict:
    def clean(x):
        return None if isinstance(x, float) and not np.isfinite(x) else x

    return {"passed": result.passed, "numeric_checks": result.numeric_checks,
            "provenance": result.provenance or provenance.collect(), "compared": result.compared,
            "checks": [{k: clean(v) for k, v in asdict(r).items()} for r in result.rows]}
