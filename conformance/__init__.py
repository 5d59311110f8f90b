"""The conformance driver: records written in each backend's own process, compared anywhere.

    record.py    the worker: builds the backend's model for each case and writes the record
    compare.py   every record against the float64 reference and against every other record
    matrix.py    the matrix as text, Markdown and JSON
"""
