"""Reading many runs at once: the summary per (variant, backend), and whether the backends agree.

Agreement is a two one-sided tests (TOST) equivalence test on the final test accuracy, in
percentage points: for two backends trained with the same recipe and the same seeds (the same
canonical init and data order; only the dropout masks and the float rounding differ), the
per-seed differences d_s = acc_A(s) - acc_B(s) give a mean and a 90% t confidence interval; the
two agree within +/- margin when both one-sided tests reject, which at the 5% level is that
interval lying inside (-margin, +margin). Unpaired runs (different seeds) use Welch's interval.

Done as a test must be (issue 22):
- the margin is fixed before the runs: `nin sweep --margin` writes it into the command that every
  run's header keeps (preset_margin reads it back); a margin given only to `nin report` is reported
  as chosen after the runs;
- the pairs of one variant are a family: Holm's step-down correction keeps the chance of calling
  any truly different pair equivalent at 5% (holm);
- the number of seeds comes from a power calculation on the measured seed-to-seed spread
  (tost_power, seeds_needed, power_plan), for every registered backend (Keras on JAX and on PyTorch
  included), and the report states the power its own runs had.
"""

from __future__ import annotations

import math
import shlex
import statistics
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from common import backends, tables

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


ALPHA = 0.05  # family-wise, over the pairs of backends of one variant
POWER_TARGET = 0.8  # the chance, per pair, to show truly identical backends equivalent
DEFAULT_MARGIN = 0.5  # pp: the chapter's question (issue 22); `nin sweep --margin` fixes it before the runs


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (a pair is declared at family-wise level alpha when its adjusted
    p is below alpha): the k-th smallest p times (m - k + 1), made non-decreasing, at most 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def agreement(all_runs: list[Run], margin: float, alpha: float = ALPHA) -> list[dict]:
    """Every pair of backends within each variant: the TOST on final test accuracy ("equivalent": the
    pair on its own at 5%), and Holm's correction over the variant's pairs ("p_holm"; "verdict":
    "agree" when p_holm <= alpha, else "inconclusive")."""
    by: dict[tuple, dict[int, float]] = {}
    for r in all_runs:
        if r.complete:
            by.setdefault((r.settings.variant, r.settings.backend), {})[r.settings.seed] = \
                100 * r.epochs[-1]["test_accuracy"]
    rows = []
    for variant in sorted({v for v, _ in by}):
        names = order([b for v, b in by if v == variant])
        family = [{"variant": variant, "a": x, "b": y, **equivalence(by[(variant, x)], by[(variant, y)], margin)}
                  for x, y in combinations(names, 2)]
        tested = [r for r in family if "p_tost" in r]
        for r, p in zip(tested, holm([r["p_tost"] for r in tested])):
            r.update(pairs=len(tested), p_holm=p, verdict="agree" if p <= alpha else "inconclusive")
        for r in family:
            r.setdefault("verdict", "inconclusive")
        rows += family
    return rows


def order(names) -> list[str]:
    """Backend names in the registry's order (common.backends.BACKENDS), unknown ones after, sorted."""
    known = list(backends.BACKENDS)
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


