"""What comes back from the device machine in OUT, and `collect` here afterwards.

The device tool brings back at most 8 files of OUT, 16 MiB each and 64 MiB in all, no deeper than two
folders, named in letters, digits, '.', '_' and '-'. OUT holds exactly these (each rewritten as soon as
a step ends; the training runs at the end):

    summary.md       the headline first, then the conformance matrix's verdict, the grid, the training,
                     every step with its status, time and reason (skips say why)
    headline.json    one number per backend: images/s, TFLOP/s and the share of the measured peak
    session.json     every step's command, status, seconds and reason; probes; notes
    results.tar.gz   logs, probes, benchmark results, the matrix's JSON, training metrics, session.log
    matrix-gpu.md    `nin compare` of the GPU records against the float64 reference and each other
    bench-gpu.md     the headline and grid results in one table
    train-<backend>.tar (plan.OWN)   metrics.jsonl and checkpoint.safetensors: `--resume` continues them

The records (about 60 MB each for the three variants) cannot come back: they are compared there.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from datetime import datetime
from pathlib import Path

from benchmarks import report as bench_report
from common import backends, tables
from common.fsio import atomic_write_bytes, atomic_write_text

from . import plan

ROOT = backends.ROOT
MIB = 2 ** 20
OUT_LIMITS = {"files": 8, "file_bytes": 16 * MIB, "total_bytes": 64 * MIB, "depth": 2}
OUT_FILES = ("summary.md", "headline.json", "session.json", "results.tar.gz", "matrix-gpu.md", "bench-gpu.md",
             *(f"train-{b}.tar" for b in plan.OWN))
PACKED = (".json", ".jsonl", ".md", ".log", ".txt", ".csv", ".png", ".html")  # what results.tar.gz takes of work
RUN_FILES = ("metrics.jsonl", "checkpoint.safetensors")


# --- the pieces ---------------------------------------------------------------------------------------
def headline_entry(result: dict | None, step, peak_tflops: float | None) -> dict:
    """One backend's headline: its images/s and TFLOP/s, and their share of the device's measured bf16 peak."""
    if result is None:
        return {"status": step.status, "reason": step.reason or "no result file"}
    entry = {"status": result["status"], "reason": result.get("reason", "")[:300]}
    if result["status"] == "ok":
        tflops = (result.get("utilization") or {}).get("achieved_tflops")
        entry.update(images_per_second=result["images_per_second"], spread=result.get("spread"),
                     achieved_tflops=tflops, of_datasheet_peak=(result.get("utilization") or {}).get("mfu"),
                     of_measured_peak=tflops / peak_tflops if tflops and peak_tflops else None)
    return entry


def train_entry(run: Path, step) -> dict:
    """Epochs done of those planned, the last test accuracy, and whether a checkpoint is there to resume."""
    from training import runs

    try:
        header, epochs, _ = runs.read_metrics(run)
    except runs.RunError as e:
        return {"status": step.status, "reason": step.reason or str(e), "epochs": 0}
    last = epochs[-1] if epochs else {}
    return {"status": step.status, "reason": step.reason, "epochs": len(epochs),
            "of": header["settings"]["epochs"], "test_accuracy": last.get("test_accuracy"),
            "images_per_second": last.get("images_per_second"), "checkpoint": (run / runs.CHECKPOINT).is_file()}


def merge_bench(paths: list[Path]) -> dict | None:
    """One result document from several `nin bench` files of one device (results in order)."""
    docs = []
    for p in paths:
        try:
            docs.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    if not docs:
        return None
    first = docs[0]
    doc = {**first, "command": "python -m gpu run (one `nin bench` per step, in 'commands')",
           "commands": [d["command"] for d in docs], "results": [r for d in docs for r in d["results"]],
           "load_average": {"before": first["load_average"]["before"], "after": docs[-1]["load_average"]["after"]},
           "versions": {k: v for d in docs for k, v in (d.get("versions") or {}).items()}}
    settings = dict(first["settings"])
    for key in ("backends", "modes", "precisions", "compile"):
        settings[key] = list(dict.fromkeys(v for d in docs for v in d["settings"][key]))
    settings["batch_sizes"] = sorted({n for d in docs for n in d["settings"]["batch_sizes"]})
    settings["verify"] = any(d["settings"]["verify"] for d in docs)
    doc["settings"] = settings
    return doc


def _matrix_line(work: Path) -> tuple[str | None, list[str]]:
    """The matrix's closing line and its failures, from matrix-gpu.md."""
    try:
        text = (work / "matrix-gpu.md").read_text()
    except OSError:
        return None, []
    line = next((ln for ln in text.splitlines() if re.match(r"^\d+ passed, \d+ failed", ln)), None)
    return line, [ln.strip() for ln in text.splitlines() if ln.strip().startswith("FAIL ")]


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _num(x, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


# --- summary.md -----------------------------------------------------------------------------------------
def summary(doc: dict, cfg) -> str:
    """summary.md: the headline first, then what else was found, then every step."""
    mode, precision, compile, batch = cfg.headline
    peak = doc.get("peak_tflops")
    lines = [f"# GPU session{' (dry run on the CPU)' if doc.get('dry_run') else ''}: {doc['created']}", "",
             f"- device: {doc.get('gpu') or cfg.device}; budget {doc['budget_s']:.0f} s, elapsed "
             f"{doc['elapsed_s']:.0f} s; python {doc['python']}",
             f"- measured bf16 peak: {f'{peak:.0f} TFLOP/s' if peak else 'not measured'} (PyTorch, 8192^3 matmul, "
             "CUDA events: benchmarks/probe.py)", "",
             f"## Headline: {mode}, {precision}, {compile}, batch {batch}", ""]
    rows = [[b, _num(h.get("images_per_second"), ",.0f"), _num(h.get("achieved_tflops"), ".1f"),
             _pct(h.get("of_measured_peak")), _pct(h.get("of_datasheet_peak")),
             h["status"] + (f": {h['reason'][:100]}" if h.get("reason") else "")]
            for b, h in doc.get("headline", {}).items()]
    lines += tables.markdown(["backend", "images/s", "TFLOP/s", "of measured peak", "of datasheet peak", "status"],
                             rows) if rows else ["(not run)"]
    matrix, fails = _matrix_line(cfg.work)
    lines += ["", "## Conformance on the GPU (fp32 and fast records, compared there)", "",
              f"- matrix: {matrix or 'not made (see the steps)'}"] + [f"  - {f}" for f in fails[:30]]
    grid = [st for st in doc["steps"] if st["phase"] == "grid"]
    lines += ["", "## Benchmark grid", "",
              f"- {sum(st['status'] == 'ok' for st in grid)} of {len(grid)} steps ran (bench-gpu.md); "
              f"{sum(st['status'] == 'skipped' for st in grid)} skipped"]
    lines += ["", f"## Training toward 90 % (the tuned recipe, {Path(cfg.train_variant).stem})", ""]
    rows = [[b, f"{t.get('epochs', 0)} of {t.get('of', '?')}", _pct(t.get("test_accuracy")),
             _num(t.get("images_per_second"), ",.0f"), "yes" if t.get("checkpoint") else "no",
             t["status"] + (f": {t['reason'][:100]}" if t.get("reason") else "")]
            for b, t in doc.get("train", {}).items()]
    lines += tables.markdown(["backend", "epochs", "test accuracy", "images/s", "checkpoint", "status"],
                             rows) if rows else ["(not run)"]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    lines += ["", "## Steps", ""] + tables.markdown(["step", "status", "seconds", "note"], [
        [st["name"], st["status"], "" if st["seconds"] is None else f"{st['seconds']:.0f}",
         st["reason"][:160].replace("\n", " ")] for st in doc["steps"]])
    skipped = [st["name"] for st in doc["steps"] if st["status"] == "skipped"]
    if skipped:
        lines += ["", f"Not run ({len(skipped)}): " + "; ".join(skipped)]
    return "\n".join(lines) + "\n"


# --- OUT ------------------------------------------------------------------------------------------------
def pack(work: Path) -> bytes:
    """Everything small of the work folder: logs, probes, matrices, benchmark results, training metrics."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(work).rglob("*")):
            rel = path.relative_to(work)
            if not path.is_file() or rel.parts[0] in ("records", "cache", "site") or path.name.startswith("."):
                continue
            if path.suffix not in PACKED or path.stat().st_size > 4 * MIB:
                continue
            if rel.parts[0] == "bench" and path.suffix != ".json":
                continue  # each step's table and plot: the merged ones say it all
            tar.add(path, arcname=str(rel))
    return buf.getvalue()


def publish(s) -> None:
    """summary.md, headline.json, session.json and results.tar.gz under OUT, from what is known now."""
    cfg, doc = s.cfg, s.document()
    atomic_write_text(cfg.work / "session.log", "\n".join(s.lines) + "\n")
    atomic_write_text(cfg.out / "session.json", json.dumps(doc, indent=2, default=str) + "\n")
    atomic_write_text(cfg.out / "headline.json", json.dumps({
        "setting": dict(zip(("mode", "precision", "compile", "batch_size"), cfg.headline)),
        "measured_bf16_peak_tflops": doc.get("peak_tflops"), "device": doc.get("gpu") or cfg.device,
        "backends": doc["headline"]}, indent=2) + "\n")
    atomic_write_text(cfg.out / "summary.md", summary(doc, cfg))
    atomic_write_bytes(cfg.out / "results.tar.gz", pack(cfg.work))


def run_tar(run: Path) -> bytes:
    """A training run's metrics and checkpoint as one uncompressed tar (weights do not compress)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in RUN_FILES:
            if (run / name).is_file():
                tar.add(run / name, arcname=name)
    return buf.getvalue()


def finish(s) -> None:
    """The merged benchmark report, the matrix and the training runs into OUT; the steps never reached
    marked; the last publish; the limits on what comes back checked."""
    cfg = s.cfg
    results = [Path(st.meta["result"]) for st in s.steps if st.phase in ("headline", "grid") and st.meta.get("result")]
    doc = merge_bench([p for p in results if p.is_file()])
    try:
        if doc:
            bench_report.write(doc, cfg.work / "bench-gpu.json")
            atomic_write_bytes(cfg.out / "bench-gpu.md", (cfg.work / "bench-gpu.md").read_bytes())
        if (cfg.work / "matrix-gpu.md").is_file():
            atomic_write_bytes(cfg.out / "matrix-gpu.md", (cfg.work / "matrix-gpu.md").read_bytes())
    except (OSError, KeyError, ValueError) as e:
        s.note(f"the merged reports failed: {type(e).__name__}: {e}")
    for st in s.steps:
        if st.phase == "train" and (Path(st.meta["run"]) / RUN_FILES[0]).is_file():
            payload = run_tar(Path(st.meta["run"]))
            if len(payload) > OUT_LIMITS["file_bytes"]:
                s.note(f"train-{st.meta['backend']}.tar: {len(payload) / MIB:.1f} MiB is over the 16 MiB a file "
                       "may have to come back; it stays in the work folder")
            else:
                atomic_write_bytes(cfg.out / f"train-{st.meta['backend']}.tar", payload)
        if st.status in ("planned", "running"):
            st.status, st.reason = "skipped", st.reason or "not reached within the budget"
    s.log(f"done in {s.elapsed():.0f} s; results under {cfg.out}")
    s.publish()
    for problem in out_problems(cfg.out):
        s.note(problem)


def out_problems(out: Path) -> list[str]:
    """What the device tool would not bring back of OUT: too many files, too large, too deep, odd names."""
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    problems = [f"OUT holds {len(files)} files; {OUT_LIMITS['files']} come back"] if len(files) > 8 else []
    problems += [f"{p.name}: {p.stat().st_size / MIB:.1f} MiB, over 16 MiB" for p in files
                 if p.stat().st_size > OUT_LIMITS["file_bytes"]]
    problems += [f"{p.relative_to(out)}: too deep or an odd name" for p in files
                 if len(p.relative_to(out).parts) > OUT_LIMITS["depth"] + 1
                 or not all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in p.relative_to(out).parts)]
    total = sum(p.stat().st_size for p in files)
    return problems + ([f"OUT holds {total / MIB:.1f} MiB; 64 MiB come back"] if total > OUT_LIMITS["total_bytes"]
                       else [])


