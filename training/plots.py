"""The training plots: runs' curves as d2l draws them, and learning-rate range tests as the literature does.

Curves (`plot_runs`, what `nin plot`, `nin sweep` and `nin report --out` draw): d2l's `train_ch6`
puts train loss, train accuracy and test accuracy on one axes against the epoch. Here too: one axes
per panel, the loss on the left scale, the accuracies in percent on the right; the metric is the line
style, the backend (or, with color_by="variant", the variant) the colour, from the registry's order
(common.backends.BACKENDS; common.spec.VARIANTS for variants) so that a backend keeps its colour in
every figure. Several seeds of one backend are drawn as their median, with a band from the lowest to
the highest seed (test accuracy, measured on few epochs, as points with that range as error bars).
When the other key varies too (variants under color_by="backend"), each of its values gets its own
axes. Whole-epoch ticks; the title wraps.

Range tests (`plot_lr_find`): the loss against the learning rate on a log axis, the raw loss faint
and the smoothed one bold, the suggested rate (the steepest descent of the smoothed loss, before its
minimum) marked and labelled, and the rate where the loss takes off (diverges) shown as a line.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path

from common import backends
from common import spec as specs
from common.fsio import atomic_path

METRICS = (  # (field, legend, line style, marker, right-hand scale in percent)
    ("train_loss", "train loss (left)", "-", None, False),
    ("train_accuracy", "train accuracy (right)", "--", None, True),
    ("test_accuracy", "test accuracy (right)", "-.", "o", True),
)
STYLES = ("-", "--", ":", "-.")  # the range test's variants, when the colour is the backend's
PANEL_WIDTH = 6.4  # inches; a wrapped title fits the figure instead of widening it
TITLE_CHARS_PER_INCH = 13  # at the title's font size (11 pt)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        from common.fsio import OutputError
        raise OutputError("plots need matplotlib (pip install matplotlib, or the 'plot' extra)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return out


def colours(names, color_by: str = "backend") -> dict[str, str]:
    """Each name's colour, in the order of the legend: matplotlib's tab10 by the name's place in the
    registry (common.backends.BACKENDS) or in common.spec.VARIANTS, so that torch, say, has one colour in
    every figure; names neither knows (a JSON spec) take the colours after those, in sorted order."""
    known = list(backends.BACKENDS) if color_by == "backend" else list(specs.VARIANTS)
    names = set(names)
    unknown = sorted(n for n in names if n not in known)
    return {**{n: f"C{i % 10}" for i, n in enumerate(known) if n in names},
            **{n: f"C{(len(known) + i) % 10}" for i, n in enumerate(unknown)}}


def wrap_title(title: str, width_inches: float) -> str:
    return "\n".join(textwrap.wrap(title, max(30, int(width_inches * TITLE_CHARS_PER_INCH)))) if title else ""


def _median(values: list[float]) -> float:
    return statistics.median(values)


def seed_curve(members, field: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(epochs, median, lowest, highest) of `field` over the runs, at every epoch some run measured it
    (accuracies as fractions; test epochs without a test, --eval-every, are left out)."""
    by_epoch: dict[int, list[float]] = {}
    for r in members:
        for e in r.epochs:
            if math.isfinite(e[field]):
                by_epoch.setdefault(e["epoch"], []).append(e[field])
    xs = sorted(by_epoch)
    return (xs, [_median(by_epoch[x]) for x in xs], [min(by_epoch[x]) for x in xs], [max(by_epoch[x]) for x in xs])


