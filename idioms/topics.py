"""The topics of `nin idioms`, as data: per topic, what to cut from each backend and what differs.

A `Cut` names top-level definitions of one backend file (functions, classes or constants), cut from
the live source by `idioms.source` (never copied here, so the page cannot go stale unnoticed), with
the module's own helpers and constants they use. A marked region is named "region:NAME" and spans
the lines between `# idiom: NAME` and `# end idiom` in the backend file (none is used yet: whole
functions need no edit of a backend file).

A `Note` is one difference that matters, in one sentence, with its evidence:
    evidence      test ids, "tests/<file>.py::<test function>" (a parametrized test by its function name)
    checks        conformance-matrix checks, names in conformance.tolerances.CHECKS (each judged for every
                  record by `nin compare`, and in the tests by tests/test_backends.py::test_matches_reference)
    planted_bugs  planted bugs by their name in tests/mutations.py's catalogue; each must be caught, in every
                  run that results/mutations/*.json holds of it, by every check the note cites (by some
                  check where it cites none): the page states what the results measured, never more
    matrix        "<field>=<value>" (field: backend, compile, precision, device, variant): records the note
                  leans on; the page says what records/matrix.json holds of them, as proof when they are
                  there and pass, as "not yet proven" when they are not
    gap           what no test proves yet, said plainly on the page (a note with no evidence must say it);
                  a claim about the committed records or results goes in `matrix` or `planted_bugs`, where
                  it is computed, not here
tests/test_idioms.py fails when a cited test, check, planted bug or definition does not exist, and when a
cited planted bug is not caught by the note's checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common import backends

PUBLIC = ("*",)  # as a Cut's names: every public function and class of the file, in source order


@dataclass(frozen=True)
class Cut:
    file: str  # the backend file, relative to its package: "model.py"
    names: tuple[str, ...]  # top-level definitions, "region:NAME" for a marked region, or PUBLIC
    helpers: bool = True  # also the module's private functions, classes and constants the names use


@dataclass(frozen=True)
class Note:
    text: str  # one sentence; `code` in backticks
    evidence: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    planted_bugs: tuple[str, ...] = ()  # mutant names of tests/mutations.py's catalogue
    matrix: tuple[str, ...] = ()  # "<field>=<value>": records of the committed matrix the note leans on
    gap: str = ""  # what is not proven yet (never what a committed file holds: `matrix` computes that)

    @property
    def proven(self) -> bool:
        return bool(self.evidence or self.checks or self.planted_bugs)


@dataclass(frozen=True)
class Topic:
    key: str  # what `--topic` takes
    title: str
    summary: str
    cuts: dict[str, tuple[Cut, ...]]  # package -> what to cut from it
    notes: tuple[Note, ...] = field(default=())


# The columns: every registered package, in the registry's order (the chapter's, d2l's tabs: MXNet,
# PyTorch, TensorFlow, JAX), headed by the framework as the registry names it.
PACKAGES = backends.package_titles()


def same(*cuts: Cut) -> dict[str, tuple[Cut, ...]]:
    """The same cut from every package."""
    return {package: cuts for package in PACKAGES}


# The training loop of `nin train`: building the trainer and one epoch (their private helpers come along).
LOOP = Cut("loop.py", ("make_trainer", "train_epoch"))

T = "tests/test_backends.py::"
C = "tests/test_common.py::"
K = "tests/test_conformance.py::"
B = "tests/test_bench.py::"
M = "tests/test_mirror.py::"
L = "tests/test_training.py::"
D = "tests/test_distributed.py::"

TOPICS: tuple[Topic, ...] = (
    Topic(
        "block", "The NiN block",
        "A k x k convolution, then 1 x 1 convolutions, each followed by a ReLU (batch norm between them in "
        "`d2l-bn`): the same block in each framework's own layers and argument names.",
        same(Cut("model.py", ("nin_block",))),
        (
            Note("The same arguments have other names: `stride` and `padding` in PyTorch, `strides` in Gluon and "
                 "Keras, pairs `strides=(s, s)`, `padding=((p, p), (p, p))` in Flax, and Gluon fuses the ReLU "
                 "into `Conv2D(activation=\"relu\")`; the contract's `nin_block` has one signature for all four.",
                 evidence=(M + "test_every_registered_package_fulfils_the_contract",
                           T + "test_layer_shapes_match_spec"),
                 planted_bugs=("mxnet-wrong-stride", "jax-wrong-padding")),
            Note("PyTorch and Gluon are NCHW with OIHW kernels, Keras and Flax NHWC with HWIO kernels "
                 "(`keras.Input((None, None, in_channels))` puts channels last); the layout is converted only "
                 "at the boundary.",
                 evidence=(C + "test_layout_converters_invert_each_other", T + "test_weights_round_trip"),
                 checks=("logits",), planted_bugs=("keras-nchw-reshaped", "jax-nchw-reshaped")),
            Note("Keras's `Conv2D` takes no number for padding, only `\"valid\"` or `\"same\"` (which pads "
                 "(k - 1) // 2 before and the rest after), so the block uses `\"same\"` where that is its padding "
                 "(stride 1, p = (k - 1) / 2: the chapter's 5x5 and 3x3 convs; over ten times faster in float64 "
                 "on JAX, whose CPU gradient of a valid conv over a padded input is slow) and `ZeroPadding2D(p)` "
                 "before a valid convolution elsewhere.",
                 evidence=(T + "test_json_spec_builds_and_matches_reference", T + "test_layer_shapes_match_spec"),
                 checks=("logits",), planted_bugs=("keras-conv-same-padding",)),
            Note("Batch-norm momentum means opposite things: the spec's is the share of the running statistic "
                 "kept (Gluon, Keras and Flax take it as is), PyTorch's the share replaced, hence "
                 "`momentum=1 - norm.momentum`.",
                 checks=("running_statistics",),
                 planted_bugs=("torch-bn-momentum-inverted", "mxnet-bn-momentum-inverted", "keras-bn-momentum-inverted",
                               "jax-bn-momentum-inverted")),
            Note("Batch-norm epsilon defaults differ (1e-3 in Keras, 1e-5 in the others), so every block passes "
                 "the spec's `eps`; the logits case runs batch norm in evaluation mode on random running "
                 "statistics, where epsilon shows.",
                 checks=("logits",), planted_bugs=("keras-bn-default-epsilon",)),
            Note("A convolution followed by batch norm has no bias (`bias=norm is None`, `use_bias=False`): batch "
                 "norm subtracts it away, so its exact gradient is zero.",
                 evidence=(T + "test_parameter_count_matches_spec",)),
            Note("Flax's `BatchNorm` is built with `use_fast_variance=False`, because its default computes the "
                 "variance as E[x^2] - E[x]^2, which loses float32 digits where the mean is large against the "
                 "spread.",
                 gap="`use_fast_variance=True`, planted in the Flax backend with tests/mutations.py's machinery, "
                     "passes every matrix check in fp32 and fp64: the worst share of a bound goes from 0.22 to 0.45 "
                     "(gradients) in fp32 and stays at 0.22 in fp64 on the planted-bug case, and goes from 0.33 to "
                     "0.39 in fp32 and 0.32 to 0.32 in fp64 on `d2l-bn`, so no check tells the two variance "
                     "formulas apart at these sizes."),
        ),
    ),
    Topic(
        "build", "Building the network from the spec",
        "One top-level layer per entry of `spec.layers`, so that layer i of every framework is layer i of "
        "the spec; no backend writes a channel count or a size.",
        same(Cut("model.py", ("build",))),
        (
            Note("Global average pooling is written as a pool over the whole map (`AdaptiveAvgPool2d((1, 1))`, "
                 "`GlobalAvgPool2D`, `GlobalAveragePooling2D`, a mean over H and W in Flax), never as a 5 x 5 "
                 "window that fits one input size only.",
                 evidence=(C + "test_no_spec_number_is_written_in_a_backend",
                           T + "test_json_spec_builds_and_matches_reference")),
            Note("Every output size rounds down, floor((n + 2p - k) / s) + 1: PyTorch's `ceil_mode` and Gluon's "
                 "`pooling_convention=\"full\"` stay off, and the paper's Caffe pools, which round up, are written "
                 "as padding 1 in the spec.",
                 evidence=(C + "test_floor_rounding_documented", T + "test_layer_shapes_match_spec"),
                 planted_bugs=("torch-ceil-mode", "mxnet-ceil-mode")),
            Note("A padded max pool pads with -inf in PyTorch, Gluon and Flax but needs `ZeroPadding2D` in Keras "
                 "(its `padding=\"same\"` pads one side only); zeros and -inf agree because the pool's input "
                 "comes out of a ReLU.",
                 evidence=(T + "test_json_spec_builds_and_matches_reference",), checks=("logits",),
                 planted_bugs=("jax-pool-same-padding",)),
            Note("Placement and dtype happen at different moments: PyTorch moves the finished model with "
                 "`.to(device, dtype)`, Gluon initialises on a context and then `cast`s, Keras builds under a "
                 "dtype policy and `keras.device`, Flax creates its parameters under `jax.default_device` with "
                 "`param_dtype`.",
                 evidence=(K + "test_fp64_records_meet_the_reference_at_float64_resolution",)),
            Note("Gluon and Keras infer input channels from the first batch unless told: `in_channels=` (Gluon) "
                 "and a `keras.Input` (Keras) create the weights at once, as PyTorch and Flax do, so canonical "
                 "weights can be loaded before any forward pass.",
                 evidence=(T + "test_weights_round_trip", T + "test_parameter_count_matches_spec")),
        ),
    ),
    Topic(
        "weights", "Initialisation and loading canonical weights",
        "Every check starts from canonical weights (`common.weights`, OIHW, float32): each backend maps "
        "canonical names to its own tensors, converts the layout, and writes in place.",
        same(Cut("model.py", ("canonical_tensors", "to_canonical", "from_canonical", "load_weights"))),
        (
            Note("Default initialisers differ (the chapter's Gluon code asks for `Xavier()`, PyTorch uses "
                 "Kaiming-uniform with a = sqrt(5), Keras Glorot-uniform, Flax LeCun-normal), so no check "
                 "relies on them: every case loads its weights from `common.weights` first.",
                 evidence=(C + "test_init_is_seeded_and_follows_the_spec", T + "test_weights_round_trip"),
                 checks=("logits", "trajectory")),
            Note("Kernels cross the boundary as OIHW: Keras and Flax transpose their HWIO kernels in "
                 "`to_canonical` and `from_canonical`, PyTorch and Gluon pass theirs through.",
                 evidence=(T + "test_weights_round_trip", C + "test_layout_converters_invert_each_other"),
                 checks=("gradients",),
                 planted_bugs=("torch-kernel-flipped", "mxnet-kernel-transposed", "keras-kernel-transposed",
                               "jax-kernel-transposed")),
            Note("Batch norm's four tensors have four sets of names (`gamma`, `beta`, `running_mean`, `running_var` "
                 "in Gluon; `weight`, `bias` in PyTorch; `moving_mean`, `moving_variance` in Keras; `scale`, "
                 "`bias`, `mean`, `var` in Flax), mapped once in `BN_NAMES`.",
                 evidence=(T + "test_parameter_count_matches_spec",), checks=("logits",),
                 planted_bugs=("keras-bn-mean-var-swapped", "jax-bn-scale-bias-swapped")),
            Note("Each framework writes in place its own way (`copy_` under `torch.no_grad()`, "
                 "`Parameter.set_data`, `Variable.assign`, `t[...] =` on an `nnx.Variable`), and a tensor of the "
                 "wrong shape, or a missing one, is named before anything is written.",
                 evidence=(T + "test_load_weights_names_the_bad_tensor",)),
        ),
    ),
    Topic(
        "dropout", "Dropout and train / eval mode",
        "`forward(model, images, training=...)`: one flag in the contract, four mechanisms underneath; "
        "dropout drops and batch norm uses batch statistics only in training.",
        same(Cut("model.py", ("forward",))),
        (
            Note("The switch is a method in PyTorch (`model.train(training)`), a scope in Gluon "
                 "(`autograd.train_mode()` / `predict_mode()`; `autograd.record()` implies training), an "
                 "argument of each call in Keras (`training=True`; `predict_on_batch` is inference) and "
                 "`model.train()` / `model.eval()` in Flax, which sets every `Dropout`'s `deterministic`.",
                 evidence=(T + "test_dropout_acts_in_training_only",), checks=("dropout",),
                 planted_bugs=("torch-dropout-in-eval", "mxnet-train-mode-in-eval", "jax-dropout-off-in-training")),
            Note("All four use inverted dropout (a fraction p zeroed, the rest scaled by 1 / (1 - p), the identity "
                 "in evaluation), so a forgotten switch leaves dropout silently off, or on, without changing any "
                 "shape.",
                 evidence=(T + "test_dropout_acts_in_training_only",), checks=("dropout",)),
            Note("Masks come from each framework's own random streams (`torch.manual_seed`, `mx.random.seed`, "
                 "each Keras `Dropout` layer's `seed_generator`, `nnx.reseed(model, dropout=seed)`), so they are "
                 "judged statistically, never bit for bit.",
                 evidence=(T + "test_dropout_acts_in_training_only",), checks=("dropout",),
                 planted_bugs=("mxnet-dropout-keep-prob", "keras-dropout-keep-prob")),
            Note("Running statistics are updated with the unbiased batch variance (n / (n - 1)) in PyTorch and the "
                 "biased one in Gluon, Keras and Flax, and Gluon updates them in the backward pass, so a training "
                 "forward alone leaves them.",
                 checks=("running_statistics",), planted_bugs=("jax-running-var-unbiased",)),
        ),
    ),
    Topic(
        "loss", "The loss and its reduction",
        "Softmax cross-entropy on logits; what differs is the reduction over the batch, the argument order "
        "and the label dtype.",
        same(Cut("train.py", ("cross_entropy",))),
        (
            Note("Gluon's `SoftmaxCrossEntropyLoss` returns one loss per example, `backward()` sums them and "
                 "`Trainer.step(batch_size)` divides by the batch; PyTorch and Keras (`sum_over_batch_size`) "
                 "average, and optax's per-example loss is averaged by `.mean()`.",
                 checks=("loss", "gradients", "trajectory"), planted_bugs=("torch-loss-sum", "jax-loss-sum")),
            Note("Keras takes `(labels, logits)`, the others `(logits, labels)`, and since every network ends in "
                 "logits Keras needs `from_logits=True` and optax the `_with_integer_labels` variant.",
                 checks=("loss",), planted_bugs=("keras-loss-from-probabilities",)),
        ),
    ),
    Topic(
        "optimizer", "The optimizer step",
        "SGD with momentum and coupled weight decay, the suite's convention: g += wd w; v = m v + g; "
        "w -= lr v. Two frameworks need help to say it.",
        {**same(Cut("train.py", ("make_optimizer",))),
         "nin_mxnet": (Cut("train.py", ("make_optimizer", "train_step")),)},
        (
            Note("Momentum has two formulations that agree for a constant learning rate: PyTorch and optax keep "
                 "v = m v + g and step w -= lr v, Gluon and Keras keep v = m v - lr g and step w += v.",
                 checks=("momentum_trajectory", "momentum_final_weights"), planted_bugs=("torch-dampened-momentum",)),
            Note("Under a warm-up or a cosine schedule the two momentum forms differ (Keras's and Gluon's apply the "
                 "old rate to the old gradients), so `SuiteSGD` in Keras and in Gluon writes the suite's form.",
                 checks=("scheduled_trajectory", "scheduled_final_weights"),
                 planted_bugs=("keras-own-momentum-form",)),
            Note("Keras's `weight_decay=` is decoupled (w -= lr wd w, outside the momentum), so `SuiteSGD` leaves "
                 "it off and adds wd w to the gradient, as `torch.optim.SGD(weight_decay=)`, Gluon's `wd` and "
                 "`optax.add_decayed_weights` do.",
                 checks=("momentum_final_weights",),
                 planted_bugs=("keras-decoupled-weight-decay", "jax-weight-decay-after-sgd")),
            Note("Gluon's `Trainer.step(batch_size)` rescales the summed gradient by 1 / batch_size; any other "
                 "number scales every step by it.",
                 checks=("trajectory",), planted_bugs=("mxnet-step-1", "mxnet-mean-loss-step-batch")),
            Note("Weight decay reaches every trainable tensor in all four, biases and batch norm's gamma and "
                 "beta too (Gluon's `wd_mult` is 1 everywhere).",
                 checks=("momentum_final_weights",), planted_bugs=("mxnet-no-wd-on-bias-and-bn",)),
            Note("Flax's optimizer is limited to `nnx.Param` (`wrt=nnx.Param`), so batch statistics are never "
                 "decayed.",
                 gap="no check sees it: the running statistics are recorded after the plain-SGD run, which has no "
                     "weight decay, and `momentum_final_weights` holds trainable tensors only."),
        ),
    ),
    Topic(
        "compile", "Compilation",
        "`hybridize`, `torch.compile`, `jit_compile` and `jax.jit` / `nnx.jit`, as each framework's users "
        "would write them, cut from the benchmark's step (`build(compiled=True)` uses the same switches).",
        same(Cut("bench.py", ("make_step",))),
        (
            Note("Gluon compiles the block in place (`hybridize(static_alloc=True, static_shape=True)`), "
                 "PyTorch wraps the module (`torch.compile`; `nn.Module.compile()` in place in `build`), Keras "
                 "compiles its train and predict steps (`jit_compile=True`), and JAX compiles a pure function "
                 "of the split state (`jax.jit`; `nnx.jit` on the module in `train.py`).",
                 matrix=("compile=compiled",),
                 gap="no test runs compiled mode: only records made by `nin conformance --compile compiled`, "
                     "on the machine that made them, prove it."),
            Note("The first call traces and compiles, so the benchmark times it apart from the warm-up and the "
                 "timed windows.",
                 evidence=(B + "test_timing_loop_counts_windows_and_takes_the_median",)),
            Note("JAX donates the training state (`donate_argnums=0`) so that XLA may update it in place; the "
                 "other three update their parameters in place by design.",
                 gap="no test measures the memory donation saves."),
        ),
    ),
    Topic(
        "device", "Device placement and numerics switches",
        "Where a model lives, and the process-wide switches that make float32 mean float32 (no TF32) and "
        "runs repeatable.",
        same(Cut("model.py", ("default_device",)), Cut("train.py", ("configure",))),
        (
            Note("TF32 is switched off in four ways: PyTorch's `allow_tf32` flags, `NVIDIA_TF32_OVERRIDE=0` for "
                 "the cuDNN and cuBLAS under Gluon and Keras (read once, when a handle is made), and "
                 "`jax_default_matmul_precision=\"highest\"` for XLA; so `configure` runs before the first model "
                 "is built.",
                 evidence=(K + "test_record_says_what_it_tested", B + "test_torch_worker_times_a_tiny_configuration"),
                 matrix=("device=gpu",),
                 gap="TF32 acts only on GPUs, so only records made on one can show it switched off (there, the fp32 "
                     "logits check would fail with it on)."),
            Note("float64 is the dtype the model is built in for PyTorch (`.to(dtype)`), Gluon (`cast`) and Keras "
                 "(its dtype policy), but JAX also needs the process-wide flag `jax_enable_x64`, set before any "
                 "array exists.",
                 evidence=(K + "test_fp64_records_meet_the_reference_at_float64_resolution",)),
            Note("A device is a `torch.device`, an `mx.Context`, a `keras.device` name or a `jax.Device`; asking "
                 "for \"gpu\" where the framework sees none raises an error naming the framework, never a silent "
                 "CPU run.",
                 gap="exercised by `pytest --device gpu` (tests/conftest.py skips with that message); no test "
                     "asserts it."),
        ),
    ),
    Topic(
        "loop", "The training loop",
        "`nin train`'s epoch, in each framework's own loop: the batches in the driver's order onto the "
        "device, the resize on the device, forward, loss, gradients, the update at the driver's rate.",
        same(LOOP),
        (
            Note("Each loop is the one its framework teaches: Gluon's `autograd.record()` then "
                 "`trainer.step(batch_size)`; PyTorch's `zero_grad`, `backward`, `step`; Keras's `model.fit` for "
                 "one epoch with a callback for the progress; Flax NNX's step under `nnx.jit` with "
                 "`nnx.value_and_grad` and `optimizer.update`; with dropout off, the four agree to float32 noise.",
                 evidence=(L + "test_every_backend_trains_the_same_recipe_alike",), checks=("trajectory",)),
            Note("One learning-rate table, computed once by the driver, reaches each optimizer its own way: "
                 "PyTorch's param groups, Gluon's `set_learning_rate`, a Keras `LearningRateSchedule` reading the "
                 "optimizer's iteration count, an optax schedule indexing the table with optax's step count.",
                 evidence=(L + "test_lr_table_warms_up_then_follows_the_schedule",)),
            Note("The optimizer state is each framework's own (momentum buffers, Keras's optimizer variables, the "
                 "optax state) and travels in the checkpoint with the weights, so a run killed mid-epoch resumes "
                 "to the same bits.",
                 evidence=(L + "test_a_run_killed_mid_epoch_resumes_bitwise",)),
        ),
    ),
    Topic(
        "distributed", "Data parallelism",
        "The same global batch split over N replicas by each framework's own engine, the step and optimizer "
        "those of one device; what it takes to equal one device, and where batch norm does not "
        "(docs/distributed.md measures it).",
        same(Cut("distributed.py", ("data_parallel_run",))),
        (
            Note("PyTorch and Keras on PyTorch start a process per replica and wrap the model in "
                 "`DistributedDataParallel`, whose backward averages the gradients; Keras on TensorFlow runs "
                 "`strategy.run` under `MirroredStrategy`; Gluon splits the batch with `split_and_load` and its "
                 "`Trainer` reduces over the contexts; Flax and Keras on JAX only place the batch with a "
                 "`NamedSharding` and let the compiler insert the all-reduce.",
                 evidence=(D + "test_two_replicas_train_as_one_device_does",
                           D + "test_planted_bugs_of_data_parallelism_are_caught")),
            Note("Batch norm under data parallelism is per replica by default under DDP, `MirroredStrategy` and "
                 "Gluon, and global under `jax.sharding`; the synchronised forms (`SyncBatchNorm`, GPUs only; "
                 "`synchronized=True`, TensorFlow only; Gluon's contrib `SyncBatchNorm`, GPUs and float32 only) "
                 "equal one device.",
                 evidence=(D + "test_synchronised_batch_norm_is_the_global_batch_s",
                           D + "test_per_replica_batch_norm_fails_the_matrix_and_says_why")),
        ),
    ),
    Topic(
        "shapes", "Shapes and parameter counts",
        "What `nin summary` predicts, as each framework reports it: per-layer output shapes, and the "
        "trainable parameters through the canonical tensors.",
        same(Cut("model.py", ("layer_shapes", "export_weights"))),
        (
            Note("Keras and Flax report (H, W, C) per image, so `layer_shapes` turns them into (C, H, W) before "
                 "they are compared with `common.calc`'s shapes.",
                 evidence=(T + "test_layer_shapes_match_spec",)),
            Note("Frameworks count parameters differently (Keras's `count_params()` includes batch norm's moving "
                 "statistics, Gluon holds them as `grad_req=\"null\"` parameters, PyTorch as buffers, Flax as "
                 "`BatchStat`), so the count is taken from the canonical tensors, trainable ones only.",
                 evidence=(T + "test_parameter_count_matches_spec",)),
        ),
    ),
)


def get(key: str) -> Topic:
    for topic in TOPICS:
        if topic.key == key:
            return topic
    raise KeyError(key)
