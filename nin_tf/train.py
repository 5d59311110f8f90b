"""Training NiN the Keras way: model.compile(optimizer, loss), then train_on_batch, on any Keras backend.

Keras's own training step computes the gradients on each backend (tf.GradientTape, jax.grad or
torch autograd inside Keras), eagerly (run_eagerly=True) or compiled (jit_compile=True: XLA,
jax.jit or torch.compile). Nothing here differs per backend but `configure`'s switches, which Keras
leaves to the backend: they are set through the environment variables the libraries read.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import weakref

import keras
import numpy as np

from .model import canonical_tensors, default_device, device_of, to_canonical, to_input

PRECISIONS = ("fp32", "fp64", "fast")
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # mean over the batch


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy over the batch (Keras's "sum_over_batch_size" reduction)."""
    return LOSS(labels, logits)


class TableSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step t's rate is lrs[t] (the last entry past the end), read at the optimizer's iteration count.
    The table stays float64: SuiteSGD casts the rate to each variable's dtype, so a float64 model
    never sees a float32 rate (0.05 in float32 is 1e-9 off)."""

    def __init__(self, lrs):
        table = np.asarray(lrs, dtype=np.float64).reshape(-1)
        if not table.size:
            raise ValueError("the learning-rate table is empty")
        self.lrs = table

    def __call__(self, step):
        index = keras.ops.minimum(keras.ops.cast(step, "int32"), len(self.lrs) - 1)
        return keras.ops.take(keras.ops.convert_to_tensor(self.lrs, dtype="float64"), index)

    def get_config(self):
        return {"lrs": self.lrs.tolist()}


class SuiteSGD(keras.optimizers.SGD):
    """SGD in the suite's form, g += wd * w; v = m * v + g; w -= lr * v (momentum 0: no buffer,
    w -= lr * (g + wd * w)), PyTorch's and optax's, the rate a TableSchedule at optimizer.iterations.
    Keras's own form, v = m * v - lr * g; w += v (its weight_decay= decoupled, w -= lr * wd * w), is not
    used: it equals this one only while the rate stays constant. keras.optimizers.SGD gives the
    momentum slots (self.momentums, one per variable, by _get_variable_index); update_step is ours."""

    def __init__(self, lrs, *, momentum: float = 0.0, weight_decay: float = 0.0, **kwargs):
        super().__init__(learning_rate=TableSchedule(lrs), momentum=momentum, **kwargs)
        # TensorFlow makes a Python float a float32 tensor before a cast (0.9 -> 0.89999998): NumPy
        # float64s (floats) keep 53 bits when update_step makes them tensors of the variable's dtype
        self.momentum = np.float64(momentum)
        self.l2 = np.float64(weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = keras.ops.cast(learning_rate, dtype)  # the float64 table's entry, in the variable's dtype
        if self.l2:
            gradient = keras.ops.add(gradient,
                                     keras.ops.multiply(keras.ops.convert_to_tensor(self.l2, dtype=dtype), variable))
        if self.momentum:
            v = self.momentums[self._get_variable_index(variable)]
            self.assign(v, keras.ops.add(keras.ops.multiply(v, keras.ops.convert_to_tensor(self.momentum, dtype=dtype)),
                                         gradient))
            gradient = v
        self.assign_sub(variable, keras.ops.multiply(gradient, lr))


class GradientCapture(keras.optimizers.Optimizer):
    """An optimizer that keeps each gradient instead of applying it: Keras's own training step, on any
    backend, eager or compiled, computes the gradients, and `gradient_of` reads them. Weights stay."""

    def __init__(self):
        super().__init__(learning_rate=0.0)

    def build(self, variables):
        super().build(variables)
        self.gradients = [self.add_variable_from_reference(v, name="gradient") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        self.assign(self.gradients[self._get_variable_index(variable)], gradient)

    def gradient_of(self, variable):
        return self.gradients[self._get_variable_index(variable)]


def make_optimizer(model: keras.Model, lrs, *, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """SuiteSGD over the model's trainable variables (weight decay on every one: kernels, biases,
    gamma, beta; never the running statistics, which are not trainable), built now so that its
    momentum slots exist before the first step (load_state fills them)."""
    optimizer = SuiteSGD(lrs, momentum=momentum, weight_decay=weight_decay)
    with _placed(model):
        optimizer.build(model.trainable_variables)
    return optimizer


@contextlib.contextmanager
def _in_dtype(dtype: str):
    """floatx set to the model's dtype while Keras makes the loss tracker and the metrics, so that
    they accumulate in it (a Keras metric takes floatx when it is made; fp64 stays float64)."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


_losses: dict = {}


