"""The conformance driver: records written in each backend's own process, compared anywhere.

    cli.py          its `nin` commands: summary, record, compare, conformance, error-model
    inputs.py       what those commands refuse before any work
    sweep.py        the record workers, `--jobs` at a time; the resume ring; the data-parallel case
    record.py       the worker: builds the backend's model for each case and writes the record
    distributed.py  the data-parallel case, on the framework's own engine
    cases.py        what every record holds: the cases, the float64 reference's results, cached
    records.py      the record format: reading, writing, validating
    errormodel.py   the spreads behind every bound; tolerances.py: the checks and their bounds
    compare.py      every record against the float64 reference and against every other record
    matrix.py       the matrix as text, Markdown and JSON (heatmap.py: its picture; labels.py: its names)
    portability.py  the matrix again under other kernel paths (ISA limits, one thread)
"""
