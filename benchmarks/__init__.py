"""The throughput runner (`nin bench`): one process per backend and configuration, result files, plots."""
