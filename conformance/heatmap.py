"""The matrix as pictures: each check's share of its bound, per record, on a log scale, red past 1.

Two grids, from a comparison's rows (conformance.compare.Check):
    against the reference   rows: variant and check; columns: records; a cell is the record's share of
                            the check's bound (measured error / bound: <= 1 passes)
    record against record   rows and columns: records; a cell is the worst share, over every variant and
                            check, of the pair's bound (the sum of both records' bounds)
as a PNG (matplotlib, Agg) and as a self-contained HTML page (inline CSS, no script, nothing fetched),
both coloured by `colour`, so that the two agree cell by cell. A share of 0 (an exact check passed,
identical values) and any share below FLOOR take the floor's colour; a record that does not hold a
variant leaves its cell empty. NumPy only at import: matplotlib is imported when a PNG is drawn, and
its absence (the MXNet environment) only leaves the PNG out.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.fsio import atomic_path, atomic_write_text

from .compare import Check

FLOOR = 1e-4  # shares below this are all "far inside the bound": the scale starts here
# YlGnBu, light to dark: a share far below its bound is pale, one near its bound dark blue
STOPS = ("#ffffd9", "#c7e9b4", "#7fcdbb", "#41b6c4", "#1d91c0", "#225ea8", "#0c2c84")
OVER = "#d7191c"  # past the bound: the check failed
EMPTY = "#f2f2f2"  # the record does not hold this variant, or no such pair
LEGEND = (f"Each cell: measured error / its bound on a log scale from {FLOOR:g} (pale) to 1 (dark blue); "
          "red past 1 (the check failed); grey: not compared.")


@dataclass
class Grid:
    """A heatmap's data: values[i][j] is a share of a bound, or NaN where nothing was compared."""
    title: str
    rows: list[str]
    columns: list[str]
    values: np.ndarray
    details: list[list[str]]  # what a cell's tooltip says
    groups: list[int]  # row indices where a new group (variant) starts, for the separators


def _vs_reference(rows: list[Check]) -> Grid:
    own = [r for r in rows if r.against in ("reference", "spec")]
    keys = list(dict.fromkeys((r.variant, r.check) for r in own))
    columns = list(dict.fromkeys(r.backend for r in own))
    values = np.full((len(keys), len(columns)), np.nan)
    details = [["" for _ in columns] for _ in keys]
    index = {k: i for i, k in enumerate(keys)}
    for r in own:
        i, j = index[(r.variant, r.check)], columns.index(r.backend)
        values[i, j] = r.ratio
        details[i][j] = _detail(r)
    groups = [i for i, k in enumerate(keys) if i == 0 or k[0] != keys[i - 1][0]]
    return Grid("Against the float64 reference and the spec: each record's share of each check's bound",
                [f"{v}  {c}" for v, c in keys], columns, values, details, groups)


def _pairs(rows: list[Check]) -> Grid | None:
    pairs = [r for r in rows if r.against not in ("reference", "spec", "-")]
    if not pairs:
        return None
    labels = list(dict.fromkeys(x for r in pairs for x in (r.backend, r.against)))
    values = np.full((len(labels), len(labels)), np.nan)
    worst: dict[tuple[int, int], Check] = {}
    for r in pairs:
        i, j = sorted((labels.index(r.backend), labels.index(r.against)), reverse=True)  # lower triangle
        if (i, j) not in worst or r.ratio > worst[(i, j)].ratio:
            worst[(i, j)] = r
    details = [["" for _ in labels] for _ in labels]
    for (i, j), r in worst.items():
        values[i, j] = r.ratio
        details[i][j] = f"{r.backend} ~ {r.against}: worst {r.variant} {r.check}; {_detail(r)}"
    return Grid("Record against record: the worst share of the pair's bound over every variant and check",
                labels, labels, values, details, [])


def grids(rows: list[Check]) -> list[Grid]:
    """The heatmaps of a comparison's rows: against the reference, then record against record."""
    out = [_vs_reference(rows)]
    pair = _pairs(rows)
    return out + ([pair] if pair else [])