def plot_runs(all_runs, out: str | Path, *, color_by: str = "backend", title: str = "") -> Path:
    """Train loss, train accuracy and test accuracy per epoch on one axes (loss left, accuracy in % right),
    one colour per backend (or per variant), the median over seeds with a band for their range; one axes
    per value of the other key."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    plt = _pyplot()
    key = (lambda r: r.settings.backend) if color_by == "backend" else (lambda r: Path(r.settings.variant).stem)
    other = (lambda r: Path(r.settings.variant).stem) if color_by == "backend" else (lambda r: r.settings.backend)
    other_by = "variant" if color_by == "backend" else "backend"
    panels = list(colours({other(r) for r in all_runs}, other_by))
    palette = colours({key(r) for r in all_runs}, color_by)
    names = list(palette)
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_WIDTH * cols, 4.4 * rows), squeeze=False)
    longest = max((e["epoch"] for r in all_runs for e in r.epochs), default=1)
    losses = [e["train_loss"] for r in all_runs for e in r.epochs if math.isfinite(e["train_loss"])
              and e["train_loss"] > 0]
    log_loss = bool(losses) and max(losses) / min(losses) > 20
    banded = False
    for ax, panel in zip(axes.flat, panels):
        acc = ax.twinx()
        for i, name in enumerate(names):
            members = [r for r in all_runs if key(r) == name and other(r) == panel and r.epochs]
            if not members:
                continue
            c = palette[name]
            for field, _, style, marker, percent in METRICS:
                target = acc if percent else ax
                scale = 100 if percent else 1
                xs, med, low, high = seed_curve(members, field)
                if not xs:
                    continue
                med, low, high = ([scale * v for v in vs] for vs in (med, low, high))
                several = len(members) > 1
                if marker:  # measured on few epochs: points, the seeds' range as an error bar, side by side
                    dodge = 0.05 * (i - (len(names) - 1) / 2)
                    target.errorbar([x + dodge for x in xs], med, yerr=[[m - lo for m, lo in zip(med, low)],
                                                   [hi - m for m, hi in zip(med, high)]] if several else None,
                                    color=c, linestyle=style if len(xs) > 1 else "none", marker=marker,
                                    markersize=5, capsize=3, linewidth=1.4)
                else:
                    target.plot(xs, med, style, color=c, linewidth=1.8)
                    if several:
                        target.fill_between(xs, low, high, color=c, alpha=0.18, linewidth=0)
                banded = banded or several
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" + (" (log scale)" if log_loss else ""))
        acc.set_ylabel("accuracy")
        acc.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
        if log_loss:
            ax.set_yscale("log")
        ax.set_xlim(0.75, longest + 0.25)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if len(panels) > 1:
            ax.set_title(panel, fontsize=10)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = []
    for n in names:
        mine = [r for r in all_runs if key(r) == n]
        seeds = len({r.settings.seed for r in mine})
        unfinished = sum(not r.complete for r in mine)
        handles.append(Line2D([], [], color=palette[n], linewidth=2.5, label=f"{n} ({seeds} seed{'s' * (seeds != 1)}"
                              + (f"; {unfinished} run{'s' * (unfinished != 1)} unfinished)" if unfinished else ")")))
    handles += [Line2D([], [], color="0.3", linestyle=style, marker=marker, label=label)
                for _, label, style, marker, _ in METRICS]
    if banded:
        handles.append(Patch(color="0.3", alpha=0.18, label="median over seeds; band, bars: lowest to highest"))
    if title:
        fig.suptitle(wrap_title(title, PANEL_WIDTH * cols), fontsize=11)
    fig.tight_layout()
    fig.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0), ncol=min(4, cols + 2),
               frameon=False)
    out = _save(fig, Path(out))
    plt.close(fig)
    return out


# --- the learning-rate range test ---------------------------------------------------------------
def _suggestion(r: dict) -> tuple[float | None, str]:
    """(the suggested rate, or None, and why): the steepest descent of the smoothed loss before its
    minimum (training.cli.analyse_range_test), when the loss did come down from ln 10."""
    if r.get("suggested_lr"):
        return r["suggested_lr"], f"suggested {r['suggested_lr']:.3g} (steepest descent)"
    if not r.get("steepest_lr"):
        return None, "no rate suggested: no descent before the minimum"
    return None, "no rate suggested: the loss never fell 0.1 below ln 10 (it did not start learning)"


def plot_lr_find(results: list[dict], out: str | Path, *, title: str = "") -> Path:
    """Loss against learning rate on a log axis, one colour per backend and variant: the raw loss faint,
    the smoothed loss (the bias-corrected moving average) bold, the suggested rate as a dot and the
    divergence as a dotted vertical line, both with their values in the legend (and beside the curve
    when there is one curve). A probe that holds one rate (--rates) is drawn against the step instead,
    an x where the network died. What has no suggestion or no divergence says why under the plot."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    variants = sorted({r["variant"] for r in results})
    held = all(r["min_lr"] is not None and r["lrs"][0] == r["lrs"][-1] for r in results)
    palette = colours({x["backend"] for x in results}) if len({x["backend"] for x in results}) > 1 else {}
    alone = len(results) == 1
    notes, marks = [], False
    for i, r in enumerate(results):
        c = palette.get(r["backend"], f"C{i % 10}")
        xs = list(range(1, len(r["smoothed"]) + 1)) if held else r["lrs"]
        label = f"{r['backend']} / {Path(r['variant']).stem}"
        style = STYLES[variants.index(r["variant"]) % len(STYLES)] if palette else "-"
        raw = [v if math.isfinite(v) else math.nan for v in r["losses"]]
        ax.plot(xs[:len(raw)], raw, color=c, linewidth=0.7, alpha=0.3)
        if held:
            s = r["settings"]
            label += f", lr {r['lrs'][0]:g}, seed {s['seed']}, batch {s['batch_size']}" + (
                f", momentum {s['momentum']:g}" if s["optimizer"] == "momentum" else ", sgd")
            ax.plot(xs, r["smoothed"], style, color=c, label=label, linewidth=1.8)
            if r.get("dies_at_step"):
                ax.plot([r["dies_at_step"]], [math.log(10)], "x", color=c, markersize=9)
            continue
        lr, why = _suggestion(r)
        blowup = r.get("blowup_lr")
        found = ([f"suggested {lr:.3g}"] if lr is not None else []) + ([f"diverges at {blowup:.3g}"] if blowup else [])
        ax.plot(xs, r["smoothed"], style, color=c, linewidth=1.8,
                label=label + (": " + ", ".join(found) if found else ""))
        if lr is not None:
            j = r["lrs"].index(lr)
            ax.plot([lr], [r["smoothed"][j]], "o", color=c, markersize=8, markeredgecolor="black", zorder=5)
            if alone:
                ax.annotate(f"suggested lr {lr:.3g}\n(steepest descent)", (lr, r["smoothed"][j]), xytext=(-12, -30),
                            textcoords="offset points", ha="right", fontsize=8, color=c,
                            arrowprops={"arrowstyle": "-", "color": c, "linewidth": 0.8})
        else:
            notes.append(f"{label}: {why}")
        if blowup:
            ax.axvline(blowup, color=c, linestyle=":", linewidth=1.4)
            if alone:
                ax.annotate(f"diverges at {blowup:.3g}", (blowup, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(-3, -8), textcoords="offset points", rotation=90, va="top", ha="right",
                            fontsize=8, color=c)
        else:
            notes.append(f"{label}: no divergence up to lr {r['lrs'][-1]:.3g} (the smoothed loss never passed "
                         f"{r.get('blowup_limit', math.nan):.3g})")
        marks = marks or lr is not None or bool(blowup)
    handles, _ = ax.get_legend_handles_labels()
    if marks:
        handles += [Line2D([], [], color="0.3", marker="o", markeredgecolor="black", linestyle="none",
                           label="suggested: steepest descent of the smoothed loss"),
                    Line2D([], [], color="0.3", linestyle=":",
                           label="divergence: smoothed loss past min(4x its minimum, max(its start, minimum + 0.25))")]
    if not held:
        ax.set_xscale("log")
    ax.set_xlabel("step" if held else "learning rate (log scale)")
    ax.set_ylabel("training loss (faint: each batch; bold: smoothed)")
    ax.axhline(math.log(10), color="gray", linewidth=0.8, linestyle="--")
    ax.annotate("ln 10: uniform prediction" + (" (x: dead from here on)" if held else ""), (0.01, math.log(10)),
                xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    finite = [v for r in results for v in r["smoothed"] if math.isfinite(v)]
    if finite:
        low = min(finite + [v for r in results for v in r["losses"] if math.isfinite(v)])
        high = min(max(finite), max(4 * min(finite), math.log(10) + 0.1), 3 * math.log(10))
        pad = max(0.02, 0.06 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    if notes:
        fig.text(0.01, -0.01, "\n".join(textwrap.fill(n, 120) for n in notes), fontsize=8, va="top", color="0.25")
    if title:
        ax.set_title(wrap_title(title, 8.5), fontsize=11)
    out = _save(fig, Path(out))
    plt.close(fig)
    return out
