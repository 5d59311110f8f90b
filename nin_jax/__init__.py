"""NiN in Flax (NNX) on JAX, built from common.spec; see model.py, train.py and bench.py."""