def _loss_in(dtype: str):
    """LOSS, or when the model's dtype is not LOSS's (floatx's, configure's), the same loss in the
    model's dtype: a Keras loss casts the logits to its own dtype first."""
    if LOSS.dtype == dtype:
        return LOSS
    return _losses.setdefault(dtype, keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype))


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer, metrics: tuple = ()) -> None:
    """model.compile with this optimizer, the loss and the metrics, keeping the model's compile mode
    (see build); only when the optimizer changes, since each compile drops Keras's traced steps."""
    loss = _loss_in(model.dtype)
    if model.optimizer is not optimizer or model.loss is not loss:
        with _in_dtype(model.dtype):
            model.compile(optimizer=optimizer, loss=loss, metrics=[m() for m in metrics],
                          jit_compile=model.jit_compile, run_eagerly=model.run_eagerly)


def _batch(model: keras.Model, images: np.ndarray, labels: np.ndarray):
    return to_input(model, images), np.asarray(labels, dtype=np.int32)


def _placed(model: keras.Model):
    """Run under the model's device, as build placed it: no scope when that is the default, because
    on Keras's PyTorch backend a scope names the CPU "cpu:0" where its variables say "cpu", and
    torch.compile (jit_compile=True) refuses to mix the two in the optimizer's update."""
    where = device_of(model)
    return contextlib.nullcontext() if where == default_device() else keras.device(where)


_captures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loss_and_grads(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy in training mode and its gradient for every trainable canonical tensor."""
    capture = _captures.setdefault(model, GradientCapture())
    _compile(model, capture)
    x, y = _batch(model, images, labels)
    with _placed(model):
        loss = model.train_on_batch(x, y)
    grads = {k: to_canonical(k, capture.gradient_of(v)) for k, v in canonical_tensors(model).items() if v.trainable}
    return float(loss), grads


def train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, x, y) -> tuple[float, int]:
    """Keras's own step (model.compile with the optimizer, the loss and accuracy; train_on_batch, which
    resets the metrics first) on x in the model's input form: (mean loss, argmax(logits) == y count)."""
    _compile(model, optimizer, (lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),))
    y = np.asarray(keras.ops.convert_to_numpy(y), dtype=np.int32)
    with _placed(model):
        logs = model.train_on_batch(x, y, return_dict=True)
    return float(logs["loss"]), round(float(logs["accuracy"]) * len(y))


def configure(device: str = "cpu", precision: str = "fp32") -> dict:
    """fp32 / fp64: no TF32, deterministic kernels (conformance). fast: TF32 allowed.

    Keras has no switch of its own for these; cuBLAS and cuDNN (every backend's GPU kernels) read
    NVIDIA_TF32_OVERRIDE when they start, TensorFlow reads TF_DETERMINISTIC_OPS and XLA its flags:
    call configure before the first model is built. floatx is Keras's: float64 for fp64."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    strict = precision != "fast"
    dtype = "float64" if precision == "fp64" else "float32"
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    global LOSS  # a Keras loss keeps the dtype floatx had when it was built: build it again
    LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if strict:
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"
        os.environ["TF_DETERMINISTIC_OPS"] = "1"
        if device == "gpu" and "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()
    else:
        os.environ.pop("NVIDIA_TF32_OVERRIDE", None)
    return {
        "precision": precision,
        "keras_backend": keras.backend.backend(),
        "floatx": keras.config.floatx(),
        "dtype_policy": keras.config.dtype_policy().name,
        "NVIDIA_TF32_OVERRIDE": os.environ.get("NVIDIA_TF32_OVERRIDE"),
        "TF_DETERMINISTIC_OPS": os.environ.get("TF_DETERMINISTIC_OPS"),
        "JAX_DEFAULT_MATMUL_PRECISION": os.environ.get("JAX_DEFAULT_MATMUL_PRECISION"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def float64_limits() -> dict[str, str]:
    """Operations that compute below float64 in the fp64 mode, with the reason. Keras 3's type
    promotion maps float64 to float32 on its JAX and PyTorch backends (keras/src/backend/common/
    dtypes.py, BIT64_TO_BIT32_DTYPE, "to be aligned with JAX's default"), so every op that promotes,
    such as the global average pool's mean, the loss and BatchNormalization, computes in float32
    there; on TensorFlow float64 stays float64."""
    if keras.backend.result_type("float64", "float32") == "float64":
        return {}
    return {"all": f"Keras {keras.__version__} computes means, the loss and batch norm in float32 on its "
                   f"{keras.backend.backend()} backend (its type promotion maps float64 to float32)"}


def device_name(device: str) -> str:
    if device == "gpu":
        return f"{default_device('gpu')} ({keras.backend.backend()})"
    return platform.processor() or platform.machine()


def versions() -> dict:
    backend = keras.backend.backend()
    framework = {"tensorflow": "tensorflow-cpu", "jax": "jax", "torch": "torch"}.get(backend, backend)
    try:
        framework_version = importlib.metadata.version(framework)
    except importlib.metadata.PackageNotFoundError:
        framework_version = importlib.metadata.version(backend if backend != "tensorflow" else "tensorflow")
    return {"keras": keras.__version__, "keras_backend": backend, backend: framework_version,
            "numpy": np.__version__}
