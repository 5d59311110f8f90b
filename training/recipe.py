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
from dataclasses import dataclass

import numpy as np

from common import backends, calc, schedule
from common import spec as specs
from common.backends import MAX_DEVICES  # replicas of a data-parallel run
from common.data import CLASSES

OPTIMIZERS = ("sgd", "momentum")  # plain SGD (the chapter) or heavy-ball momentum, coupled L2 in both
SCHEDULES = schedule.SCHEDULES  # after `warmup` epochs of linear warm-up from lr / warmup steps
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


def _shown(value) -> str:
    """A value in a message: its repr, cut to 60 characters (an integer may have thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value, flag: str, low: float, high: float, *, low_open: bool = False) -> None:
    ok = specs.finite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise SettingsError(f"{flag}: expected a number in {'(' if low_open else '['}{low:g}, {high:g}], "
                            f"got {_shown(value)}")


def _integer(value, flag: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(f"{flag}: expected an integer from {low} to {high}, got {_shown(value)}")


def _choice(value, flag: str, choices) -> None:
    if value not in choices:
        raise SettingsError(f"{flag}: expected one of {list(choices)}, got {value!r}")


# The range of every numeric setting, by field: the flags (`--lr`, checked when the command line is
# parsed: training/cli.py) and Settings (checked again, for settings read from a run's files) use these.
NUMBERS = {"lr": (0.0, 100.0, True), "momentum": (0.0, 0.999, False), "weight_decay": (0.0, 1.0, False),
           "warmup": (0.0, 1000.0, False), "max_loss": (0.0, 1e30, True)}  # (low, high, low bound open)
INTEGERS = {"batch_size": (1, 65536), "epochs": (1, 10000), "resize": (1, specs.MAX_SIZE), "train_limit": (0, 60000),
            "test_limit": (0, 10000), "seed": (0, 2**31 - 1), "eval_every": (1, 10000)}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def validate(s: Settings) -> None:
    """Raise SettingsError naming the first flag whose value cannot work."""
    _choice(s.backend, "--backend", sorted(backends.BACKENDS))
    _choice(s.optimizer, "--optimizer", OPTIMIZERS)
    _choice(s.schedule, "--schedule", SCHEDULES)
    _choice(s.device, "--device", DEVICES)
    _choice(s.precision, "--precision", PRECISIONS)
    _choice(s.compile, "--compile", COMPILES)
    _choice(s.recipe, "--recipe", sorted(RECIPES))
    for field, (low, high, low_open) in NUMBERS.items():
        _number(getattr(s, field), flag(field), low, high, low_open=low_open)
    for field, (low, high) in INTEGERS.items():
        _integer(getattr(s, field), flag(field), low, high)
    if s.warmup > s.epochs:
        raise SettingsError(f"--warmup: {s.warmup:g} epochs of warm-up is more than --epochs {s.epochs}")
    network(s)  # the variant exists and fits the resize


def network(s: Settings) -> specs.NetSpec:
    """The run's network: the variant (or JSON spec) at --resize x --resize. It must tell apart
    Fashion-MNIST's ten classes: a spec with fewer outputs cannot be trained on its labels."""
    try:
        spec = specs.get(s.variant)
        c = spec.input_shape[0]
        spec = dataclasses.replace(spec, input_shape=(c, s.resize, s.resize))
    except specs.SpecError as e:
        raise SettingsError(f"--variant {s.variant} at --resize {s.resize}: {e}") from None
    if spec.num_classes < len(CLASSES):
        raise SettingsError(f"--variant {s.variant}: num_classes {spec.num_classes}, but Fashion-MNIST has "
                            f"{len(CLASSES)} classes (labels 0 to {len(CLASSES) - 1})")
    return spec


IMAGE_BYTES = 28 * 28  # one Fashion-MNIST image, uint8
ALL_IMAGES = 70_000  # train and test, as common.data loads them
LR_TABLE_BYTES = 64  # per step: lr_table's float64 arange, schedule and temporaries (5 at once), and a copy


def memory_bytes(s: Settings, *, range_test_steps: int | None = None) -> int:
    """Bytes a run holds at least (checked before its worker starts): the network training at
    --batch-size (calc.summary: weights, gradients, momentum, activations), every image loaded, the
    epoch's shuffled copy of the training images, and the learning-rate table (LR_TABLE_BYTES per
    step: lr_table's float64 temporaries and the framework's copy; 10,000 epochs of batch 1 are 6e8
    steps, 38 GB). The range test (range_test_steps) holds, instead of an epoch's copy, the images of
    all its steps at once, and one rate per step."""
    spec = network(s)
    model = calc.summary(spec, s.batch_size, "float32", momentum=s.momentum_used > 0).train_memory_bytes
    train = s.train_limit or 60_000
    images = (ALL_IMAGES + train) * (IMAGE_BYTES + 8)
    if range_test_steps is not None:
        return model + images + range_test_steps * (s.batch_size * (IMAGE_BYTES + 8) + 16)
    return model + images + s.epochs * steps_per_epoch(train, s.batch_size) * LR_TABLE_BYTES


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Every image once per epoch; the last batch may be smaller (as the chapter's DataLoader does)."""
    return -(-train_images // batch_size)


def check_devices(s: Settings, devices: int, train_images: int, *, nodes: int = 1) -> None:
    """--devices (on each of --nodes machines): every batch, the last partial one too, splits evenly over the
    replicas, as the engines' gradient mean assumes (a replica's mean over a smaller shard would weigh its
    images more)."""
    _integer(devices, "--devices", 1, MAX_DEVICES)
    _integer(nodes, "--nodes", 1, MAX_DEVICES)
    replicas = devices * nodes
    asked = f"--devices {devices}" + (f" on --nodes {nodes}" if nodes > 1 else "")
    last = train_images % s.batch_size
    for size, which in ((s.batch_size, "--batch-size"), (last, f"the last batch (--train-limit {train_images})")):
        if size % replicas:
            raise SettingsError(f"{asked}: {which} of {size} images does not split evenly over {replicas} replicas")


def lr_table(s: Settings, steps: int) -> np.ndarray:
    """The learning rate of every step (float64, epochs * steps entries): common.schedule's table,
    with `warmup` epochs of linear warm-up."""
    return schedule.lr_table(s.lr, total=s.epochs * steps, warmup=round(s.warmup * steps), schedule=s.schedule)


def range_test_table(min_lr: float, max_lr: float, steps: int) -> np.ndarray:
    """The LR range test's rates: geometric from min_lr to max_lr over `steps` steps."""
    return np.geomspace(min_lr, max_lr, steps)


def dropout_seed(seed: int, epoch: int) -> int:
    """The seed each backend restarts its dropout generator at, at the start of epoch `epoch`."""
    return int(np.random.SeedSequence([seed, epoch, 0x6472]).generate_state(1)[0] & 0x7FFFFFFF)
