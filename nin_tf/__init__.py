"""NiN in Keras 3 on TensorFlow, built from common.spec; see model.py, train.py and bench.py."""

import os

os.environ["KERAS_BACKEND"] = "tensorflow"  # before any module here imports keras, whatever ~/.keras says
