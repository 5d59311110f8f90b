"""The chapter's network written plainly in each framework, as its readers would: the yardstick the
suite's backends must not be slower than (`nin bench --compile plain`).

Each `*_step` is the d2l code of its framework tab (fixed channel counts, the framework's default
layers and initialisers), with the training step its users write, timed by the same loop as the
backends (benchmarks.timing). Only the d2l variant exists here: that is the network the chapter
writes. Each function imports its framework itself: it runs in the backend's own process.
"""

from __future__ import annotations

import numpy as np

LR = 0.05  # the book's rate, plain SGD


def torch_step(*, mode: str, batch_size: int, device: str):
    import torch
    from torch import nn

    def nin_block(in_channels, out_channels, kernel_size, strides, padding):  # noqa: PLR0917 (the chapter's)
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, strides, padding), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU())

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    net = nn.Sequential(
        nin_block(1, 96, kernel_size=11, strides=4, padding=0), nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, strides=1, padding=2), nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, strides=1, padding=1), nn.MaxPool2d(3, stride=2),
        nn.Dropout(0.5),
        nin_block(384, 10, kernel_size=3, strides=1, padding=1),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()).to(dev)
    x = torch.randn(batch_size, 1, 224, 224, device=dev)
    y = torch.randint(0, 10, (batch_size,), device=dev)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    if mode == "train":
        net.train()

        def step():
            optimizer.zero_grad()
            loss = loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
            return loss
    else:
        net.eval()

        def step():
            with torch.no_grad():
                return net(x)

    def synchronize(result):
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step, synchronize, {"code": "d2l PyTorch tab", "device": str(dev)}


def keras_step(*, mode: str, batch_size: int, device: str):
    import keras

    def nin_block(num_channels, kernel_size, strides, padding):
        return keras.Sequential([
            keras.layers.Conv2D(num_channels, kernel_size, strides=strides, padding=padding, activation="relu"),
            keras.layers.Conv2D(num_channels, kernel_size=1, activation="relu"),
            keras.layers.Conv2D(num_channels, kernel_size=1, activation="relu")])

    net = keras.Sequential([
        keras.Input((224, 224, 1)),
        nin_block(96, kernel_size=11, strides=4, padding="valid"), keras.layers.MaxPool2D(pool_size=3, strides=2),
        nin_block(256, kernel_size=5, strides=1, padding="same"), keras.layers.MaxPool2D(pool_size=3, strides=2),
        nin_block(384, kernel_size=3, strides=1, padding="same"), keras.layers.MaxPool2D(pool_size=3, strides=2),
        keras.layers.Dropout(0.5),
        nin_block(10, kernel_size=3, strides=1, padding="same"),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Flatten()])
    # Keras's own default: model.compile() with jit_compile left to Keras ("auto")
    net.compile(optimizer=keras.optimizers.SGD(learning_rate=LR),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 224, 224, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch_size).astype(np.int32)

    def step():
        return net.train_on_batch(x, y) if mode == "train" else net.predict_on_batch(x)

    return step, (lambda result: None), {"code": "d2l TensorFlow tab, Keras 3", "jit_compile": str(net.jit_compile),
                                         "keras_backend": keras.backend.backend()}


def flax_step(*, mode: str, batch_size: int, device: str):
    from functools import partial

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    def nin_block(in_channels, out_channels, kernel_size, strides, padding, rngs):  # noqa: PLR0917 (the chapter's)
        return nnx.Sequential(
            nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=strides, padding=padding,
                     rngs=rngs), nnx.relu,
            nnx.Conv(out_channels, out_channels, (1, 1), rngs=rngs), nnx.relu,
            nnx.Conv(out_channels, out_channels, (1, 1), rngs=rngs), nnx.relu)

    rngs = nnx.Rngs(0)
    pool = partial(nnx.max_pool, window_shape=(3, 3), strides=(2, 2))
    with jax.default_device(jax.devices("gpu" if device == "gpu" else "cpu")[0]):
        net = nnx.Sequential(
            nin_block(1, 96, 11, 4, "VALID", rngs), pool,
            nin_block(96, 256, 5, 1, "SAME", rngs), pool,
            nin_block(256, 384, 3, 1, "SAME", rngs), pool,
            nnx.Dropout(0.5, rngs=rngs),
            nin_block(384, 10, 3, 1, "SAME", rngs),
            lambda x: jnp.mean(x, axis=(1, 2)))
        optimizer = nnx.Optimizer(net, optax.sgd(LR), wrt=nnx.Param)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((batch_size, 224, 224, 1), dtype=np.float32))
        y = jnp.asarray(np.random.default_rng(1).integers(0, 10, batch_size))

    @nnx.jit
    def train_step(net, optimizer, x, y):
        def loss_fn(net):
            return optax.softmax_cross_entropy_with_integer_labels(net(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(net)
        optimizer.update(net, grads)
        return loss

    @nnx.jit
    def predict(net, x):
        return net(x)

    if mode == "train":
        net.train()

        def step():
            return train_step(net, optimizer, x, y)
    else:
        net.eval()

        def step():
            return predict(net, x)

    def synchronize(result):
        if result is not None:
            jax.block_until_ready(result)

    return step, synchronize, {"code": "d2l JAX tab (Flax NNX)", "device": str(x.devices())}


def gluon_step(*, mode: str, batch_size: int, device: str):
    import mxnet as mx
    from mxnet import autograd, gluon, init
    from mxnet.gluon import nn

    def nin_block(num_channels, kernel_size, strides, padding):
        blk = nn.Sequential()
        blk.add(nn.Conv2D(num_channels, kernel_size, strides, padding, activation="relu"),
                nn.Conv2D(num_channels, kernel_size=1, activation="relu"),
                nn.Conv2D(num_channels, kernel_size=1, activation="relu"))
        return blk

    ctx = mx.gpu() if device == "gpu" else mx.cpu()
    net = nn.Sequential()
    net.add(nin_block(96, kernel_size=11, strides=4, padding=0), nn.MaxPool2D(pool_size=3, strides=2),
            nin_block(256, kernel_size=5, strides=1, padding=2), nn.MaxPool2D(pool_size=3, strides=2),
            nin_block(384, kernel_size=3, strides=1, padding=1), nn.MaxPool2D(pool_size=3, strides=2),
            nn.Dropout(0.5),
            nin_block(10, kernel_size=3, strides=1, padding=1),
            nn.GlobalAvgPool2D(), nn.Flatten())
    net.initialize(init=init.Xavier(), ctx=ctx)
    x = mx.nd.random.normal(shape=(batch_size, 1, 224, 224), ctx=ctx)
    y = mx.nd.random.randint(0, 10, shape=(batch_size,), ctx=ctx)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": LR})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step():
        if mode == "train":
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(batch_size)
            return loss
        return net(x)

    return step, (lambda result: mx.nd.waitall()), {"code": "d2l MXNet tab (nn.Sequential, not hybridized)"}


STEPS = {"torch": torch_step, "keras-tf": keras_step, "keras-jax": keras_step, "keras-torch": keras_step,
         "jax": flax_step, "mxnet": gluon_step}