# --- the margin, fixed before the runs ------------------------------------------------------------
def margin_in(command: str) -> float | None:
    """The --margin a command line gives (the last one, as argparse takes it), or None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    found = None
    for i, w in enumerate(words):
        text = w.split("=", 1)[1] if w.startswith("--margin=") else words[i + 1] if w == "--margin" and \
            i + 1 < len(words) else None
        if text is not None:
            try:
                found = float(text)
            except ValueError:
                return None
    return found


def preset_margin(all_runs: list[Run]) -> float | None:
    """The equivalence margin the runs were started with (`nin sweep --margin`, kept in the command of
    each run's header), or None when no run carries one. Runs that carry different margins, or some a
    margin and some none, are a RunError: one comparison has one margin, fixed before any of its runs."""
    found = {r.path: margin_in(r.header.get("command", "")) for r in all_runs}
    values = set(found.values())
    if values == {None}:
        return None
    if len(values) > 1:
        shown = "; ".join(f"{p}: {'none' if m is None else f'+/-{m:g}'}" for p, m in sorted(found.items())[:6])
        raise runs.RunError(f"the runs were started with different equivalence margins ({shown}); compare runs "
                            "of one sweep, whose margin was fixed before they started")
    return values.pop()


def resolve_margin(all_runs: list[Run], given: float | None) -> dict:
    """{"value", "preset", "source"}: the runs' pre-set margin (a different --margin for the report is a
    RunError: choosing it after seeing the data is what the pre-set margin prevents); else the one given
    to the report, said to be chosen after the runs; else the default, said likewise."""
    preset = preset_margin(all_runs)
    if preset is not None:
        if given is not None and given != preset:
            raise runs.RunError(f"--margin {given:g}: these runs fixed their equivalence margin at +/-{preset:g} pp "
                                "before they started (nin sweep --margin, in each run's header); a margin chosen "
                                "after the runs is not an equivalence test")
        return {"value": preset, "preset": True,
                "source": "fixed before the runs by the `--margin` of `nin sweep`, kept in every run's header"}
    if given is not None:
        return {"value": given, "preset": False,
                "source": "NOT fixed before the runs (their headers carry no margin): given to `nin report` "
                          "(its `--margin`) afterwards"}
    return {"value": DEFAULT_MARGIN, "preset": False,
            "source": "NOT fixed before the runs (their headers carry no margin): the default"}


# --- power: how many seeds -----------------------------------------------------------------------
def tost_power(n: int, sd: float, margin: float, alpha: float, *, delta: float = 0.0) -> float:
    """The exact power of the paired TOST at level alpha (each one-sided test) with n pairs whose
    differences are N(delta, sd^2): the chance that the 1 - 2 alpha t interval of the mean lies inside
    (-margin, margin). Given the sample sd s, the mean must fall in (-margin + c s, margin - c s),
    c = t(1 - alpha, n - 1) / sqrt(n); integrated over s's chi distribution."""
    from scipy import integrate, stats

    if n < 2 or not sd > 0:  # NaN too: no spread measured
        return math.nan
    df = n - 1
    c = stats.t.ppf(1 - alpha, df) / math.sqrt(n)
    se = sd / math.sqrt(n)
    top = df * (margin / (c * sd)) ** 2  # chi-square beyond which the interval is wider than the margins

    def given(x):
        s = sd * math.sqrt(x / df)
        return max(0.0, stats.norm.cdf((margin - c * s - delta) / se) - stats.norm.cdf((-margin + c * s - delta) / se))

    value, _ = integrate.quad(lambda x: given(x) * stats.chi2.pdf(x, df), 0, top, limit=200)
    return float(min(1.0, max(0.0, value)))


def seeds_needed(sd: float, margin: float, alpha: float, *, target: float = POWER_TARGET, delta: float = 0.0,
                 most: int = 100_000) -> int | None:
    """The fewest seeds (at least 3: the paired test) whose TOST power reaches `target`; None past `most`."""
    if not sd > 0 or abs(delta) >= margin:
        return None
    low, high = 3, 3
    while tost_power(high, sd, margin, alpha, delta=delta) < target:
        low, high = high, high * 2
        if high > most:
            return None
    while low < high:  # power grows with n: bisect
        mid = (low + high) // 2
        low, high = (mid + 1, high) if tost_power(mid, sd, margin, alpha, delta=delta) < target else (low, mid)
    return high