def _detail(r: Check) -> str:
    measured = "" if r.measured is None else f"measured {r.measured:.3g}, "
    return f"{'ok' if r.passed else 'FAIL'}: {measured}{share(r.ratio)} of its bound" + (
        f"; {r.detail}" if r.detail else "")


def share(ratio: float) -> str:
    """A share of a bound as the cells print it."""
    return "inf" if not math.isfinite(ratio) else "0" if ratio == 0 else f"{ratio:.2g}"


def position(ratio: float) -> float:
    """Where a share sits on the colour scale, 0 (FLOOR and below) to 1 (the bound)."""
    return float(np.clip((math.log10(max(ratio, FLOOR)) - math.log10(FLOOR)) / -math.log10(FLOOR), 0.0, 1.0))


def rgb(hex_colour: str) -> tuple[int, int, int]:
    """"#rrggbb" as (r, g, b), 0 to 255."""
    return tuple(int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))


def colour(ratio: float) -> str:
    """The cell colour of a share of a bound: STOPS on a log scale from FLOOR to 1, OVER past 1, EMPTY
    for NaN (not compared)."""
    if isinstance(ratio, float) and math.isnan(ratio):
        return EMPTY
    if ratio > 1:
        return OVER
    x = position(ratio) * (len(STOPS) - 1)
    k = min(int(x), len(STOPS) - 2)
    a, b = rgb(STOPS[k]), rgb(STOPS[k + 1])
    mixed = [round(p + (q - p) * (x - k)) for p, q in zip(a, b)]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def ink(ratio: float) -> str:
    """Text colour that reads on colour(ratio)."""
    return "#ffffff" if (not math.isnan(ratio) and (ratio > 1 or position(ratio) > 0.55)) else "#1f2328"


# --- PNG -----------------------------------------------------------------------------------------
def _rgb_image(grid: Grid) -> np.ndarray:
    return np.array([[rgb(colour(v)) for v in row] for row in grid.values], dtype=np.uint8).reshape(
        len(grid.rows), len(grid.columns), 3)


def _draw(ax, grid: Grid, *, fontsize: float) -> None:
    """One grid as coloured cells, its labels, the variants' separators, and the share of every failed cell."""
    ax.imshow(_rgb_image(grid), aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(grid.rows)), grid.rows, fontsize=fontsize)
    ax.tick_params(length=0)
    for g in grid.groups[1:]:
        ax.axhline(g - 0.5, color="#1f2328", linewidth=0.8)
    for i, j in zip(*np.nonzero(np.nan_to_num(grid.values, nan=0.0) > 1)):
        ax.text(j, i, share(grid.values[i, j]), ha="center", va="center", fontsize=fontsize - 1, color="white")
    ax.set_title(grid.title, fontsize=fontsize + 2, loc="left", wrap=True)


def _scale(fig, cax) -> None:
    """The colour scale: log from FLOOR to 1, the red of a failure past it."""
    from matplotlib import cm, colors

    cmap = colors.ListedColormap([colour(10 ** x) for x in np.linspace(math.log10(FLOOR), 0, 256)]).with_extremes(
        over=OVER)
    bar = fig.colorbar(cm.ScalarMappable(colors.LogNorm(FLOOR, 1), cmap), cax=cax, extend="max",
                       orientation="horizontal")
    bar.set_label(f"share of the bound (log scale; <= {FLOOR:g} drawn as {FLOOR:g}; red: past 1, failed)",
                  fontsize=9)


