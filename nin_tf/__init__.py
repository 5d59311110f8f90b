"""NiN in Keras 3, built from common.spec; one package for Keras's TensorFlow, JAX and PyTorch backends.

KERAS_BACKEND chooses (the registry sets it for keras-tf, keras-jax and keras-torch; TensorFlow when
unset, whatever ~/.keras says). Keras starts its backend on import, so what that backend reads only
at start-up is set here, before any module of this package imports keras.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ["KERAS_BACKEND"] == "jax":
    # JAX reads these when it starts: float64 must be possible (the fp64 conformance mode; Keras gives
    # every tensor an explicit dtype, so float32 models stay float32), and float32 convolutions must be
    # float32 on GPUs, where JAX's default precision is TF32.
    os.environ.setdefault("JAX_ENABLE_X64", "1")
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
