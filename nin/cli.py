"""The `nin` command: one parser, one-line errors. Each driver adds its own subcommands.

    nin summary, record, compare, conformance, error-model   conformance/cli.py
    nin bench                                                benchmarks/runner.py
    nin data                                                 here: Fashion-MNIST found or downloaded, verified
    nin train, sweep, report, plot, lr-find                  training/cli.py
    nin idioms                                               idioms/cli.py

Exit status (docs/bad-inputs.md): 0 done and every check passed; 1 a check failed, a record or a
benchmark configuration failed (the sweep goes on and says so), or an internal error; 2 input that
cannot work (a flag, a spec, a data file, an output path, no GPU), with one line naming the file or
flag, the field and what was expected; 3 the backend's framework is not installed; 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM): temporary files are removed, finished files are kept whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from benchmarks import runner
from common.backends import BackendError
from common.calc import CostError
from common.data import DataError
from common.fsio import OutputError
from common.spec import SpecError
from common.weights import WeightsError
from conformance import cli as conformance_cli
from conformance.records import RecordError
from harness import flags, processes
from harness.flags import UsageError
from idioms import cli as idioms_cli
from training import cli as training_cli


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (with where to look) instead of the usage and the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def cmd_data(args) -> int:
    """Fashion-MNIST available and verified, downloaded once where it is missing (`make setup`)."""
    from common import data

    found = data.ensure(args.data_dir, download=not args.no_download)
    if args.json:
        print(json.dumps({"files": {k: str(v) for k, v in found.items()}, "verified": "sha256"}, indent=2))
        return 0
    folders = sorted({str(p.parent) for p in found.values()})
    print(f"Fashion-MNIST: {len(found)} files, sha256 verified, in {', '.join(folders)}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="nin",
                                description="Network in Network in four frameworks, and the proof they agree.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    conformance_cli.add_commands(sub)  # summary, record, compare, conformance, error-model

    b = sub.add_parser("bench", help="training and inference throughput per backend")
    runner.add_arguments(b)
    b.set_defaults(func=runner.main)

    d = sub.add_parser("data", help="Fashion-MNIST: find it or download it (once), and verify it (sha256)")
    d.add_argument("--data-dir", metavar="DIR", type=flags.path,
                   help="look (and download) here only (default: $NIN_DATA_DIR, ../shared/data/fashion-mnist, "
                        "~/.cache/nin/fashion-mnist)")
    d.add_argument("--no-download", action="store_true", help="only find and verify; fail if a file is missing")
    d.add_argument("--json", action="store_true", help="one JSON object: where each file is")
    d.set_defaults(func=cmd_data)

    training_cli.add_commands(sub)  # train, plot, lr-find: training/cli.py
    idioms_cli.add_commands(sub)  # idioms: idioms/cli.py
    return p


def main(argv=None) -> int:
    with processes.sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: temporary files are removed
        try:
            args = parser().parse_args(argv)
            return args.func(args)
        except SpecError as e:
            print(f"nin: bad spec: {_one_line(e)}", file=sys.stderr)
        except (RecordError, WeightsError, DataError, OutputError, BackendError, UsageError, CostError) as e:
            print(f"nin: {_one_line(e)}", file=sys.stderr)
        except OSError as e:
            print(f"nin: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        except KeyboardInterrupt as e:
            how = e.name if isinstance(e, processes.Interrupted) else "Ctrl-C"
            print(f"nin: interrupted ({how}); finished files are whole, temporary files removed", file=sys.stderr)
            return processes.interrupted_status(e)
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("NIN_TRACEBACK"):
                traceback.print_exc()
            print(f"nin: internal error: {type(e).__name__}: {_one_line(e)} (NIN_TRACEBACK=1 shows where)",
                  file=sys.stderr)
            return 1
    return 2


def _version() -> str:
    """The suite's version as installed (pyproject.toml), else "unknown" (run from a plain checkout)."""
    from importlib import metadata

    try:
        return metadata.version("nin-suite")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
