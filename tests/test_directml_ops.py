"""Every op of the model's train and test steps has a DirectML kernel.

An op without one does not fail: TensorFlow places it on the CPU, and a DirectML user's
step silently copies tensors to the host and back. On the DirectML stack the preset tests
check each op (with its dtypes) against the plugin's registered kernels; on the current
stack, where no plugin is loaded, they check for the one op this model is known to be at
risk of: Einsum (tf.einsum; Keras 2.10's MultiHeadAttention and EinsumDense emit it). The
tf.einsum model's tests prove that both checks can fail.
"""
import functools

import numpy as np
import pytest
import tensorflow as tf

from vit_model import build_model
from vitcifar.backend import devices, op_coverage
from vitcifar.config.presets import PRESETS
from vitcifar.data import input_pipeline
from vitcifar.training import compiled, precision

keras = tf.keras
DIRECTML = devices.directml_plugin_installed()
needs_directml = pytest.mark.skipif(not DIRECTML,
                                    reason="tensorflow-directml-plugin is not installed")
# What trainer.run decides for a DirectML GPU (float32 precision), whatever this box has.
DIRECTML_DEVICE = devices.Device("DirectML", "op coverage test")


def tiny_datasets(config, images=2):
    """(train, test) datasets of `images` random images, built by the pipelines training
    uses: the steps are traced for the dtypes and label encoding (indices or one-hot) that
    a real run feeds them."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, config.num_classes, images).astype(np.int64)     # as cifar_data
    one_hot = input_pipeline.label_classes(config)
    train = input_pipeline.train_dataset(
        x, y, images, input_pipeline.make_augment(config.augmentation, one_hot), config.seed,
        0, 1)
    test = input_pipeline.eval_dataset(x, y, images, one_hot)
    return train, test


@functools.lru_cache(maxsize=None)
def preset_ops(name, policy=None):
    """{op: {signature}} of the train and test steps of PRESETS[name], built and compiled
    as trainer.run does on DirectML (float32, no XLA), or under another Keras `policy`;
    traced once per preset, policy and test run."""
    config = PRESETS[name]
    policy = policy or precision.decide("auto", DIRECTML_DEVICE, config).policy
    with precision.policy(policy):
        model = build_model(config)
        compiled.compile_model(model, config)
        return op_coverage.step_op_dtypes(model, *tiny_datasets(config))


class EinsumProjection(keras.layers.Layer):
    """(B, I) -> (B, units) as tf.einsum("bi,iu->bu"): the op DirectML has no kernel for.
    (keras.layers.EinsumDense would not do on Keras 3, which turns common subscripts into
    MatMul.)"""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        return tf.einsum("bi,iu->bu", inputs, self.kernel)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def einsum_model():
    """(B, 4) float32 -> (B, 3) logits through tf.einsum."""
    inputs = keras.Input(shape=(4,), name="features")
    hidden = EinsumProjection(8, name="einsum_projection")(inputs)
    logits = keras.layers.Dense(3, name="logits")(hidden)
    model = keras.Model(inputs, logits, name="einsum_model")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def dense_model(steps_per_execution):
    inputs = keras.Input(shape=(4,), name="features")
    logits = keras.layers.Dense(3, name="logits")(inputs)
    model = keras.Model(inputs, logits, name="dense_model")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    return model


def feature_batches():
    """Two batches of 2: (2, 4) float32 features, (2,) int64 class indices."""
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    return tf.data.Dataset.from_tensor_slices((x, np.array([0, 1, 2, 0]))).batch(2)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_steps_have_no_einsum(preset):
    ops = preset_ops(preset)
    assert {"MatMul", "BatchMatMulV2", "Softmax", "Erf"} <= set(ops)   # the ViT was traced
    assert "Einsum" not in ops


@needs_directml
@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_step_op_has_a_directml_kernel(preset, capsys):
    ops = preset_ops(preset)
    with capsys.disabled():                       # in the CI log even when it passes
        print(f"\n{preset}: {len(ops)} op types in the train and test steps\n"
              + format_op_dtypes(ops))
    assert op_coverage.missing_kernels(ops, op_coverage.directml_gpu_kernels()) == []


@needs_directml
@pytest.mark.slow
def test_directml_has_no_bfloat16_kernels_for_the_model_so_bfloat16_is_refused_there():
    """Why precision.py refuses bfloat16 on a DirectML GPU (and auto keeps float32): traced
    under mixed_bfloat16, the fast preset's matrix products, softmax, GELU and their
    gradients find no kernel in the plugin's registry (they would all run on the CPU)."""
    ops = preset_ops("fast", precision.BFLOAT16)
    missing = op_coverage.missing_kernels(ops, op_coverage.directml_gpu_kernels())
    assert {"MatMul(T=bfloat16)", "BatchMatMulV2(T=bfloat16)", "Erf(T=bfloat16)",
            "AddV2(T=bfloat16)", "Mul(T=bfloat16)"} <= set(missing), missing
    assert precision.decide("auto", DIRECTML_DEVICE, PRESETS["fast"]).policy == \
        precision.FLOAT32
    with pytest.raises(precision.UsageError, match="tensorflow-directml-plugin has no "
                                                  "bfloat16 kernels"):
        precision.decide("bfloat16", DIRECTML_DEVICE, PRESETS["fast"])


