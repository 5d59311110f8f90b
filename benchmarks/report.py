"""A result file as a Markdown table and as a bar plot of images per second per backend and mode.

    python -m benchmarks.report benchmarks/results/<file>.json     (writes <file>.md and <file>.png)

Each bar is the median over the timed windows, with the slowest and the fastest window as its error
bar; a result too noisy to trust (SPREAD_LIMIT, or a machine busier than its CPUs: busy) is marked as
such in the table and in the plot, with the reason. Re-rendering reads the JSON only: nothing is run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import tables
from common.fsio import atomic_path, atomic_write_text

MIB = 2 ** 20
COLUMNS = ("backend", "mode", "batch", "precision", "compile", "devices", "status", "images/s", "scaling", "spread",
           "trust", "first step s", "peak MiB", "predicted MiB", "TFLOP/s", "of peak", "roofline images/s",
           "timing check")
# The spread is (max - min) / median of the windows' images per second. On a quiet machine a CPU run's
# spread stays under 8% (benchmarks/results/amd-epyc-zen2-20261204.md: 16 configurations, 1.1% to 7.8%).
# Past 10% the windows disagree by more than that noise: something else took the CPUs, or the step does
# not run at a steady rate (recompilation, a cache that does not settle), and the median is no rate to
# compare frameworks by.
SPREAD_LIMIT = 0.10
UNTRUSTED = ("untrusted: the windows' spread is above {limit:.0%} of the median (more than a quiet machine's "
             "noise: the median is no steady rate), or the 1-minute load average before or after the sweep was "
             "above the CPU count (more runnable threads than CPUs: other processes took time from the windows)")


def busy(doc: dict) -> str | None:
    """Why the whole run is untrustworthy because the machine was busy, or None: the 1-minute load average
    before or after the sweep above the CPU count. Only for CPU runs, whose `device.count` is the CPU
    count (a GPU run records its GPU count there, and its CPU count nowhere)."""
    load, device = doc.get("load_average"), doc.get("device") or {}
    if not load or device.get("kind") != "cpu" or not device.get("count"):
        return None
    worst = max(load["before"][0], load["after"][0])
    return f"load {worst:.2f} > {device['count']} CPUs" if worst > device["count"] else None


def untrusted(result: dict, machine: str | None = None) -> list[str]:
    """The reasons not to trust one measured result (empty when there is none); `machine` is busy(doc)."""
    if result["status"] != "ok":
        return []
    reasons = [machine] if machine else []
    spread = result.get("spread")
    if spread is not None and spread > SPREAD_LIMIT:
        reasons.insert(0, f"spread {spread:.1%} > {SPREAD_LIMIT:.0%}")
    return reasons


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _compile(value) -> str:
    """The compile mode as the table shows it: older results recorded a bool (off / on), today's a mode name."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _trust(r: dict, machine: str | None) -> str:
    if r["status"] != "ok":
        return "–"
    reasons = untrusted(r, machine)
    return f"**untrusted**: {'; '.join(reasons)}" if reasons else "ok"


def _row(r: dict, machine: str | None = None) -> list[str]:
    ok = r["status"] == "ok"
    u = r.get("utilization") or {}
    check = r.get("verify") or {}
    status = r["status"] if ok else f"{r['status']}: {r.get('reason', '')}"[:80]
    return [
        r["backend"], r["mode"], str(r["batch_size"]), r["precision"], _compile(r["compile"]),
        str(r.get("devices") or "–"), status,
        _num(r.get("images_per_second"), ".1f") if ok else "–",
        _num(r.get("scaling_efficiency"), ".0%") if ok else "–",
        _num(r.get("spread"), ".1%") if ok else "–",
        _trust(r, machine),
        _num(r.get("first_step_seconds"), ".2f") if ok else "–",
        _num(r["peak_memory_bytes"] / MIB if r.get("peak_memory_bytes") else None, ".0f"),
        _num(r["predicted_memory_bytes"] / MIB if r.get("predicted_memory_bytes") else None, ".0f"),
        _num(u.get("achieved_tflops"), ".3g") if ok else "–",
        _num(u.get("mfu"), ".1%") if ok else "–",
        _num(u.get("roofline_images_per_second"), ".0f")
        + (f" ({u['roofline_bound']})" if u.get("roofline_bound") else ""),
        f"{check['images_per_second']:.1f} ({check['ratio']:.2f}x)" if check.get("ratio") else check.get("status", "–"),
    ]


