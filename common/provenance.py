"""Where a result came from: the date, the git commit, the command, the machine (CPU model and the
instruction-set features that change numerics and speed), Python and the platform.

Every committed result names these (README, "Nothing stated without a file"); the matrix
(conformance.matrix) prints them above its tables and writes them into its JSON. The standard
library only: no framework is imported here, so a framework's versions come from the records.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The CPU flags that decide which kernels run (and so the rounding and the speed): SSE4, AVX, AVX2,
# FMA, F16C, every AVX-512 and AMX extension, the VNNI dot products.
ISA_FLAGS = re.compile(r"^(sse4_1|sse4_2|avx|avx2|fma|f16c|avx512\w*|amx\w*|avx_vnni\w*|avx_ne_convert|neon|asimd\w*"
                       r"|sve\w*)$")


def git_commit(root: Path = ROOT) -> str:
    """`git rev-parse HEAD` of the checkout, with ' (with uncommitted changes)' when tracked files
    differ from it; 'unknown' without git or outside a repository."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip() or "unknown"
    return commit + (" (with uncommitted changes)" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cpu(cpuinfo: str | None = None) -> dict:
    """The CPU: model name, family and model numbers (x86), logical CPUs, and its ISA flags that
    matter (ISA_FLAGS). Read from /proc/cpuinfo (or the text given); elsewhere platform.processor()
    and no flags ('unknown')."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's
            fields[key.strip()] = value.strip()
    model = fields.get("model name") or fields.get("Model") or platform.processor() or platform.machine() or "unknown"
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    isa = sorted({f for f in flags if ISA_FLAGS.match(f)})
    out = {"model": model, "family": fields.get("cpu family", "unknown"),
           "model_number": fields.get("model", "unknown"), "cpus": os.cpu_count() or 0,
           "isa_flags": " ".join(isa) if flags else "unknown"}
    if flags:
        out["avx512"] = "yes" if any(f.startswith("avx512") for f in isa) else "no"
        out["amx"] = "yes" if any(f.startswith("amx") for f in isa) else "no"
    return out


def command(argv: list[str] | None = None) -> str:
    """The command line that made the result, with the program's name instead of its path."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "unknown"
    return " ".join([Path(argv[0]).name] + argv[1:])


def collect(*, argv: list[str] | None = None, versions: dict | None = None) -> dict:
    """Everything above, as plain strings and numbers (JSON as it is); `versions`: the frameworks'
    versions by backend, as the records name them."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(), "command": command(argv), "cpu": cpu(),
            "python": platform.python_version(), "platform": platform.platform(),
            "versions": dict(versions or {})}


def lines(prov: dict) -> list[str]:
    """The provenance as text lines, for the head of a report."""
    c = prov.get("cpu", {})
    extensions = f"; AVX-512 {c['avx512']}, AMX {c['amx']}" if "avx512" in c else ""
    out = [f"Date: {prov.get('date', 'unknown')}",
           f"Commit: {prov.get('commit', 'unknown')}",
           f"Command: {prov.get('command', 'unknown')}",
           f"Machine: CPU {c.get('model', 'unknown')} (family {c.get('family', 'unknown')}, "
           f"model {c.get('model_number', 'unknown')}), {c.get('cpus', '?')} logical CPUs; "
           f"ISA flags: {c.get('isa_flags', 'unknown')}{extensions}",
           f"Python {prov.get('python', 'unknown')} on {prov.get('platform', 'unknown')}"]
    versions = prov.get("versions") or {}
    out.append("Framework versions: " + ("; ".join(
        f"{name}: {', '.join(f'{k} {v}' for k, v in vs.items())}" for name, vs in versions.items())
        if versions else "none (no record was read)"))
    return out
