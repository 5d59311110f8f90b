"""Fashion-MNIST in NumPy: find or download the four IDX files, verify them, batch and resize.

Where the files are looked for, the same way by every command: the `data_dir` argument when one is
given; otherwise $NIN_DATA_DIR, then a copy beside the checkout (../shared/data/fashion-mnist, as on
the project's CI machines), then ~/.cache/nin/fashion-mnist. Missing files are downloaded into the
first of these that is writable, $NIN_DATA_DIR or the cache (when `download=True`), and every file
is verified by the sha256 of its decompressed IDX content (gzip headers differ between mirrors; the
content does not). A file that fails verification, or cannot be found, is an error that names the
file and every folder that was searched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .fsio import atomic_write_bytes
from .spec import NetSpec

FILES = {  # name -> sha256 of the decompressed IDX bytes
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
SIZES = {  # name -> bytes of the decompressed IDX content: a file is never read past this (a gzip bomb)
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
CHUNK = 1 << 20
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")


class DataError(RuntimeError):
    """A data file that is missing, corrupt or cannot be fetched; the message names the file."""


BESIDE_CHECKOUT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "fashion-mnist"


def search_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """The folders looked in, in order; the first is where downloads go."""
    if data_dir:
        return [Path(data_dir)]
    cache = Path.home() / ".cache" / "nin" / "fashion-mnist"
    env = os.environ.get("NIN_DATA_DIR")
    return ([Path(env)] if env else []) + [BESIDE_CHECKOUT, cache]


def default_dir() -> Path:
    """The first folder that holds the four files, else where they would be downloaded."""
    dirs = search_dirs()
    for d in dirs:
        if not missing_files(d):
            return d
    return dirs[0] if os.environ.get("NIN_DATA_DIR") else dirs[-1]


def missing_files(data_dir: str | Path) -> list[str]:
    """The Fashion-MNIST files (by name, .gz or not) that `data_dir` lacks."""
    return [name for name in FILES if _find(name, Path(data_dir)) is None]


def _find(name: str, data_dir: Path) -> Path | None:
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.is_file():
            return candidate
    return None


def _bounded_read(stream, name: str, path: Path) -> bytes:
    """The content of `stream`, read in chunks and never past SIZES[name] + 1 bytes: a file that
    holds (or inflates to) more is refused before it fills the memory."""
    limit, chunks, got = SIZES[name], [], 0
    while got <= limit:
        chunk = stream.read(min(CHUNK, limit + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got > limit:
        raise DataError(f"{path}: holds more than the {limit:,} bytes of Fashion-MNIST's {name}; "
                        "it is not that file (delete it to download it again)")
    return b"".join(chunks)


def _content(opened, name: str, path: Path) -> bytes:
    """The decompressed content of an open binary file (gzip or not, by its magic, whatever its name)."""
    try:
        magic = opened.peek(2)[:2] if hasattr(opened, "peek") else b""
        if magic == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=opened) as z:
                return _bounded_read(z, name, path)
        return _bounded_read(opened, name, path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a damaged or truncated stream
        raise DataError(f"{path}: cannot be decompressed ({e}); delete it to download it again") from None


def _read_bytes(path: Path, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = _content(f, name, path)
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not raw:
        raise DataError(f"{path}: is empty (0 bytes); delete it to download it again")
    return raw


def _verify(name: str, raw: bytes, path: Path) -> None:
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name]:
        raise DataError(f"{path}: sha256 of its content is {digest}, expected {FILES[name]}; "
                        "the file is corrupt or not Fashion-MNIST (delete it to download it again)")


def _download(name: str, data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / f"{name}.gz"
    errors = []
    for mirror in MIRRORS:
        url = mirror + f"{name}.gz"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                payload = r.read(SIZES[name] + 1024)  # gzip never grows these files beyond a header's worth
            _verify(name, _content(io.BufferedReader(io.BytesIO(payload)), name, Path(url)), Path(url))
            atomic_write_bytes(target, payload)
            return target
        except (OSError, DataError) as e:
            errors.append(f"{url}: {' '.join(str(e).split())}")
    raise DataError(f"could not download {name}.gz into {data_dir} ({'; '.join(errors)}); put the file there "
                    "by hand, or set NIN_DATA_DIR to a folder that has it")


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def load(split: str = "train", data_dir: str | Path | None = None, download: bool = True):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of the 'train' or 't10k'/'test' split."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    dirs = search_dirs(data_dir)
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{prefix}-{kind}"
        path = next((p for p in (_find(name, d) for d in dirs) if p), None)
        if path is None:
            looked = ", ".join(str(d) for d in dirs)
            if not download:
                raise DataError(f"{name}(.gz) is not in {looked} and download=False")
            target = dirs[0] if data_dir or os.environ.get("NIN_DATA_DIR") else dirs[-1]
            try:
                path = _download(name, target)
            except DataError as e:
                raise DataError(f"{name}(.gz) is in none of {looked}, and {e}") from None
        raw = _read_bytes(path, name)
        _verify(name, raw, path)
        arrays.append(_parse_idx(raw, path))
    return arrays[0], arrays[1]


def ensure(data_dir: str | Path | None = None, *, download: bool = True) -> dict[str, Path]:
    """Make the four files available and verified (`make setup` runs this as `nin data`): each is
    found where `load` looks, downloaded where it is missing (when `download`), and its content's
    sha256 checked. Returns name -> the file. A file that cannot be had is one DataError that says
    where to put it."""
    dirs = search_dirs(data_dir)
    looked = ", ".join(map(str, dirs))
    found = {}
    for name in FILES:
        path = next((p for p in (_find(name, d) for d in dirs) if p), None)
        if path is None and download:
            target = dirs[0] if data_dir or os.environ.get("NIN_DATA_DIR") else dirs[-1]
            try:
                path = _download(name, target)
            except DataError as e:
                raise DataError(f"Fashion-MNIST's {name}.gz is in none of {looked} and {e}") from None
        if path is None:
            raise DataError(f"Fashion-MNIST's {name}.gz is in none of {looked}: put the four files "
                            f"({', '.join(f + '.gz' for f in FILES)}) in one of them, or set NIN_DATA_DIR")
        _verify(name, _read_bytes(path, name), path)
        found[name] = path
    return found


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation with half-pixel centres (torchvision's Resize, no antialias)."""
    m = np.zeros((n_out, n_in))
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = centres - lo
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def input_matrices(spec: NetSpec, size: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """(rows (H, 28), cols (W, 28)) float32 such that rows @ X @ cols.T is a uint8 28x28 image X as
    `preprocess` makes it (bilinear, half-pixel centres, scaled to [0, 1]; the 1/255 is in rows).
    Every training backend applies the two on its device with its own matmul: the same pixels to
    float32 precision, and 28x28 bytes per image cross to the device instead of H x W floats."""
    _, h, w = spec.input_shape
    return ((_bilinear_matrix(size[0], h) / 255.0).astype(np.float32),
            _bilinear_matrix(size[1], w).astype(np.float32))


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits n training images: a function of (seed, epoch) alone,
    so a resumed run, and every backend, sees the same batches as an uninterrupted run."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def preprocess(images: np.ndarray, spec: NetSpec) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, C, H, W) in [0, 1] at the spec's input size; the grey
    channel is repeated when the spec wants more than one (the paper's 3-channel input)."""
    c, h, w = spec.input_shape
    x = images.astype(np.float64) / 255.0
    if x.shape[1:] != (h, w):
        rh, rw = _bilinear_matrix(x.shape[1], h), _bilinear_matrix(x.shape[2], w)
        x = np.einsum("hi,nij,wj->nhw", rh, x, rw, optimize=True)
    return np.repeat(x[:, None], c, axis=1).astype(np.float32)


def batches(images: np.ndarray, labels: np.ndarray, spec: NetSpec, batch_size: int, *,
            shuffle: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool = False
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(float32 NCHW images, int32 labels) batches, resized as they are made (224x224 for the whole
    training set would be 12 GB). The order is a function of (seed, epoch) alone, so a resumed run
    sees the same batches as an uninterrupted one."""
    order = epoch_order(len(images), seed=seed, epoch=epoch) if shuffle else np.arange(len(images))
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield preprocess(images[idx], spec), labels[idx].astype(np.int32)


def fixed_batches(spec: NetSpec, steps: int, batch_size: int, data_dir=None, *, download: bool = True):
    """The first steps * batch_size training images, in file order: the conformance training run."""
    if spec.num_classes < len(CLASSES):
        raise DataError(f"{spec.name}: num_classes is {spec.num_classes}, but Fashion-MNIST's labels go up to "
                        f"{len(CLASSES) - 1}: a network that trains on it needs num_classes >= {len(CLASSES)}")
    images, labels = load("train", data_dir, download)
    return list(batches(images[:steps * batch_size], labels[:steps * batch_size], spec, batch_size))