PARALLEL = ("devices", "scaling")  # columns of a data-parallel sweep (nin bench --devices) only
NUMBERS = ("batch", "devices", "images/s", "scaling", "spread", "first step s", "peak MiB", "predicted MiB", "TFLOP/s",
           "of peak")


def _shown(results: list[dict]) -> tuple[list[str], list[int]]:
    """(the columns shown, their positions in COLUMNS): the data-parallel ones only when a result has devices."""
    keep = [i for i, c in enumerate(COLUMNS) if c not in PARALLEL or any(r.get("devices") for r in results)]
    return [COLUMNS[i] for i in keep], keep


def table(results: list[dict], machine: str | None = None) -> str:
    """The results as a Markdown table; `machine`: busy(doc), which marks every result of the run."""
    columns, keep = _shown(results)
    return "\n".join(tables.markdown(columns, [[_row(r, machine)[i] for i in keep] for r in results]))


def add_scaling(results: list[dict]) -> None:
    """Each data-parallel result's scaling efficiency: its images per second over N times those of the same
    configuration on 1 device (the training loop both times), where that one was measured."""
    def key(r: dict) -> tuple:
        return tuple(r[k] for k in ("backend", "variant", "mode", "batch_size", "precision", "compile", "device"))

    one = {key(r): r["images_per_second"] for r in results if r.get("devices") == 1 and r["status"] == "ok"}
    for r in results:
        if r.get("devices") and r["status"] == "ok" and key(r) in one:
            r["scaling_efficiency"] = r["images_per_second"] / (r["devices"] * one[key(r)])


def terminal(results: list[dict], machine: str | None = None) -> str:
    """The results for the terminal (what `nin bench` prints): the Markdown table's rows as a rich
    table, numbers right-aligned, an untrusted result's mark in capitals instead of Markdown's bold."""
    columns, keep = _shown(results)
    rows = [[_row(r, machine)[i].replace("**untrusted**", "UNTRUSTED") for i in keep] for r in results]
    return "\n".join(tables.text(columns, rows, right=tuple(i for i, c in enumerate(columns) if c in NUMBERS)))


def _load(doc: dict) -> str:
    """Other processes slow a CPU run down; the 1-minute load average before and after says how busy it was."""
    load = doc.get("load_average")
    return f"; load average (1 min) before / after: {load['before'][0]:.2f} / {load['after'][0]:.2f}" if load else ""


def markdown(doc: dict) -> str:
    d = doc["device"]
    versions = "; ".join(f"{b}: " + ", ".join(f"{k} {v}" for k, v in vs.items() if v)
                         for b, vs in doc["versions"].items())
    s = doc["settings"]
    return "\n".join([
        f"# NiN throughput: `{s['variant']}` on {d['name']}",
        "",
        f"- command: `{doc['command']}`",
        f"- date: {doc['created']}; host: {doc['host']}" + _load(doc),
        f"- device: {d['kind']} {d['name']}" + (f", driver {d['driver']}" if d.get("driver") else "")
        + (f", peak table entry {d['peak']['name']}" if d.get("peak") else ", peak FLOP/s unknown (not in the table)"),
        f"- versions: {versions or '–'}",
        f"- environment: {', '.join(f'{k}={v}' for k, v in doc.get('environment', {}).items()) or '–'}",
        f"- timing: first step alone, {s['warmup']} warm-up steps, then the median of {s['windows']} windows "
        f"of {s['steps']} steps (device synchronised around each); spread = (max - min) / median over windows",
        *([f"- devices: the training loop (loop.py, dropout off) on {s['devices']} data-parallel replicas of each "
           "framework's engine; scaling = images/s / (N x images/s on 1 device)"] if s.get("devices") else []),
        f"- model: {doc['model']['params']:,} parameters, {doc['model']['forward_flops_per_image'] / 1e9:.3f} GFLOP "
        f"forward and {doc['model']['train_flops_per_image'] / 1e9:.3f} GFLOP per training image (common.calc)",
        "",
        table(doc["results"], busy(doc)),
        "",
        f"trust: {UNTRUSTED.format(limit=SPREAD_LIMIT)}. The plot's whiskers run from the slowest window to "
        "the fastest; an untrusted result is hatched there.",
        "",
    ])


