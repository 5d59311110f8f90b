"""How much signal the canonical (Xavier) init lets through NiN, measured with the float64 reference.

    python -m training.init_signal --variant d2l d2l-linear-head --resize 224 --images 8 [--out FILE.md]

For each variant: the RMS of every spec layer's output on real Fashion-MNIST images, the logits'
size, the loss, and each block's gradient norm relative to its weights' norm (how fast plain SGD
at lr 1 would move it). NumPy only (common.reference): no framework, the same for every backend.
It explains the plateau every backend sits on at the start (docs/training.md, exercise 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from common import data, provenance, reference, tables, weights
from common import spec as specs
from common.fsio import atomic_write_text


def measure(variant: str, resize: int, images: int, seed: int = 0) -> dict:
    spec = specs.get(variant).with_dropout(0.0)
    spec = dataclasses.replace(spec, input_shape=(spec.input_shape[0], resize, resize))
    w = weights.init(spec, seed)
    x_all, y_all = data.load("train")
    x = data.preprocess(x_all[:images], spec)
    y = y_all[:images].astype(np.int64)
    logits, outputs = reference.forward(spec, w, x, return_layer_outputs=True)
    loss, grads = reference.loss_and_grads(spec, w, x, y)
    layers = [(f"{i}: {layer.kind}", float(np.sqrt(np.mean(o ** 2))), float(np.mean(o > 0)))
              for i, (layer, o) in enumerate(zip(spec.layers, outputs))]
    blocks = {}
    for name, g in grads.items():
        if name.endswith(".weight"):
            block = name.split(".")[0]
            gn, wn = blocks.get(block, (0.0, 0.0))
            blocks[block] = (gn + float(np.sum(g ** 2)), wn + float(np.sum(w[name].astype(np.float64) ** 2)))
    return {"variant": variant, "resize": resize, "images": images, "loss": float(loss),
            "logit_rms": float(np.sqrt(np.mean(logits ** 2))), "logit_spread": float(np.mean(logits.std(axis=1))),
            "zero_logits": float(np.mean(np.all(logits <= 0, axis=1))), "layers": layers,
            "grad_ratio": {b: float(np.sqrt(gn / wn)) for b, (gn, wn) in blocks.items()}}


def render(results: list[dict], command: str, *, prov: dict | None = None) -> str:
    """The Markdown report; `prov` (common.provenance.collect) names the date, commit and machine."""
    out = ["# The signal at the canonical init", "",
           "Float64 reference (`common.reference`), dropout off, Xavier-uniform init of seed 0, the first "
           f"{results[0]['images']} training images.", ""]
    for r in results:
        out += [f"## {r['variant']} at {r['resize']}x{r['resize']}", "",
                f"Loss {r['loss']:.6f} (ln 10 = {np.log(10):.6f}); logits RMS {r['logit_rms']:.3g}, spread across "
                f"classes {r['logit_spread']:.3g}; images with every logit <= 0: {r['zero_logits']:.0%}.", ""]
        out += tables.markdown(["layer", "output RMS", "share > 0"],
                               [(n, f"{rms:.3g}", f"{pos:.2f}") for n, rms, pos in r["layers"]])
        out += ["", "Gradient norm / weight norm per block (plain SGD moves a block by lr times this per step): "
                + ", ".join(f"{b} {v:.3g}" for b, v in r["grad_ratio"].items()) + ".", ""]
    out += ["Command:", "", "```", command, "```", ""]
    if prov:  # float64 NumPy: the machine changes the last bits at most, not the figures above
        date, commit, _command, machine, python, _versions = provenance.lines(prov)
        out += [f"{date}; {commit}.", "", f"{machine}.", "", f"{python}; NumPy {np.__version__}.", ""]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.init_signal", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", nargs="+", default=["d2l", "d2l-linear-head"])
    p.add_argument("--resize", type=int, default=224)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--out", help="also write this Markdown file")
    args = p.parse_args(argv)
    results = [measure(v, args.resize, args.images) for v in args.variant]
    command = "python -m training.init_signal " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, command, prov=provenance.collect(argv=command.split()))
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
