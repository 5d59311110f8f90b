"""Statistical agreement done as a test must be (issue 22): the TOST against statsmodels' ttost_paired,
Holm's correction against statsmodels' multipletests, the power calculation against a simulation, the
margin fixed before the runs (in every run's header) and read back by the report, which states its
margin, its correction and its power. And the pictures (issue 25): the curves as d2l draws them, the
range test as the literature does. No backend runs here: the committed runs of results/training/ and
runs made up in the test's folder are the data."""

from __future__ import annotations

import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from common import backends
from nin import cli
from training import cli as training_cli
from training import plots, runs
from training import report as reports

ROOT = Path(__file__).resolve().parent.parent
AGREEMENT = ROOT / "results" / "training" / "agreement-bn"
pytestmark = pytest.mark.main_env  # SciPy's t distribution, matplotlib and statsmodels: the main environment


# --- the statistics ---------------------------------------------------------------------------------
def test_tost_agrees_with_statsmodels_ttost_paired():
    weightstats = pytest.importorskip("statsmodels.stats.weightstats")
    rng = np.random.default_rng(7)
    for n, shift, margin in ((5, 0.0, 0.5), (5, 0.3, 0.5), (12, -0.2, 1.0), (40, 0.05, 0.5), (3, 0.0, 2.0)):
        a = 77 + rng.normal(0, 0.5, n)
        b = a - shift + rng.normal(0, 0.6, n)
        ours = reports.equivalence(dict(enumerate(a)), dict(enumerate(b)), margin)
        p, lower, upper = weightstats.ttost_paired(a, b, -margin, margin)
        assert ours["kind"] == "paired" and ours["p_tost"] == pytest.approx(float(p), rel=1e-9, abs=1e-12)
        assert ours["equivalent"] == (float(p) < 0.05)
        assert max(lower[1], upper[1]) == pytest.approx(float(p))


def test_holm_agrees_with_statsmodels_multipletests():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    for pvalues in ([0.01, 0.04, 0.03, 0.2, 0.001, 0.5], [0.05], [0.0, 1.0, 0.5], [0.011, 0.012, 0.013]):
        reject, adjusted, _, _ = multitest.multipletests(pvalues, alpha=0.05, method="holm")
        np.testing.assert_allclose(reports.holm(pvalues), adjusted, rtol=1e-12)
        assert [p <= 0.05 for p in reports.holm(pvalues)] == list(reject)


def test_tost_power_matches_a_simulation():
    from scipy import stats

    rng = np.random.default_rng(3)
    for n, sd, margin, alpha, delta in ((5, 0.8, 0.5, 0.05, 0.0), (20, 0.8, 0.5, 0.05, 0.0),
                                        (30, 0.8, 0.5, 0.05 / 15, 0.1), (10, 0.3, 0.5, 0.01, -0.2)):
        d = rng.normal(delta, sd, (100_000, n))
        mean, s = d.mean(axis=1), d.std(axis=1, ddof=1)
        c = stats.t.ppf(1 - alpha, n - 1) / math.sqrt(n)
        simulated = np.mean((mean - c * s > -margin) & (mean + c * s < margin))
        assert reports.tost_power(n, sd, margin, alpha, delta=delta) == pytest.approx(simulated, abs=0.006)


def test_seeds_needed_is_the_fewest_that_reach_the_target():
    n = reports.seeds_needed(0.8, 0.5, 0.05 / 15)
    assert reports.tost_power(n, 0.8, 0.5, 0.05 / 15) >= 0.8 > reports.tost_power(n - 1, 0.8, 0.5, 0.05 / 15)
    assert reports.seeds_needed(0.8, 0.5, 0.05) < n < reports.seeds_needed(0.8, 0.5, 0.05 / 15, delta=0.1)
    assert reports.seeds_needed(math.nan, 0.5, 0.05) is None and reports.seeds_needed(0.8, 0.5, 0.05, delta=0.6) is None


