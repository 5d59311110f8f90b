"""The CPU matrix under the numeric paths a user's CPU may take, forced on this one.

    python -m conformance.portability [--paths baseline oneDNN-SSE4.1 ...] [--variant ...] \
        [--report records/portability.md]      (`make portability`)

CPUs differ in the kernels their frameworks pick: the vector instruction set (AVX-512, AVX2, SSE),
oneDNN's convolution algorithms, the BLAS kernel family, the thread count. Each can be forced by an
environment variable, so one machine can show what another would compute. For every path the
matrix is recorded and compared as `nin conformance` does; the report gives, per check and record,
the worst share of its bound over all paths (and which path), and which paths changed any tensor of
a backend's record at all (bitwise, against the baseline): a switch that changes nothing is named too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import backends
from common import spec as specs
from common.fsio import atomic_write_text, cache_dir, check_writable
from conformance.records import read_record

# name -> (environment, the modules whose kernels it can change: a backend is recorded on the path when it
# requires one of them; "*" every backend), every oneDNN spelling set (MXNet 1.9 reads MKLDNN_, newer builds
# DNNL_ / ONEDNN_). "reference": the float64 NumPy reference is recomputed.
ONEDNN = ("DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "MKLDNN_MAX_CPU_ISA")
SWITCHES = {
    "baseline": ({}, ("*",)),
    "1-thread": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                  "TF_NUM_INTRAOP_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}, ("*",)),
    "ATen-default": ({"ATEN_CPU_CAPABILITY": "default"}, ("torch",)),
    "oneDNN-SSE4.1": ({k: "SSE41" for k in ONEDNN}, ("mxnet", "torch", "tensorflow")),
    "oneDNN-AVX": ({k: "AVX" for k in ONEDNN}, ("mxnet", "torch", "tensorflow")),
    "TF-no-oneDNN": ({"TF_ENABLE_ONEDNN_OPTS": "0"}, ("tensorflow",)),
    "MXNet-no-oneDNN": ({"MXNET_MKLDNN_ENABLED": "0"}, ("mxnet",)),
    "XLA-SSE4.2": ({"XLA_FLAGS": "--xla_cpu_max_isa=SSE4_2"}, ("jax",)),
    "OpenBLAS-Prescott": ({"OPENBLAS_CORETYPE": "Prescott"}, ("torch", "reference")),
}


def affected(modules: tuple[str, ...]) -> tuple[str, ...]:
    """The registered backends a switch of these modules' kernels reaches, in the registry's order (and
    "reference" when the switch reaches NumPy's BLAS)."""
    names = tuple(n for n, b in backends.BACKENDS.items() if "*" in modules or set(b.requires) & set(modules))
    return names + (("reference",) if "reference" in modules else ())


PATHS = {name: (environment, affected(modules)) for name, (environment, modules) in SWITCHES.items()}

def cpu() -> dict:
    """The CPU's name, family / model and the vector extensions that choose kernels."""
    info = {"name": platform.processor() or platform.machine(), "family": None, "model": None, "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for key, field in (("name", "model name"), ("family", "cpu family"), ("model", "model")):
        m = re.search(rf"^{field}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            info[key] = m.group(1).strip()
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    wanted = ("sse4_1", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
    info["flags"] = [f for f in wanted if flags and f in flags.group(1).split()]
    return info


def run_path(name: str, *, variants: list[str], out_dir: Path, precisions: list[str], timeout: float) -> dict:
    environment, recorded = PATHS[name]
    env = {**os.environ, **environment}
    if "reference" in recorded:  # the reference computed afresh under this BLAS, in a cache of its own
        env["NIN_CACHE_DIR"] = str((out_dir / name / "cache").resolve())
    records_dir = out_dir / name
    json_out = out_dir / f"{name}.json"
    names = [b for b in recorded if b in backends.BACKENDS]
    cmd = [sys.executable, "-m", "nin", "conformance", "--backend", *names, "--variant", *variants,
           "--precision", *precisions, "--compile", "eager", "--out-dir", str(records_dir), "--json-out", str(json_out)]
    proc = subprocess.run(cmd, env=env, cwd=backends.ROOT, capture_output=True, text=True, timeout=timeout)
    if not json_out.is_file():
        return {"path": name, "error": proc.stderr.strip()[-1000:] or f"exit status {proc.returncode}"}
    made = sorted(map(str, records_dir.glob("*.safetensors")))
    return {"path": name, "result": json.loads(json_out.read_text()), "records": made}


def changed(baseline: list[str], other: list[str]) -> dict[str, bool]:
    """Per record file name: whether any tensor differs bitwise from the baseline's."""
    base = {Path(p).name: p for p in baseline}
    out = {}
    for p in other:
        name = Path(p).name
        if name in base:
            a, b = read_record(base[name]).tensors, read_record(p).tensors
            out[name] = any(not np.array_equal(a[k], b[k]) for k in a)
    return out


def reference_change(out_dir: Path, name: str) -> str:
    """How far the float64 reference computed on this path is from the usual cache's (max relative)."""
    ours = sorted((out_dir / name / "cache" / "reference").glob("*.npz"))
    usual = cache_dir() / "reference"
    worst, compared = 0.0, 0
    for path in ours:
        other = usual / path.name
        if not other.is_file():
            continue
        with np.load(path) as a, np.load(other) as b:
            for k in a.files:
                scale = float(np.max(np.abs(b[k]))) or 1.0
                worst = max(worst, float(np.max(np.abs(a[k] - b[k]))) / scale)
                compared += 1
    if not compared:
        return "reference: nothing to compare"
    return "reference unchanged (bitwise)" if worst == 0 else f"reference moved by up to {worst:.1e} (relative)"


def report(runs: list[dict], machine: dict, out_dir: Path) -> tuple[str, dict]:
    worst: dict[tuple, tuple[float, str]] = {}
    for run in runs:
        for c in (run.get("result") or {}).get("checks", []):
            if c["against"] != "reference" or c["check"] in ("shapes", "params", "record"):
                continue
            key = (c["variant"], c["check"], c["backend"])
            ratio = float("inf") if c["ratio"] is None else c["ratio"]
            if ratio >= worst.get(key, (-1.0, ""))[0]:
                worst[key] = (ratio, run["path"])
    baseline = next((r for r in runs if r["path"] == "baseline" and "records" in r), None)
    effects = {r["path"]: changed(baseline["records"], r["records"]) for r in runs
               if baseline and "records" in r and r["path"] != "baseline"}
    over = {k: v for k, v in worst.items() if v[0] > 0.5}
    lines = [
        f"# Portability: the CPU conformance matrix under {len(runs)} numeric paths",
        "",
        f"- CPU: {machine['name']} (family {machine['family']}, model {machine['model']}; "
        f"{' '.join(machine['flags'])})",
        f"- command: `{' '.join(['python', '-m', 'conformance.portability'] + sys.argv[1:])}`",
        "- each path: `nin conformance --compile eager` with the environment below; the ratio is the measured "
        "error's share of its bound (conformance/tolerances.py); the goal is <= 0.5 everywhere",
        "",
        "| path | environment | recorded | records whose tensors changed (bitwise, vs baseline) |",
        "|---|---|---|---|",
    ]
    for r in runs:
        environment, recorded = PATHS[r["path"]]
        env = " ".join(f"{k}={v}" for k, v in environment.items()) or "–"
        if "error" in r:
            effect = f"failed: {r['error'][:200]}"
        elif r["path"] == "baseline":
            effect = "–"
        else:
            names = [n.replace(".safetensors", "") for n, c in effects.get(r["path"], {}).items() if c]
            effect = ", ".join(names) or "none: this switch changes no result here"
            if "reference" in recorded:
                effect += "; " + reference_change(out_dir, r["path"])
        lines.append(f"| {r['path']} | `{env}` | {', '.join(recorded)} | {effect} |")
    lines += ["", f"**Worst share of its bound over all paths: {max((v[0] for v in worst.values()), default=0):.2f}**"
              f"; checks above 0.5: {len(over)}", "",
              "| variant | check | record | worst ratio | on path |", "|---|---|---|---|---|"]
    for (variant, check, backend), (ratio, path) in sorted(worst.items()):
        flag = " **> 0.5**" if ratio > 0.5 else ""
        lines.append(f"| {variant} | {check} | {backend} | {ratio:.3f}{flag} | {path} |")
    doc = {"cpu": machine, "paths": {r["path"]: {"environment": PATHS[r["path"]][0], "recorded": PATHS[r["path"]][1]}
                                     for r in runs},
           "errors": {r["path"]: r["error"] for r in runs if "error" in r}, "changed": effects,
           "worst": [{"variant": k[0], "check": k[1], "record": k[2], "ratio": v[0], "path": v[1]}
                     for k, v in sorted(worst.items())]}
    return "\n".join(lines) + "\n", doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.portability", description=__doc__.split("\n\n")[0])
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS), help="default: all")
    p.add_argument("--variant", nargs="+", default=list(specs.VARIANTS), choices=list(specs.VARIANTS))
    p.add_argument("--precision", nargs="+", default=["fp32", "fp64"], choices=["fp32", "fp64"])
    p.add_argument("--out-dir", type=Path, default=Path("records/portability"))
    p.add_argument("--report", type=Path, default=Path("records/portability.md"))
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per path")
    args = p.parse_args(argv)
    check_writable(args.report, "--report")
    paths = ["baseline"] + [x for x in args.paths if x != "baseline"]
    runs = [run_path(name, variants=args.variant, out_dir=args.out_dir, precisions=args.precision,
                     timeout=args.timeout) for name in tqdm(paths, desc="paths", unit="path")]
    text, doc = report(runs, cpu(), args.out_dir)
    atomic_write_text(args.report, text)
    atomic_write_text(args.report.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")
    print(text)
    return 0 if all("result" in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