# --- collect (here, afterwards) -------------------------------------------------------------------------
def collect(out: Path, root: Path = ROOT) -> list[Path]:
    """Put a session's results in place for a commit: the matrix and the summary into records/, the
    benchmark into benchmarks/results/, each training run into results/training/gpu/<variant>/<backend>/seed0
    (where `make gpu-bundle` finds the unfinished ones to resume)."""
    out, placed = Path(out), []
    archive = out / "results.tar.gz"
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: no results.tar.gz there")
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        read = lambda name: tar.extractfile(members[name]).read() if name in members else None  # noqa: E731
        for name in ("matrix-gpu.md", "matrix-gpu.json", "matrix-gpu.png", "matrix-gpu.html"):  # the .md links both
            if read(name):
                placed.append(atomic_write_bytes(root / "records" / name, read(name)))
        if read("bench-gpu.json"):
            doc = json.loads(read("bench-gpu.json"))
            stamp = datetime.fromisoformat(doc["created"]).strftime("%Y%m%d-%H%M%S")
            gpu = re.sub(r"[^a-z0-9]+", "-", (doc["device"].get("name") or doc["device"]["kind"]).lower()).strip("-")
            placed += bench_report.write(doc, root / "benchmarks" / "results" / f"{gpu}-{stamp}.json")
    if (out / "summary.md").is_file():
        placed.append(atomic_write_bytes(root / "records" / "gpu-session.md", (out / "summary.md").read_bytes()))
    for tar_path in sorted(out.glob("train-*.tar")):
        placed += _unpack_run(tar_path, root)
    return placed


def _unpack_run(tar_path: Path, root: Path) -> list[Path]:
    """A training run into results/training/gpu/; one that would replace another run there (begun at
    another time) is refused: the run there holds epochs this one lacks."""
    with tarfile.open(tar_path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and m.name in RUN_FILES}
    if RUN_FILES[0] not in files:
        raise ValueError(f"{tar_path}: no {RUN_FILES[0]} in it")
    header = json.loads(files[RUN_FILES[0]].decode().splitlines()[0])
    run = root / "results" / "training" / "gpu" / Path(header["variant"]).stem / header["backend"] / "seed0"
    if (run / RUN_FILES[0]).is_file():
        there = json.loads((run / RUN_FILES[0]).read_text().splitlines()[0])
        if there.get("created") != header.get("created"):
            raise ValueError(f"{tar_path}: {run} holds another run (begun {there.get('created')}); move it away "
                             "first if this one should replace it")
    return [atomic_write_bytes(run / name, payload) for name, payload in files.items()]
