"""The training plots: runs' curves overlaid (one colour per backend, or per variant), and LR range tests."""

from __future__ import annotations

import math
from pathlib import Path

from common.fsio import atomic_path

COLORS = {"mxnet": "tab:blue", "torch": "tab:orange", "keras-tf": "tab:green", "jax": "tab:red",
          "keras-jax": "tab:purple", "keras-torch": "tab:brown"}
OTHER_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                "tab:gray", "tab:olive", "tab:cyan")
STYLES = ("-", "--", ":", "-.")


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


def plot_runs(all_runs, out: str | Path, *, color_by: str = "backend", title: str = "") -> Path:
    """Train loss, test loss and test accuracy per epoch; colour by backend (or variant), line style by
    the other; every seed drawn thin, the median over seeds drawn bold."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    keys = sorted({(r.settings.backend, r.settings.variant) for r in all_runs})
    colour_keys = sorted({k[0] if color_by == "backend" else k[1] for k in keys})
    style_keys = sorted({k[1] if color_by == "backend" else k[0] for k in keys})
    panels = (("train_loss", "train loss"), ("test_loss", "test loss"), ("test_accuracy", "test accuracy"))
    for backend, variant in keys:
        ckey, skey = (backend, variant) if color_by == "backend" else (variant, backend)
        colour = COLORS.get(ckey) if color_by == "backend" else None
        colour = colour or OTHER_COLORS[colour_keys.index(ckey) % len(OTHER_COLORS)]
        style = STYLES[style_keys.index(skey) % len(STYLES)]
        members = [r for r in all_runs if (r.settings.backend, r.settings.variant) == (backend, variant) and r.epochs]
        label = f"{ckey}" + (f" / {skey}" if len(style_keys) > 1 else "") + f" ({len(members)} run"
        label += "s)" if len(members) != 1 else ")"
        for ax, (field, _) in zip(axes, panels):
            marker = "o" if any(not math.isfinite(e[field]) for r in members for e in r.epochs) else None
            for r in members:  # epochs without a test (--eval-every) are left out
                xs, ys = zip(*[(e["epoch"], e[field]) for e in r.epochs if math.isfinite(e[field])] or [((), ())])
                ax.plot(xs, ys, style, color=colour, alpha=0.35 if len(members) > 1 else 0.9, linewidth=0.9,
                        marker=marker, markersize=3)
            longest = max((len(r.epochs) for r in members), default=0)
            xs, med = [], []
            for i in range(longest):
                vals = sorted(r.epochs[i][field] for r in members if len(r.epochs) > i
                              and math.isfinite(r.epochs[i][field]))
                if vals:
                    xs.append(i + 1)
                    med.append(vals[len(vals) // 2] if len(vals) % 2 else 0.5 * (vals[len(vals) // 2 - 1] +
                                                                                 vals[len(vals) // 2]))
            if len(members) > 1 or field == panels[0][0]:
                ax.plot(xs, med, style, color=colour, linewidth=2.2, marker=marker,
                        label=label if field == panels[0][0] else None)
    for ax, (field, name) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if field.endswith("loss"):
            finite = [e[field] for r in all_runs for e in r.epochs if math.isfinite(e[field]) and e[field] > 0]
            if finite and max(finite) / min(finite) > 20:
                ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    out = _save(fig, Path(out))
    plt.close(fig)
    return out


def plot_lr_find(results: list[dict], out: str | Path, *, title: str = "") -> Path:
    """Loss against learning rate (log scale), one curve per backend and variant, smoothed as the test
    smooths it, a dot at each curve's steepest descent; a probe that holds one rate is drawn against
    the step instead."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    variants = sorted({r["variant"] for r in results})
    held = all(r["min_lr"] is not None and r["lrs"][0] == r["lrs"][-1] for r in results)
    for i, r in enumerate(results):
        colour = COLORS.get(r["backend"], "black") if len({x["backend"] for x in results}) > 1 else \
            OTHER_COLORS[sorted({x["lrs"][0] for x in results}).index(r["lrs"][0]) % len(OTHER_COLORS)] if held \
            else OTHER_COLORS[i % len(OTHER_COLORS)]
        style = STYLES[variants.index(r["variant"]) % len(STYLES)]
        xs = list(range(1, len(r["smoothed"]) + 1)) if held else r["lrs"]
        label = f"{r['backend']} / {Path(r['variant']).stem}"
        if held:
            s = r["settings"]
            label += f", lr {r['lrs'][0]:g}, seed {s['seed']}, batch {s['batch_size']}" + (
                f", momentum {s['momentum']:g}" if s["optimizer"] == "momentum" else ", sgd")
        ax.plot(xs, r["smoothed"], style, color=colour, label=label, linewidth=1.2)
        if not held and r.get("steepest_lr"):
            j = r["lrs"].index(r["steepest_lr"])
            ax.plot([r["steepest_lr"]], [r["smoothed"][j]], "o", color=colour)
        if held and r.get("dies_at_step"):
            ax.plot([r["dies_at_step"]], [math.log(10)], "x", color=colour, markersize=9)
    if not held:
        ax.set_xscale("log")
    ax.set_xlabel("step" if held else "learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.axhline(math.log(10), color="gray", linewidth=0.8, linestyle=":")
    ax.annotate("ln 10: uniform prediction" + (" (x: dead from here on)" if held else ""), (0.01, math.log(10)),
                xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    finite = [v for r in results for v in r["smoothed"] if math.isfinite(v)]
    if finite:
        low, high = min(finite), min(max(finite), 3 * math.log(10))
        pad = max(0.02, 0.05 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    if title:
        ax.set_title(title)
    out = _save(fig, Path(out))
    plt.close(fig)
    return out