# --- the margin, fixed before the runs ------------------------------------------------------------------
def test_the_margin_is_read_from_the_command_as_argparse_reads_it():
    assert reports.margin_in("nin sweep --backend torch --out x") is None
    assert reports.margin_in("nin sweep --margin 1.5 --out x --margin 0.5") == 0.5
    assert reports.margin_in("nin sweep --margin=0.25 --title 'a --margin 9'") == 0.25
    assert reports.margin_in("nin sweep --margin") is None


def test_the_sweep_writes_its_margin_into_every_runs_command(monkeypatch):
    args = cli.parser().parse_args(["sweep", "--backend", "all", "--out", "x"])
    monkeypatch.setattr(sys, "argv", ["nin", "sweep", "--backend", "all", "--out", "x"])
    assert reports.margin_in(training_cli._sweep_command(args)) == reports.DEFAULT_MARGIN == 0.5
    monkeypatch.setattr(sys, "argv", ["nin", "sweep", "--margin", "0.3", "--out", "x"])
    args.margin = 0.3
    assert training_cli._sweep_command(args) == "nin sweep --margin 0.3 --out x"
    training_cli._all_backends(args)
    assert args.backend == list(backends.BACKENDS) and {"keras-jax", "keras-torch"} <= set(args.backend)


def _with_margin(tmp_path, margin: float | None, *, only=None) -> Path:
    """The committed agreement runs, copied, their headers' command given `--margin margin`."""
    out = tmp_path / "runs"
    shutil.copytree(AGREEMENT / "d2l-bn", out / "d2l-bn")
    for metrics in sorted(out.rglob(runs.METRICS)):
        if only and only not in str(metrics):
            continue
        lines = metrics.read_text().splitlines()
        header = json.loads(lines[0])
        if margin is not None:
            header["command"] += f" --margin {margin}"
        metrics.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    return out