def whisker(r: dict) -> tuple[float, float]:
    """(median - slowest window, fastest window - median) in images per second; zeros without windows."""
    rates = r.get("images_per_second_windows") or []
    median = r.get("images_per_second") or 0.0
    return (median - min(rates), max(rates) - median) if rates and r["status"] == "ok" else (0.0, 0.0)


def draw_mode(ax, shown: list[dict], *, colours: dict, machine: str | None) -> None:
    """One mode's bars: the median, the windows' range as an error bar, untrusted results hatched."""
    values = [r.get("images_per_second") or 0.0 for r in shown]
    doubts = [untrusted(r, machine) for r in shown]
    bars = [whisker(r) for r in shown]
    drawn = ax.barh(range(len(shown)), values, color=[colours[r["backend"]] for r in shown],
                    xerr=[[b[0] for b in bars], [b[1] for b in bars]] if shown else None,
                    error_kw={"ecolor": "#333333", "capsize": 3, "elinewidth": 1})
    for patch, doubt in zip(drawn.patches, doubts):
        if doubt:
            patch.set_alpha(0.45)
            patch.set_hatch("//")
    for i, (r, v, d, b) in enumerate(zip(shown, values, doubts, bars)):
        text = f" {v:.1f}" + (f"  untrusted: {'; '.join(d)}" if d else "") if r["status"] == "ok" else " out of memory"
        ax.text(v + b[1], i, text, va="center", fontsize=8, color="#b00020" if d else "black")
    ax.set_yticks(range(len(shown)), [f"{r['backend']} bs{r['batch_size']} {r['precision']} {_compile(r['compile'])}"
                                      + (f" x{r['devices']}" if r.get("devices") else "") for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("images per second (median; whisker: slowest to fastest window)")
    ax.margins(x=0.6 if any(doubts) else 0.2)
    if not shown:
        ax.text(0.5, 0.5, "no measurement", ha="center", transform=ax.transAxes)


def plot(doc: dict, path: str | Path) -> Path | None:
    """Horizontal bars, one panel per mode; returns None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in doc["results"])) or ["train"]
    backends = list(dict.fromkeys(r["backend"] for r in doc["results"]))
    colours = {b: plt.get_cmap("tab10")(i) for i, b in enumerate(backends)}
    rows = max(1, max(sum(r["mode"] == m and r["status"] in ("ok", "oom") for r in doc["results"]) for m in modes))
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 1.6 + 0.4 * rows), squeeze=False)
    machine = busy(doc)
    for ax, mode in zip(axes[0], modes):
        shown = [r for r in doc["results"] if r["mode"] == mode and r["status"] in ("ok", "oom")]
        draw_mode(ax, shown, colours=colours, machine=machine)
        ax.set_title(f"{doc['settings']['variant']}, {mode}")
    fig.suptitle(doc["device"]["name"] + (f" (untrusted: {machine})" if machine else ""), fontsize=10)
    fig.text(0.5, 0.01, f"hatched: untrusted (spread over the windows > {SPREAD_LIMIT:.0%} of the median, or "
             "1-minute load average above the CPU count)", ha="center", fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


def render(json_path: str | Path) -> list[Path]:
    """The .md and .png of a result file written again from its JSON, which is left as it is: nothing
    is measured (the table's and the plot's form changed, not the numbers)."""
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    md = atomic_write_text(json_path.with_suffix(".md"), markdown(doc))
    png = plot(doc, json_path.with_suffix(".png"))
    return [md] + ([png] if png else [])


def write(doc: dict, json_path: str | Path) -> list[Path]:
    """The result file and its .md and .png beside it; returns the paths written."""
    json_path = Path(json_path)
    atomic_write_text(json_path, json.dumps(doc, indent=2) + "\n")
    md = json_path.with_suffix(".md")
    atomic_write_text(md, markdown(doc))
    png = plot(doc, json_path.with_suffix(".png"))
    return [json_path, md] + ([png] if png else [])


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(*render(name))