def test_einsum_model_shows_einsum():
    ops = op_coverage.step_op_dtypes(einsum_model(), feature_batches())
    assert ops["Einsum"] == {"T=float32"}


@needs_directml
def test_einsum_model_is_reported_missing_on_directml():
    ops = op_coverage.step_op_dtypes(einsum_model(), feature_batches())
    # Only Einsum (forward and its gradient, also Einsum): every other op has a kernel.
    assert op_coverage.missing_kernels(ops, op_coverage.directml_gpu_kernels()) == \
        ["Einsum(T=float32)"]


def test_loop_bodies_are_walked_with_steps_per_execution():
    """steps_per_execution > 1 puts the step inside a While loop (Keras 2.10: tf.range loop;
    Keras 3: tf.while_loop over tf.cond): its ops are only in the function library."""
    ops = op_coverage.step_op_dtypes(dense_model(steps_per_execution=2), feature_batches())
    assert {"While", "StatelessWhile"} & set(ops)
    assert ops["MatMul"] == {"T=float32"}                   # the Dense layer, inside the body
    assert "BiasAddGrad" in ops                             # and its gradient


def test_missing_kernels_matches_dtypes_like_tensorflow():
    """A kernel accepts a node when each constrained attr (every element, for a list attr)
    is allowed; a DEVICE_DEFAULT kernel counts when no GPU kernel accepts it."""
    gpu = {"MatMul": [{"T": frozenset({"float32"})}, {"T": frozenset({"float16"})}],
           "IdentityN": [{"T": frozenset({"float32"})}],
           "NoOp": [{}]}
    default = {"MatMul": [{"T": frozenset({"int32"})}]}
    ops = {"MatMul": {"T=float32", "T=int32", "T=float64"},
           "IdentityN": {"T=[float32]", "T=[float32,int64]"},
           "NoOp": {""}, "Einsum": {"T=float32"}}
    assert op_coverage.missing_kernels(ops, gpu, default) == [
        "Einsum(T=float32)", "IdentityN(T=[float32,int64])", "MatMul(T=float64)"]
    assert op_coverage.missing_kernels({"MatMul": {"T=int32"}}, gpu, {}) == ["MatMul(T=int32)"]


def test_registered_kernels_hold_dtype_constraints():
    """The CPU kernels of MatMul, read back from TensorFlow's registry: float32 is among
    them, and a kernel's constraints are attr -> dtype names."""
    matmul = op_coverage.registered_kernels("CPU")["MatMul"]
    assert any("float32" in kernel.get("T", ()) for kernel in matmul)
    assert op_coverage.missing_kernels({"MatMul": {"T=float32"}},
                                       op_coverage.registered_kernels("CPU"), {}) == []


def format_op_dtypes(op_dtypes) -> str:
    """One line per op type, sorted: "MatMul: T=float32"; signatures joined by " | "."""
    return "\n".join(f"{op}: {' | '.join(sorted(s or '-' for s in signatures))}"
                     for op, signatures in sorted(op_dtypes.items()))