def spread(all_runs: list[Run], margin: float) -> dict:
    """The seed-to-seed spread the runs show, in pp: the sd of one backend's final accuracy (pooled over
    the (variant, backend) groups) and the sd of the paired differences between two backends (pooled
    over the pairs), with their degrees of freedom; `sd` is the larger of the differences' sd and
    sqrt(2) x one backend's (what independent runs would give): the one the power is computed from."""
    one = pooled_sd(summarize(all_runs))
    df_one = sum(max(0, len([r for r in all_runs if r.complete and (r.settings.variant, r.settings.backend) == g]) - 1)
                 for g in {(r.settings.variant, r.settings.backend) for r in all_runs})
    paired = [r for r in agreement(all_runs, margin) if r.get("kind") == "paired"]
    num = sum((r["n"] - 1) * (r["se"] * math.sqrt(r["n"])) ** 2 for r in paired)
    df_d = sum(r["n"] - 1 for r in paired)
    diff = math.sqrt(num / df_d) if df_d else math.nan
    candidates = [x for x in (diff, math.sqrt(2) * one) if math.isfinite(x)]
    return {"sd_one_backend": one, "df_one_backend": df_one, "sd_difference": diff, "df_difference": df_d,
            "sd": max(candidates) if candidates else math.nan}


def power_plan(all_runs: list[Run], margin: float, *, planned: list[str] | None = None, alpha: float = ALPHA,
               target: float = POWER_TARGET) -> dict:
    """The power of these runs, and the seeds a comparison of the `planned` backends (default: every
    registered one) needs: each pair tested at alpha / m (Bonferroni: Holm's first, strictest step, so
    Holm declares at least as many), m the number of pairs, for the chance `target` that truly identical
    backends (difference 0) come out equivalent, and at a true difference of a fifth of the margin."""
    planned = list(planned or backends.BACKENDS)
    m = len(planned) * (len(planned) - 1) // 2
    sp = spread(all_runs, margin)
    sd = sp["sd"]
    present = [r for r in agreement(all_runs, margin) if r.get("kind") == "paired"]
    n_now = min((r["n"] for r in present), default=0)
    m_now = max((r.get("pairs", 0) for r in present), default=0)
    seeds = seeds_needed(sd, margin, alpha / m, target=target)
    wall = {b: statistics.median([sum(e["wall_seconds"] for e in r.epochs) for r in all_runs
                                  if r.complete and r.settings.backend == b]) for b in planned
            if any(r.complete and r.settings.backend == b for r in all_runs)}
    guess = max(wall.values(), default=math.nan)  # a backend not measured: as the slowest that was
    per_seed = sum(wall.get(b, guess) for b in planned)
    return {
        "margin": margin, "alpha": alpha, "target_power": target, **sp,
        "runs": {"seeds": n_now, "pairs": m_now,
                 "power_at_holm_first_step": tost_power(n_now, sd, margin, alpha / max(1, m_now)) if n_now else None,
                 "power_uncorrected": tost_power(n_now, sd, margin, alpha) if n_now else None},
        "plan": {"backends": planned, "pairs": m, "alpha_per_pair": alpha / m,
                 "seeds": seeds,
                 "seeds_if_difference_is_a_fifth_of_the_margin": seeds_needed(sd, margin, alpha / m, target=target,
                                                                              delta=margin / 5),
                 "seeds_uncorrected": seeds_needed(sd, margin, alpha, target=target)},
        "curve": [{"seeds": n, "power": tost_power(n, sd, margin, alpha / m)}
                  for n in (5, 10, 20, 30, 40, 50, 60, 80, 100)],
        "cost": {"seconds_per_run": wall, "not_measured": [b for b in planned if b not in wall],
                 "seconds_per_seed": per_seed, "hours": seeds * per_seed / 3600 if seeds else None},
    }


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
    header = ["variant", "A", "B", "test", "n", "mean A-B (pp)", "90% CI (pp)", "margin", "p (TOST)", "p (Holm)",
              "verdict"]
    out = []
    for r in rows:
        if "mean" not in r:
            out.append([r["variant"], r["a"], r["b"], r["kind"], r["n"], "-", "-", "-", "-", "-", r["verdict"]])
            continue
        out.append([r["variant"], r["a"], r["b"], r["kind"], r["n"], f"{r['mean']:+.2f}",
                    f"[{r['ci90'][0]:+.2f}, {r['ci90'][1]:+.2f}]", f"+/-{r['margin']:g}", f"{r['p_tost']:.3f}",
                    f"{r['p_holm']:.3f}", r["verdict"]])
    return header, out


