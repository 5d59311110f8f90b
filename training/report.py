"""Reading many runs at once: the summary per (variant, backend), and whether the backends agree.

Agreement is a two one-sided tests (TOST) equivalence test on the final test accuracy, in
percentage points: for two backends trained with the same recipe and the same seeds (the same
canonical init and data order; only the dropout masks and the float rounding differ), the
per-seed differences d_s = acc_A(s) - acc_B(s) give a mean and a 90% t confidence interval; the
two agree within +/- margin when that interval lies inside (-margin, +margin), which is TOST at the
5% level. Unpaired runs (different seeds) use Welch's interval instead.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from common import tables

from . import runs
from .recipe import Settings


@dataclass
class Run:
    path: Path
    header: dict
    epochs: list[dict]
    others: list[dict]
    settings: Settings

    @property
    def complete(self) -> bool:
        return len(self.epochs) == self.settings.epochs

    @property
    def diverged(self) -> bool:
        return any(o["type"] == "diverged" for o in self.others) and not self.complete


def find_runs(paths) -> list[Path]:
    """Run directories: each path that holds metrics.jsonl, or every such directory below it."""
    out = []
    for p in map(Path, paths):
        if p.is_file() and p.name == runs.METRICS:
            out.append(p.parent)
        elif (p / runs.METRICS).is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(m.parent for m in p.rglob(runs.METRICS))
            if not found:
                raise runs.RunError(f"{p}: no run below it (no {runs.METRICS})")
            out.extend(found)
        else:
            raise runs.RunError(f"{p}: not a run directory or a metrics file")
    return out


def load_runs(paths) -> list[Run]:
    loaded = []
    for path in find_runs(paths):
        header, epochs, others = runs.read_metrics(path)
        loaded.append(Run(path, header, epochs, others, runs.settings_from(header["settings"], str(path))))
    return loaded


def _median(values):
    return statistics.median(values) if values else math.nan


def summarize(all_runs: list[Run]) -> list[dict]:
    """One row per (variant, backend): seeds, final test accuracy (median, mean, sd, range), losses,
    seconds per epoch and images per second (medians; the first epoch, with compilation, left out
    when there are others)."""
    groups: dict[tuple, list[Run]] = {}
    for r in all_runs:
        groups.setdefault((r.settings.variant, r.settings.backend), []).append(r)
    rows = []
    for (variant, backend), members in groups.items():
        done = [r for r in members if r.complete]
        acc = [100 * r.epochs[-1]["test_accuracy"] for r in done]
        timed = [e for r in done for e in (r.epochs[1:] or r.epochs)]
        rows.append({
            "variant": variant, "backend": backend, "runs": len(members), "complete": len(done),
            "diverged": sum(r.diverged for r in members), "seeds": sorted(r.settings.seed for r in done),
            "accuracy_median": _median(acc), "accuracy_mean": statistics.fmean(acc) if acc else math.nan,
            "accuracy_sd": statistics.stdev(acc) if len(acc) > 1 else math.nan,
            "accuracy_min": min(acc, default=math.nan), "accuracy_max": max(acc, default=math.nan),
            "test_loss_median": _median([r.epochs[-1]["test_loss"] for r in done]),
            "train_loss_median": _median([r.epochs[-1]["train_loss"] for r in done]),
            "seconds_per_epoch": _median([e["train_seconds"] for e in timed]),
            "images_per_second": _median([e["images_per_second"] for e in timed]),
            "device_name": members[0].header["device_name"],
            "versions": members[0].header["versions"],
        })
    return sorted(rows, key=lambda r: (r["variant"], r["backend"]))


def _t_quantile(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def _t_sf(x: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.sf(x, df))


def equivalence(a: dict[int, float], b: dict[int, float], margin: float) -> dict:
    """TOST at the 5% level of |mean(a) - mean(b)| < margin; paired on common seeds when there are
    at least three, else Welch. Values in percentage points."""
    common = sorted(set(a) & set(b))
    if len(common) >= 3:
        d = [a[s] - b[s] for s in common]
        n, mean = len(d), statistics.fmean(d)
        se = statistics.stdev(d) / math.sqrt(n)
        df, kind = n - 1, "paired"
    else:
        xa, xb = list(a.values()), list(b.values())
        if len(xa) < 2 or len(xb) < 2:
            return {"kind": "too few runs", "n": min(len(xa), len(xb))}
        va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
        mean, se = statistics.fmean(xa) - statistics.fmean(xb), math.sqrt(va + vb)
        df = max(1, round((va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1)))) if se else 1
        n, kind = min(len(xa), len(xb)), "welch"
    if se == 0:
        low = high = mean
        p = 0.0 if abs(mean) < margin else 1.0
    else:
        half = _t_quantile(0.95, df) * se
        low, high = mean - half, mean + half
        p = max(_t_sf((mean + margin) / se, df), _t_sf((margin - mean) / se, df))
    return {"kind": kind, "n": n, "mean": mean, "se": se, "ci90": [low, high], "margin": margin,
            "p_tost": p, "equivalent": bool(-margin < low and high < margin)}


def agreement(all_runs: list[Run], margin: float) -> list[dict]:
    """Every pair of backends within each variant: the TOST verdict on final test accuracy."""
    by: dict[tuple, dict[int, float]] = {}
    for r in all_runs:
        if r.complete:
            by.setdefault((r.settings.variant, r.settings.backend), {})[r.settings.seed] = \
                100 * r.epochs[-1]["test_accuracy"]
    rows = []
    for variant in sorted({v for v, _ in by}):
        names = sorted(b for v, b in by if v == variant)
        for x, y in combinations(names, 2):
            rows.append({"variant": variant, "a": x, "b": y,
                         **equivalence(by[(variant, x)], by[(variant, y)], margin)})
    return rows


def pooled_sd(summary: list[dict]) -> float:
    """The seed-to-seed standard deviation of one backend's final accuracy, pooled over the groups."""
    num = sum((r["complete"] - 1) * r["accuracy_sd"] ** 2 for r in summary if r["complete"] > 1)
    den = sum(r["complete"] - 1 for r in summary if r["complete"] > 1)
    return math.sqrt(num / den) if den else math.nan


