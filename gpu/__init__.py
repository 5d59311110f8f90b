"""The GPU session and its offline bundle: a driver of its own (docs/gpu.md).

    wheels.py   the wheels of requirements/offline-gpu.txt: downloaded here, installed there offline
    bundle.py   `make gpu-bundle`: .whl/ = those wheels, Fashion-MNIST, the `fast` error-model spreads
                checked into conformance/error_model.json, and the training runs to resume; at most 60 MiB
    plan.py     what the session runs: its configuration and every step's command, in the order of value
    session.py  the step runner: subprocess groups under one deadline (an injectable clock)
    order.py    the run itself: headline, records and compare, the benchmark grid, training
    report.py   what comes back in OUT (at most 8 files), the summary, and `collect` here afterwards
    cli.py      python -m gpu run | plan | collect

Like every driver it imports no framework: each step is a `nin` command in a process of its own.
"""
