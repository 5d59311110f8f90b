"""NiN in MXNet Gluon, built from common.spec; see model.py, train.py and bench.py."""
