"""A result file as a Markdown table and as a bar plot of images per second per backend and mode.

    python -m benchmarks.report benchmarks/results/<file>.json     (writes <file>.md and <file>.png)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import tables
from common.fsio import atomic_path, atomic_write_text

MIB = 2 ** 20
COLUMNS = ("backend", "mode", "batch", "precision", "compile", "status", "images/s", "spread", "first step s",
           "peak MiB", "predicted MiB", "TFLOP/s", "of peak", "roofline images/s", "timing check")


def _num(value, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _row(r: dict) -> list[str]:
    ok = r["status"] == "ok"
    u = r.get("utilization") or {}
    check = r.get("verify") or {}
    status = r["status"] if ok else f"{r['status']}: {r.get('reason', '')}"[:80]
    return [
        r["backend"], r["mode"], str(r["batch_size"]), r["precision"], str(r["compile"]), status,
        _num(r.get("images_per_second"), ".1f") if ok else "–",
        _num(r.get("spread"), ".1%") if ok else "–",
        _num(r.get("first_step_seconds"), ".2f") if ok else "–",
        _num(r["peak_memory_bytes"] / MIB if r.get("peak_memory_bytes") else None, ".0f"),
        _num(r["predicted_memory_bytes"] / MIB if r.get("predicted_memory_bytes") else None, ".0f"),
        _num(u.get("achieved_tflops"), ".3g") if ok else "–",
        _num(u.get("mfu"), ".1%") if ok else "–",
        _num(u.get("roofline_images_per_second"), ".0f")
        + (f" ({u['roofline_bound']})" if u.get("roofline_bound") else ""),
        f"{check['images_per_second']:.1f} ({check['ratio']:.2f}x)" if check.get("ratio") else check.get("status", "–"),
    ]


def table(results: list[dict]) -> str:
    return "\n".join(tables.markdown(COLUMNS, [_row(r) for r in results]))


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
        f"- model: {doc['model']['params']:,} parameters, {doc['model']['forward_flops_per_image'] / 1e9:.3f} GFLOP "
        f"forward and {doc['model']['train_flops_per_image'] / 1e9:.3f} GFLOP per training image (common.calc)",
        "",
        table(doc["results"]),
        "",
    ])


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
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 1 + 0.4 * rows), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        shown = [r for r in doc["results"] if r["mode"] == mode and r["status"] in ("ok", "oom")]
        labels = [f"{r['backend']} bs{r['batch_size']} {r['precision']} {r['compile']}"
                  for r in shown]
        values = [r.get("images_per_second") or 0.0 for r in shown]
        ax.barh(range(len(shown)), values, color=[colours[r["backend"]] for r in shown])
        for i, (r, v) in enumerate(zip(shown, values)):
            ax.text(v, i, f" {v:.1f}" if r["status"] == "ok" else " out of memory", va="center", fontsize=8)
        ax.set_yticks(range(len(shown)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("images per second (median of windows)")
        ax.set_title(f"{doc['settings']['variant']}, {mode}")
        ax.margins(x=0.2)
        if not shown:
            ax.text(0.5, 0.5, "no measurement", ha="center", transform=ax.transAxes)
    fig.suptitle(doc["device"]["name"], fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return Path(path)


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
        print(*write(json.loads(Path(name).read_text()), name)[1:])