def write_png(rows: list[Check], path: str | Path, *, title: str = "") -> Path | None:
    """Both heatmaps side by side with their colour scale, as PNG (atomically); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = grids(rows)
    tall = max(len(g.rows) for g in shown)
    fig = plt.figure(figsize=(5 + 6 * len(shown), 4.5 + 0.17 * tall), layout="constrained")
    spec = fig.add_gridspec(2, len(shown), height_ratios=(0.17 * tall + 2.2, 0.25),
                            width_ratios=[max(len(g.columns), 8) for g in shown])
    for k, grid in enumerate(shown):
        _draw(fig.add_subplot(spec[0, k]), grid, fontsize=7)
    _scale(fig, fig.add_subplot(spec[1, :]))
    fig.suptitle(title or "Conformance matrix", fontsize=11, x=0.01, ha="left")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


# --- HTML ----------------------------------------------------------------------------------------
CSS = """
body { margin: 0 auto; padding: 0 12px 2em; max-width: 1880px; color: #1f2328; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.4em; margin: 0.8em 0 0.3em; }
h2 { font-size: 1.1em; margin: 1.4em 0 0.4em; }
.scroll { overflow-x: auto; max-width: 100%; }
table.hm { border-collapse: collapse; font: 10px/1.2 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
table.hm th { font-weight: normal; white-space: nowrap; padding: 1px 6px 1px 2px; text-align: right; }
table.hm thead th { vertical-align: bottom; text-align: left; padding: 2px 0; }
table.hm thead th span { writing-mode: vertical-rl; transform: rotate(180deg); display: inline-block; }
table.hm td { min-width: 3.6em; height: 1.5em; padding: 0 2px; text-align: center; border: 1px solid #fff; }
table.hm tr.group > * { border-top: 2px solid #1f2328; }
.scale { display: inline-flex; vertical-align: middle; margin: 0 0.4em; border: 1px solid #d0d7de; }
.scale span { display: inline-block; padding: 1px 6px; font-size: 11px; }
"""


def _cell(value: float, detail: str) -> str:
    if math.isnan(value):
        return f'<td style="background:{EMPTY}"></td>'
    return (f'<td style="background:{colour(value)};color:{ink(value)}" title="{html.escape(detail)}">'
            f"{share(value)}</td>")


def _table(grid: Grid) -> list[str]:
    """One grid as an HTML table: a row per check (or record), a column per record."""
    out = ['<div class="scroll">', '<table class="hm">', "<thead><tr><th></th>"]
    out += [f"<th><span>{html.escape(c)}</span></th>" for c in grid.columns]
    out += ["</tr></thead>", "<tbody>"]
    for i, label in enumerate(grid.rows):
        cells = "".join(_cell(float(grid.values[i, j]), grid.details[i][j]) for j in range(len(grid.columns)))
        group = ' class="group"' if i in grid.groups[1:] else ""
        out.append(f"<tr{group}><th>{html.escape(label)}</th>{cells}</tr>")
    return out + ["</tbody>", "</table>", "</div>"]


def _scale_html() -> str:
    steps = [FLOOR * 10 ** k for k in range(int(round(-math.log10(FLOOR))) + 1)] + [2.0]
    spans = "".join(f'<span style="background:{colour(v)};color:{ink(v)}">{"> 1" if v > 1 else f"{v:g}"}</span>'
                    for v in steps)
    return f'<span class="scale">{spans}</span>'


def page(rows: list[Check], *, title: str, summary: str = "", image: str = "") -> str:
    """The heatmaps as one self-contained HTML page: inline CSS, no script, nothing fetched. Each cell
    prints its share and names the check's detail in its tooltip."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", "<style>", CSS.strip(), "</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>"]
    if summary:
        out.append(f"<p>{html.escape(summary)}</p>")
    out.append(f"<p>{html.escape(LEGEND)} {_scale_html()}</p>")
    if image:
        out.append(f'<p>The same as a picture: <a href="{html.escape(image)}">{html.escape(image)}</a>.</p>')
    for grid in grids(rows):
        out += [f"<h2>{html.escape(grid.title)}</h2>"] + _table(grid)
    return "\n".join(out + ["</body>", "</html>"]) + "\n"


def write_html(rows: list[Check], path: str | Path, **text) -> Path:
    """page(rows, **text), written atomically."""
    return atomic_write_text(path, page(rows, **text))