def _pct(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%" if x >= 0.001 else "<0.1%"


def statement(all_runs: list[Run], margin: dict) -> list[str]:
    """What the agreement report says before its table: the margin and where it came from, the test
    and its correction, the spread measured and the power it gives, the pairs that agree and those
    that are inconclusive. Lines of Markdown-friendly text."""
    pairs = agreement(all_runs, margin["value"])
    plan = power_plan(all_runs, margin["value"])
    now, future = plan["runs"], plan["plan"]
    agree = [f"{r['a']} ~ {r['b']}" + (f" ({r['variant']})" if len({x['variant'] for x in pairs}) > 1 else "")
             for r in pairs if r["verdict"] == "agree"]
    open_ = [f"{r['a']} ~ {r['b']}" + (f" ({r['variant']})" if len({x['variant'] for x in pairs}) > 1 else "")
             for r in pairs if r["verdict"] != "agree"]
    n_seeds = future["seeds"]
    return [
        f"- **Margin**: +/-{margin['value']:g} percentage points of final test accuracy, {margin['source']}.",
        f"- **Test and correction**: two one-sided paired t tests (TOST) per pair of backends; Holm's step-down "
        f"correction over the {now['pairs'] or len(pairs)} pairs of each variant, family-wise level "
        f"{ALPHA:.0%}: a pair agrees when its Holm-adjusted p is at most {ALPHA:g}.",
        f"- **Spread and power**: the seed-to-seed sd of one backend's final accuracy is "
        f"{_f(plan['sd_one_backend'])} pp ({plan['df_one_backend']} df), of the paired difference between two "
        f"backends {_f(plan['sd_difference'])} pp ({plan['df_difference']} df); from the larger, "
        f"{_f(plan['sd'])} pp, these runs' {now['seeds']} seeds give each pair a "
        f"{_pct(now['power_at_holm_first_step'])} chance ({_pct(now['power_uncorrected'])} uncorrected) to show "
        f"truly identical backends equivalent. For {POWER_TARGET:.0%} with all {len(future['backends'])} "
        f"registered backends ({future['pairs']} pairs, each at {ALPHA:g}/{future['pairs']}), "
        + (f"**{n_seeds} seeds** per backend are needed" if n_seeds else "no number of seeds suffices")
        + (f" ({future['seeds_if_difference_is_a_fifth_of_the_margin']} if the backends truly differ by a fifth "
           f"of the margin)." if n_seeds else "."),
        f"- **Agree** ({len(agree)} of {len(pairs)}): {', '.join(agree) or 'none'}.",
        f"- **Inconclusive** ({len(open_)} of {len(pairs)}): {', '.join(open_) or 'none'}"
        + (" (neither shown equivalent nor shown different: too few seeds for this margin)." if open_ else "."),
    ]


def text(all_runs: list[Run], margin: dict) -> str:
    """The terminal report: the summary table, then the agreement (statement() and its table)."""
    s = summarize(all_runs)
    lines = tables.text(*summary_table(s), right=(3, 6, 7, 8, 9))
    pairs = agreement(all_runs, margin["value"])
    if pairs:
        said = [x.replace("**", "") for x in statement(all_runs, margin)]  # Markdown's bold, not the terminal's
        lines += ["", "Agreement of the final test accuracy:", *said, ""]
        lines += tables.text(*agreement_table(pairs), right=(4, 5, 8, 9))
    return "\n".join(lines)


def markdown(all_runs: list[Run], margin: dict, *, title: str, command: str) -> str:
    """The committed report: the tables, then the device, versions, every setting and the command."""
    s = summarize(all_runs)
    out = [f"# {title}", "", *tables.markdown(*summary_table(s)), ""]
    pairs = agreement(all_runs, margin["value"])
    if pairs:
        out += ["## Agreement of the final test accuracy", "", *statement(all_runs, margin), "",
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


def to_json(all_runs: list[Run], margin: dict) -> dict:
    s = summarize(all_runs)
    return {"summary": s, "agreement": agreement(all_runs, margin["value"]), "pooled_sd": pooled_sd(s),
            "margin": margin, "correction": {"method": "holm", "alpha": ALPHA, "family": "the pairs of one variant"},
            "power": power_plan(all_runs, margin["value"]) if len({r.settings.backend for r in all_runs}) > 1 else None,
            "runs": [{"path": str(r.path), "settings": r.settings.to_dict(), "epochs": r.epochs,
                      "complete": r.complete, "diverged": r.diverged} for r in all_runs]}


def power_markdown(plan: dict, *, sources: list[dict], provenance: list[str]) -> str:
    """The committed power calculation: what was measured, from which runs, the formula, the answer."""
    p, now = plan["plan"], plan["runs"]
    out = ["# How many seeds the agreement test needs: a power calculation", "",
           f"Margin +/-{plan['margin']:g} pp of final test accuracy (to be fixed before the runs by the "
           "`--margin` of `nin sweep`); "
           f"{len(p['backends'])} backends ({', '.join(p['backends'])}), {p['pairs']} pairs; Holm over the pairs at "
           f"family-wise {plan['alpha']:g}, so each pair is planned at Holm's strictest step, "
           f"{plan['alpha']:g}/{p['pairs']} = {p['alpha_per_pair']:.5f} (Bonferroni: Holm declares at least as many); "
           f"target: a {plan['target_power']:.0%} chance per pair that truly identical backends come out equivalent.",
           "", "## The spread, measured", "",
           f"- sd of one backend's final test accuracy over seeds, pooled: {_f(plan['sd_one_backend'], 3)} pp "
           f"({plan['df_one_backend']} degrees of freedom);",
           f"- sd of the paired difference between two backends (same seed: same init and data order), pooled over "
           f"the pairs: {_f(plan['sd_difference'], 3)} pp ({plan['df_difference']} df);",
           f"- used: the larger of the second and sqrt(2) x the first (independent runs), **{_f(plan['sd'], 3)} pp**.",
           "", "## The answer", "",
           f"**{p['seeds']} seeds per backend** (every backend on every seed: the test is paired). If the backends "
           f"truly differ by a fifth of the margin, {p['seeds_if_difference_is_a_fifth_of_the_margin']}; without "
           f"the correction (one pair alone), {p['seeds_uncorrected']}. The runs measured have {now['seeds']} "
           f"seeds: each of their {now['pairs']} pairs had a {_pct(now['power_at_holm_first_step'])} chance "
           f"(Holm's first step) to show identical backends equivalent.", "",
           "| seeds per backend | power per pair |", "|---|---|"]
    out += [f"| {c['seeds']} | {_pct(c['power'])} |" for c in plan["curve"]]
    cost = plan["cost"]
    if cost["hours"]:
        out += ["", "What it costs: the runs below took, per run (median wall time of their epochs), "
                    + ", ".join(f"{b} {t:.0f} s" for b, t in cost["seconds_per_run"].items())
                    + (f"; {', '.join(cost['not_measured'])} not measured, taken as the slowest" if cost["not_measured"]
                       else "")
                    + f": {cost['seconds_per_seed'] / 60:.0f} minutes per seed of every backend, **about "
                    f"{cost['hours']:.0f} hours** for {p['seeds']} seeds on their machine, one run at a time."]
    out += ["", "Power of the paired TOST, exactly: with n seeds, differences N(delta, sd^2) and "
                "c = t(1 - a, n - 1) / sqrt(n), both one-sided tests reject when the mean difference lies in "
                "(-margin + c s, margin - c s), "
                "s the sample sd; the chance of that, integrated over s's chi distribution "
                "(training/report.py: tost_power, seeds_needed, power_plan; tests/test_agreement.py checks it by "
                "simulation). The seed-to-seed sd is itself an estimate from few seeds: the answer is a plan, not "
                "a guarantee.", "", "## Runs it was computed from", "",
           "| run | backend | seed | final test accuracy | metrics sha256 |", "|---|---|---|---|---|"]
    out += [f"| {s['path']} | {s['backend']} | {s['seed']} | {s['accuracy']} | {s['sha256'][:16]} |" for s in sources]
    out += ["", "## Provenance", "", *[f"- {line}" for line in provenance], ""]
    return "\n".join(out)
