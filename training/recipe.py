"""What a training run is: its settings, the named recipes, the learning rate of every step, the seeds.

Everything here is plain Python and NumPy: the driver computes the learning-rate table and the
per-epoch seeds once, and every backend applies them with its own framework's tools (a PyTorch
param group, a Keras LearningRateSchedule, an optax schedule, Gluon's `set_learning_rate`), so a
recipe means the same numbers in all four.

Randomness is a function of (seed, epoch): the canonical initial weights come from `seed`
(common.weights.init), the data order of epoch e from (seed, e) (common.data.epoch_order) and the
dropout masks of epoch e from the framework's own generator restarted at `dropout_seed(seed, e)`.
A checkpoint taken between epochs therefore needs no framework RNG state to resume bitwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from common import backends
from common import spec as specs

OPTIMIZERS = ("sgd", "momentum")  # plain SGD (the chapter) or heavy-ball momentum, coupled L2 in both
SCHEDULES = ("constant", "cosine", "linear")  # after `warmup` epochs of linear warm-up from lr / warmup steps
PRECISIONS = ("fp32", "fast")
COMPILES = ("eager", "compiled")
DEVICES = ("cpu", "gpu")
MIN_SIZE = 67  # the smallest input the d2l networks accept: 11x11 stride 4, then three 3x3 stride-2 pools


class SettingsError(ValueError):
    """A setting that cannot work; the message names the flag and what was expected."""


@dataclass(frozen=True)
class Settings:
    """Every setting of one run: the header of its metrics names them all."""
    backend: str
    variant: str = "d2l"
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9  # used by optimizer "momentum" only
    schedule: str = "constant"
    warmup: float = 0.0  # epochs of linear warm-up (may be fractional)
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 5
    resize: int = 224
    train_limit: int = 0  # 0: all 60,000 training images; else the first N in file order
    test_limit: int = 0  # 0: all 10,000 test images
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    compile: str = "compiled"
    max_loss: float = 100.0  # a batch loss above this (or not finite) stops the run: it diverged
    eval_every: int = 1  # test every N epochs (and after the last); the others' test fields are NaN
    recipe: str = "chapter"  # the named recipe the other fields started from

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def momentum_used(self) -> float:
        return self.momentum if self.optimizer == "momentum" else 0.0


# The chapter's recipe; the book's current one; ours (docs/training.md justifies it with measurements).
RECIPES: dict[str, dict] = {
    "chapter": {"optimizer": "sgd", "lr": 0.1, "schedule": "constant", "warmup": 0.0, "weight_decay": 0.0,
                "batch_size": 128, "epochs": 5},
    "book": {"optimizer": "sgd", "lr": 0.05, "schedule": "constant", "warmup": 0.0, "weight_decay": 0.0,
             "batch_size": 128, "epochs": 10},
    "tuned": {"optimizer": "momentum", "lr": 0.02, "momentum": 0.9, "schedule": "cosine", "warmup": 1.0,
              "weight_decay": 5e-4, "batch_size": 64, "epochs": 20},
}
TUNABLE = ("optimizer", "lr", "momentum", "schedule", "warmup", "weight_decay", "batch_size", "epochs")


def from_recipe(name: str, backend: str, **overrides) -> Settings:
    """A named recipe's settings, with every override that is not None."""
    if name not in RECIPES:
        raise SettingsError(f"--recipe: expected one of {sorted(RECIPES)}, got {name!r}")
    fields = {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}
    return Settings(backend=backend, recipe=name, **fields)


def _number(value, flag: str, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise SettingsError(f"{flag}: expected a number in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")


def _integer(value, flag: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(f"{flag}: expected an integer from {low} to {high}, got {value!r}")


def _choice(value, flag: str, choices) -> None:
    if value not in choices:
        raise SettingsError(f"{flag}: expected one of {list(choices)}, got {value!r}")


def validate(s: Settings) -> None:
    """Raise SettingsError naming the first flag whose value cannot work."""
    _choice(s.backend, "--backend", sorted(backends.BACKENDS))
    _choice(s.optimizer, "--optimizer", OPTIMIZERS)
    _choice(s.schedule, "--schedule", SCHEDULES)
    _choice(s.device, "--device", DEVICES)
    _choice(s.precision, "--precision", PRECISIONS)
    _choice(s.compile, "--compile", COMPILES)
    _choice(s.recipe, "--recipe", sorted(RECIPES))
    _number(s.lr, "--lr", 0.0, 100.0, low_open=True)
    _number(s.momentum, "--momentum", 0.0, 0.999)
    _number(s.weight_decay, "--weight-decay", 0.0, 1.0)
    _number(s.warmup, "--warmup", 0.0, 1000.0)
    _number(s.max_loss, "--max-loss", 0.0, 1e30, low_open=True)
    _integer(s.batch_size, "--batch-size", 1, 65536)
    _integer(s.epochs, "--epochs", 1, 10000)
    _integer(s.resize, "--resize", 1, specs.MAX_SIZE)
    _integer(s.train_limit, "--train-limit", 0, 60000)
    _integer(s.test_limit, "--test-limit", 0, 10000)
    _integer(s.seed, "--seed", 0, 2**31 - 1)
    _integer(s.eval_every, "--eval-every", 1, 10000)
    if s.warmup > s.epochs:
        raise SettingsError(f"--warmup: {s.warmup:g} epochs of warm-up is more than --epochs {s.epochs}")
    network(s)  # the variant exists and fits the resize


def network(s: Settings) -> specs.NetSpec:
    """The run's network: the variant (or JSON spec) at --resize x --resize."""
    try:
        spec = specs.get(s.variant)
        c = spec.input_shape[0]
        return dataclasses.replace(spec, input_shape=(c, s.resize, s.resize))
    except specs.SpecError as e:
        raise SettingsError(f"--variant {s.variant} at --resize {s.resize}: {e}") from None


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Every image once per epoch; the last batch may be smaller (as the chapter's DataLoader does)."""
    return -(-train_images // batch_size)


def lr_table(s: Settings, steps: int) -> np.ndarray:
    """The learning rate of every step (float64, epochs * steps entries): linear warm-up over
    `warmup` epochs to `lr`, then constant, cosine to 0 or linear to 0 over the remaining steps."""
    total = s.epochs * steps
    warm = min(round(s.warmup * steps), total)
    t = np.arange(total, dtype=np.float64)
    out = np.full(total, float(s.lr))
    if warm:
        out[:warm] = s.lr * (t[:warm] + 1) / warm
    rest = total - warm
    if rest and s.schedule != "constant":
        progress = (t[warm:] - warm) / rest
        out[warm:] = s.lr * (0.5 * (1 + np.cos(np.pi * progress)) if s.schedule == "cosine" else 1 - progress)
    return out


def range_test_table(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The LR range test's rates: geometric from min_lr to max_lr over `steps` steps."""
    return np.geomspace(min_lr, max_lr, steps)


def dropout_seed(seed: int, epoch: int) -> int:
    """The seed each backend restarts its dropout generator at, at the start of epoch `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, 0x6472]).generate_state(1)[0] & 0x7FFFFFFF)
