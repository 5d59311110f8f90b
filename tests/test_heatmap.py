"""The matrix for a browser: the heatmap (PNG and HTML) and the Markdown tables of `nin compare --report`.

Built from synthetic comparison rows and from the committed records/matrix.json (read, never written):
no framework, no record, no reference is computed.
"""

import json
import math
import re
from pathlib import Path

import pytest

from conformance import heatmap, matrix
from conformance.compare import Check, Comparison

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ("torch/eager", "jax/eager", "mxnet/eager")


def _row(variant: str, check: str, backend: str, ratio: float, against: str = "reference") -> Check:
    passed = ratio <= 1
    return Check(variant, check, against, backend, None if check == "shapes" else 1e-7 * ratio, "bound", ratio,
                 passed, "" if passed else "worst: final/conv.weight", f"records/{backend.split('/')[0]}.safetensors")


def _comparison(*, fail: bool) -> Comparison:
    """Three records and two variants; with `fail`, jax's paper logits are 3.5 times their bound."""
    rows = []
    for variant in ("d2l", "paper"):
        for k, backend in enumerate(RECORDS):
            rows.append(_row(variant, "shapes", backend, 0.0, "spec"))
            rows.append(_row(variant, "logits", backend, 3.5 if fail and variant == "paper" and k == 1 else 10 ** -k))
        rows += [_row(variant, "logits", a, 0.5 if variant == "paper" else 0.25, against=b)
                 for i, a in enumerate(RECORDS) for b in RECORDS[i + 1:]]
    return Comparison(rows=rows, compared=[f"{b}: records/{b.split('/')[0]}.safetensors" for b in RECORDS],
                      provenance={"date": "2026-12-05T00:00:00+00:00", "command": "nin compare"})


def test_colours_run_on_a_log_scale_and_turn_red_past_the_bound():
    assert heatmap.colour(0.0) == heatmap.colour(heatmap.FLOOR / 10) == heatmap.colour(heatmap.FLOOR) == heatmap.STOPS[0]
    assert heatmap.colour(1.0) == heatmap.STOPS[-1]
    assert heatmap.colour(1.0001) == heatmap.colour(math.inf) == heatmap.OVER
    assert heatmap.colour(math.nan) == heatmap.EMPTY
    assert heatmap.position(1e-2) == pytest.approx(0.5)  # halfway between 1e-4 and 1 on a log scale
    darkness = [sum(int(heatmap.colour(10.0 ** e)[i:i + 2], 16) for i in (1, 3, 5)) for e in range(-4, 1)]
    assert darkness == sorted(darkness, reverse=True) and len(set(darkness)) == 5  # darker as the share grows


def test_grids_hold_each_records_share_and_each_pairs_worst():
    ref, pairs = heatmap.grids(_comparison(fail=True).rows)
    assert ref.columns == list(RECORDS)
    assert ref.rows == ["d2l  shapes", "d2l  logits", "paper  shapes", "paper  logits"] and ref.groups == [0, 2]
    assert ref.values[3].tolist() == [1.0, 3.5, 0.01] and ref.values[0].tolist() == [0.0, 0.0, 0.0]
    assert "FAIL" in ref.details[3][1] and "3.5 of its bound" in ref.details[3][1]
    assert pairs.rows == pairs.columns == list(RECORDS)
    assert pairs.values[1, 0] == 0.5 and math.isnan(pairs.values[0, 1])  # the worst variant; lower triangle only
    assert "worst paper logits" in pairs.details[1][0]


def test_the_html_page_colours_every_cell_and_is_self_contained():
    page = heatmap.page(_comparison(fail=True).rows, title="t", summary="s")
    assert f'background:{heatmap.OVER};color:#ffffff" title="FAIL: measured 3.5e-07, 3.5 of its bound' in page
    assert page.count(f"<td style=\"background:{heatmap.OVER}") == 1
    assert page.count("<tr") == 2 + 4 + 3  # two header rows, four check rows, three record rows
    assert "<script" not in page and not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "url(" not in page


def test_report_writes_markdown_tables_the_heatmap_and_the_page_beside_it(tmp_path):
    pytest.importorskip("matplotlib")
    written = matrix.write_report(_comparison(fail=True), tmp_path / "m.md")
    assert sorted(p.name for p in written) == ["m.html", "m.md", "m.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.html", "m.md", "m.png"]  # no temporary left
    md = (tmp_path / "m.md").read_text()
    assert md.startswith("# Conformance matrix\n\n![") and "](m.png)" in md and "[m.html](m.html)" in md
    assert "```\nProvenance" not in md and max(len(line) for line in md.splitlines()) < 400
    assert "### paper\n\n| record | shapes | logits |\n|---|---|---|\n" in md
    assert "| jax/eager | ok | **FAIL** 3.5e-07 (3.5) |" in md
    assert "| torch/eager | mxnet/eager | ok 5.0e-08 (0.5) |" in md  # record against record: a row per pair
    # gpu/report.py reads the verdict line and the failures from the report
    assert re.search(r"^\d+ passed, 1 failed", md, re.M)
    fails = [line.strip() for line in md.splitlines() if line.strip().startswith("FAIL ")]
    assert fails == ["FAIL paper logits [jax/eager vs reference]: 3.5e-07 (3.5 x its bound) worst: "
                     "final/conv.weight [records/jax.safetensors]"]
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _red_pixels(path: Path) -> int:
    from matplotlib import image

    pixels = (image.imread(path)[..., :3] * 255).round()
    return int((abs(pixels - heatmap.rgb(heatmap.OVER)).sum(axis=-1) < 3).sum())


def test_a_failed_check_is_a_red_cell_in_the_picture(tmp_path):
    pytest.importorskip("matplotlib")
    heatmap.write_png(_comparison(fail=False).rows, tmp_path / "pass.png")
    heatmap.write_png(_comparison(fail=True).rows, tmp_path / "fail.png")
    passing, failing = _red_pixels(tmp_path / "pass.png"), _red_pixels(tmp_path / "fail.png")
    assert failing > passing + 500, (passing, failing)  # a whole cell, beyond the colour scale's red tip


def test_the_committed_matrix_comes_back_from_its_json_and_renders_as_before():
    """records/matrix.json read back gives the same rows, and render() of them is the committed text form
    (the comparison itself is not run again)."""
    doc = json.loads((ROOT / "records" / "matrix.json").read_text())
    result = matrix.from_json(doc)
    assert matrix.to_json(result)["checks"] == doc["checks"]
    assert result.passed == doc["passed"] and result.numeric_checks == doc["numeric_checks"]
    md = matrix.markdown(result, image="matrix.png")
    variants = list(dict.fromkeys(c["variant"] for c in doc["checks"] if c["against"] == "reference"))
    assert [line[4:] for line in md.splitlines() if line.startswith("### ")][:len(variants)] == variants
    assert matrix.verdict(result) in md and matrix.verdict(result) in matrix.render(result)
