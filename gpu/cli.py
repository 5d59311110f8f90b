"""The GPU session's command line.

    python -m gpu run --out OUT [--budget 520] [--only PHASE ...]   on the GPU machine (scripts/gpu_session.sh)
    python -m gpu run --dry-run --out runs/gpu-dry-run             here: the whole order on the CPU, a tiny network
    python -m gpu plan [--dry-run]                                 every step's command, nothing run
    python -m gpu collect OUT                                      here: the results put in place for a commit
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tarfile
from pathlib import Path

from common import backends

from . import order, plan, report

ROOT = backends.ROOT


def config(args) -> plan.Config:
    out = Path(args.out).resolve()
    work = Path(args.work or (ROOT / "runs" / ("gpu-dry-run-work" if args.dry_run else "gpu-session-work"))).resolve()
    phases = tuple(p for p in (args.only or plan.PHASES) if p not in (args.skip or ()))
    kw = {k: v for k, v in {
        "budget": args.budget, "wheelhouse": Path(args.wheelhouse).resolve(), "python": args.python,
        "train_seconds": args.train_seconds, "phases": phases,
        "backends": tuple(args.backends) if args.backends else None,
        "train_backends": tuple(args.train_backends) if args.train_backends else None,
        "variants": tuple(args.variants) if args.variants else None}.items() if v is not None}
    return plan.dry_run_config(out, work, **kw) if args.dry_run else plan.Config(out=out, work=work, **kw)


def _run_options(q) -> None:
    q.add_argument("--out", default=str(ROOT / "runs" / "gpu-session"), help="where the results go (at most 8 files)")
    q.add_argument("--work", help="where records, logs and caches go (default runs/gpu-session-work)")
    q.add_argument("--budget", type=float, help="seconds of work, setup to report (default 520; dry run 900)")
    q.add_argument("--dry-run", action="store_true", help="on the CPU, with a tiny network: tests the whole order")
    q.add_argument("--only", nargs="+", choices=plan.PHASES, help="run only these phases (setup always runs)")
    q.add_argument("--skip", nargs="+", choices=plan.PHASES, help="leave these phases out")
    q.add_argument("--backends", nargs="+", choices=sorted(backends.BACKENDS), metavar="NAME",
                   help=f"headline, records and grid (default: {' '.join(plan.BACKENDS)})")
    q.add_argument("--train-backends", nargs="+", choices=sorted(backends.BACKENDS), metavar="NAME",
                   help=f"trained toward 90 %% (default: {' '.join(plan.OWN)})")
    q.add_argument("--variants", nargs="+", metavar="VARIANT",
                   help=f"conformance variants (default: {' '.join(plan.VARIANTS)})")
    q.add_argument("--train-seconds", type=float,
                   help="seconds kept for training at the end: the grid stops before them (default 150; 0: the "
                        "grid may take everything)")
    q.add_argument("--wheelhouse", default=str(ROOT / ".whl"), help="the bundle (default .whl/: make gpu-bundle)")
    q.add_argument("--python", default=sys.executable, help="the interpreter of every step (default: this one)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpu", description="The GPU session: headline, records, grid, "
                                                                  "training, in one call under a budget.")
    sub = p.add_subparsers(dest="command", required=True)
    _run_options(sub.add_parser("run", help="run the session"))
    _run_options(sub.add_parser("plan", help="print every step's command; run nothing"))
    c = sub.add_parser("collect", help="put a finished session's results into records/, benchmarks/results/ and "
                                       "results/training/gpu/")
    c.add_argument("out", help="the session's output folder")
    args = p.parse_args(argv)
    if args.command == "collect":
        try:
            for path in report.collect(Path(args.out)):
                print(path)
        except (OSError, KeyError, ValueError, tarfile.TarError) as e:
            print(f"gpu collect: {e}", file=sys.stderr)
            return 2
        return 0
    cfg = config(args)
    if args.command == "plan":
        for phase, steps in plan.plan(cfg).items():
            print(f"{phase}:" + ("" if phase in cfg.phases else " (left out)"))
            for st in steps:
                print(f"  {st.name}: {shlex.join(st.cmd)}")
        return 0
    return order.run(cfg)


if __name__ == "__main__":
    sys.exit(main())
