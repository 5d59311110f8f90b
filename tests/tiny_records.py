"""A tiny network and a valid record of it, for the tests of bad input (test_bad_inputs.py,
test_reliability.py, test_properties.py): an 8x8 one-channel network whose float64 reference and
error model take about a second, and the tensors and metadata of its record, which each test then
damages in one place. conftest.py's `cache` and `good` fixtures build on these."""

from dataclasses import asdict

import numpy as np

from common import calc
from common.spec import Flatten, GlobalAvgPool, MaxPool, NetSpec, NiNBlock
from conformance import records
from conformance.cases import Cases

CASES = Cases(batch=2, steps=2, train_batch=2, momentum_steps=2)


def tiny(name: str = "tiny", mlp: tuple = (4,), classes: int = 10) -> NetSpec:
    """An 8x8 one-channel network: its reference and error model take about a second."""
    return NetSpec(name=name, input_shape=(1, 8, 8), num_classes=classes, layers=(
        NiNBlock(4, kernel_size=3, stride=1, padding=1, mlp=mlp), MaxPool(kernel_size=2, stride=2),
        NiNBlock(classes, kernel_size=3, stride=1, padding=1, mlp=(classes,)), GlobalAvgPool(), Flatten()))


def metadata(spec: NetSpec, **changes) -> dict:
    meta = {"format": records.FORMAT, "backend": "torch", "versions": {"torch": "2.13"}, "device": "cpu",
            "precision": "fp32", "compile": "eager", "numerics": {"tf32": "False"}, "cases": asdict(CASES),
            "variants": {spec.name: {"spec": spec.to_dict(),
                                     "layer_shapes": [list(s) for s in calc.layer_output_shapes(spec)],
                                     "param_count": calc.param_count(spec)}},
            "running_variance": "biased", "hyperparameters": "exact", "created": "2026-01-01T00:00:00+00:00"}
    meta.update(changes)
    return meta


def synthetic_tensors(spec: NetSpec, values: dict | None = None) -> dict:
    """The tensors a record of `spec` holds: the reference's values (random for what it has none of: the
    midpoint checkpoint), or random ones of the right shapes."""
    rng = np.random.default_rng(0)
    return {f"{spec.name}/{k}": np.asarray(values[k] if values is not None and k in values
                                           else rng.normal(size=shape)).reshape(shape).astype(np.float32)
            for k, shape in records.expected_tensors(spec, CASES).items()}