def test_the_report_reads_the_preset_margin_and_refuses_another(tmp_path, capsys):
    out = _with_margin(tmp_path, 0.75)
    all_runs = reports.load_runs([out])
    assert reports.resolve_margin(all_runs, None)["value"] == 0.75 and reports.resolve_margin(all_runs, 0.75)["preset"]
    assert cli.main(["report", str(out), "--margin", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "+/-0.75 pp before they started" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["report", str(out)]) == 0
    said = capsys.readouterr().out
    assert "+/-0.75 percentage points of final test accuracy, fixed before the runs" in said


def test_a_sweep_keeps_the_margin_its_runs_started_with(tmp_path, capsys):
    """Checked before any run starts: another margin, or runs that fixed none, are refused in one line."""
    out = _with_margin(tmp_path, 0.75)
    sweep = ["sweep", "--backend", "torch", "--variant", "d2l-bn", "--seeds", "1", "--out", str(out)]
    assert cli.main([*sweep, "--margin", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "fixed at +/-0.75 pp, not --margin 0.3" in err and len(err.strip().splitlines()) == 1
    bare = _with_margin(tmp_path / "bare", None)
    assert cli.main(["sweep", "--backend", "torch", "--variant", "d2l-bn", "--seeds", "1", "--out", str(bare)]) == 2
    assert "predates nin sweep --margin" in capsys.readouterr().err


def test_runs_with_different_margins_are_not_one_comparison(tmp_path):
    out = _with_margin(tmp_path, 0.5, only="torch")
    with pytest.raises(runs.RunError, match="different equivalence margins"):
        reports.preset_margin(reports.load_runs([out]))


def test_the_committed_report_states_margin_correction_and_power(capsys):
    assert cli.main(["report", str(AGREEMENT), "--margin", "0.5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["margin"]["value"] == 0.5 and doc["margin"]["preset"] is False  # these runs predate --margin
    assert doc["correction"]["method"] == "holm"
    pairs = doc["agreement"]
    assert len(pairs) == 6 and all(p["pairs"] == 6 and p["p_holm"] >= p["p_tost"] for p in pairs)
    assert {p["verdict"] for p in pairs} <= {"agree", "inconclusive"}
    power = doc["power"]
    assert power["plan"]["backends"] == list(backends.BACKENDS) and power["plan"]["pairs"] == 15
    assert 0 < power["runs"]["power_at_holm_first_step"] < 0.05 and power["plan"]["seeds"] > 20
    assert cli.main(["report", str(AGREEMENT), "--margin", "0.5"]) == 0
    text = capsys.readouterr().out
    for words in ("NOT fixed before the runs", "Holm's step-down correction", "seeds per backend are needed",
                  "Agree (", "Inconclusive (", "p (Holm)"):
        assert words in text, words


def test_power_out_writes_the_calculation_with_its_provenance(tmp_path, capsys):
    assert cli.main(["report", str(AGREEMENT), "--margin", "0.5", "--power-out", str(tmp_path / "power")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "power" / "power.json").read_text())
    md = (tmp_path / "power" / "power.md").read_text()
    assert len(doc["sources"]) == 20 and all(len(s["sha256"]) == 64 for s in doc["sources"])
    assert doc["provenance"]["commit"] and doc["plan"]["seeds"] == reports.seeds_needed(
        doc["sd"], 0.5, 0.05 / 15)
    assert f"**{doc['plan']['seeds']} seeds per backend**" in md
    from test_docs import provenance_missing  # what every cited result must name: date, command, machine

    assert provenance_missing(md) == []


# --- the pictures ---------------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_backend_colours_follow_the_registry():
    order = list(backends.BACKENDS)
    palette = plots.colours(reversed(order))
    assert list(palette) == order and palette[order[0]] == "C0" and len(set(palette.values())) == len(order)
    assert plots.colours({"torch", "keras-torch"}) == {"torch": f"C{order.index('torch')}",
                                                       "keras-torch": f"C{order.index('keras-torch')}"}
    assert plots.colours({"d2l", "my.json"}, "variant")["my.json"] not in plots.colours({"d2l"}, "variant").values()


def test_the_curves_of_a_sweep_fit_their_figure(tmp_path):
    pytest.importorskip("matplotlib")
    all_runs = reports.load_runs([AGREEMENT])
    png = plots.plot_runs(all_runs, tmp_path / "curves.png", title="a long title " * 30)
    width, _ = _png_size(png)
    assert width < 1000  # the title wraps instead of widening the figure (it was 1,950 px)
    xs, med, low, high = plots.seed_curve([r for r in all_runs if r.settings.backend == "torch"], "test_accuracy")
    assert xs == [4] and low[0] <= med[0] <= high[0]  # one evaluation: one point, the seeds' range around it


def test_the_range_test_marks_a_suggestion_and_the_divergence(tmp_path):
    pytest.importorskip("matplotlib")
    lrs = list(np.geomspace(1e-4, 10, 80))
    descent = [2.3 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 2))) for lr in lrs]
    losses = [v if lr < 1 else v * (1 + 3 * (lr - 1)) for v, lr in zip(descent, lrs)]
    result = training_cli.analyse_range_test({"lrs": lrs, "losses": losses, "backend": "torch", "variant": "d2l"})
    assert 3e-3 < result["suggested_lr"] < 3e-2  # the steepest descent, at 1e-2 for this curve
    assert 1.5 < result["blowup_lr"] < 5  # back above where it started (2.3) from lr 1.6, the average lagging
    flat = training_cli.analyse_range_test({"lrs": lrs, "losses": [math.log(10) + 1e-4 * math.sin(i) for i in
                                                                   range(80)], "backend": "torch", "variant": "d2l"})
    assert flat["suggested_lr"] is None and flat["blowup_lr"] is None  # the plateau: nothing to suggest
    png = plots.plot_lr_find([{**result, "stopped": "the last rate"}, {**flat, "backend": "jax", "stopped": "x"}],
                             tmp_path / "lr_find.png", title="range test")
    assert png.read_bytes()[:4] == b"\x89PNG"