def _f(x, digits=2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_table(summary: list[dict]) -> tuple[list, list]:
    header = ["variant", "backend", "seeds", "test acc median %", "mean +/- sd", "range", "test loss",
              "train loss", "s/epoch", "img/s"]
    rows = [[r["variant"], r["backend"], f"{r['complete']}/{r['runs']}" + (f" ({r['diverged']} diverged)"
                                                                         if r["diverged"] else ""),
             _f(r["accuracy_median"]), f"{_f(r['accuracy_mean'])} +/- {_f(r['accuracy_sd'])}",
             f"{_f(r['accuracy_min'])}-{_f(r['accuracy_max'])}", _f(r["test_loss_median"], 4),
             _f(r["train_loss_median"], 4), _f(r["seconds_per_epoch"], 1), _f(r["images_per_second"], 1)]
            for r in summary]
    return header, rows


def agreement_table(rows: list[dict]) -> tuple[list, list]:
    header = ["variant", "A", "B", "test", "n", "mean A-B (pp)", "90% CI (pp)", "margin", "p (TOST)", "agree"]
    out = []
    for r in rows:
        if "mean" not in r:
            out.append([r["variant"], r["a"], r["b"], r["kind"], r["n"], "-", "-", "-", "-", "-"])
            continue
        out.append([r["variant"], r["a"], r["b"], r["kind"], r["n"], f"{r['mean']:+.2f}",
                    f"[{r['ci90'][0]:+.2f}, {r['ci90'][1]:+.2f}]", f"+/-{r['margin']:g}", f"{r['p_tost']:.3f}",
                    "yes" if r["equivalent"] else "no"])
    return header, out


def text(all_runs: list[Run], margin: float) -> str:
    s = summarize(all_runs)
    lines = tables.text(*summary_table(s), right=(3, 6, 7, 8, 9))
    pairs = agreement(all_runs, margin)
    if pairs:
        lines += ["", f"Agreement of final test accuracy (TOST, 5% level, margin +/-{margin:g} pp; "
                      f"pooled seed-to-seed sd {_f(pooled_sd(s))} pp):"]
        lines += tables.text(*agreement_table(pairs))
    return "\n".join(lines)


def markdown(all_runs: list[Run], margin: float, *, title: str, command: str) -> str:
    """The committed report: the tables, then the device, versions, every setting and the command."""
    s = summarize(all_runs)
    out = [f"# {title}", "", *tables.markdown(*summary_table(s)), ""]
    pairs = agreement(all_runs, margin)
    if pairs:
        out += [f"Agreement of the final test accuracy between backends: two one-sided tests at the 5% level "
                f"with margin +/-{margin:g} percentage points, paired on seeds (same canonical init and data "
                f"order). Pooled seed-to-seed standard deviation of one backend: {_f(pooled_sd(s))} pp.", "",
                *tables.markdown(*agreement_table(pairs)), ""]
    first = all_runs[0]
    varying = {k for k in first.settings.to_dict() if len({getattr(r.settings, k) for r in all_runs}) > 1}
    shared = {k: v for k, v in first.settings.to_dict().items() if k not in varying}
    out += ["## Settings", "", "Shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()) + ".",
            "", "Varying: " + (", ".join(f"`{k}`" for k in sorted(varying)) or "nothing") + ".", "",
            "| backend | device | versions |", "|---|---|---|"]
    seen = set()
    for r in all_runs:
        if r.settings.backend not in seen:
            seen.add(r.settings.backend)
            versions = ", ".join(f"{k} {v}" for k, v in r.header["versions"].items() if v not in ("None", ""))
            out.append(f"| {r.settings.backend} | {r.header['device']} ({r.header['device_name']}) | {versions} |")
    out += ["", f"Host: {first.header.get('host', '?')}, {first.header.get('platform', '?')}; "
                f"first run started {first.header['created']}.", "", "Command:", "", "```", command, "```", ""]
    return "\n".join(out)


def to_json(all_runs: list[Run], margin: float) -> dict:
    s = summarize(all_runs)
    return {"summary": s, "agreement": agreement(all_runs, margin), "pooled_sd": pooled_sd(s),
            "runs": [{"path": str(r.path), "settings": r.settings.to_dict(), "epochs": r.epochs,
                      "complete": r.complete, "diverged": r.diverged} for r in all_runs]}
