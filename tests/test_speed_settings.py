"""The speed work changes no mathematics: faster code paths equal the plain ones, every
optional speed setting trains to the same loss, and the FLOP count matches a hand count.
(Correctness only: speed is measured by benchmarks/, never asserted here.)"""
import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

import flops
import training
import vit_model
from conftest import run_app
from config import PRESETS, TrainConfig
from vit_model import PatchExtractor, build_model

keras = tf.keras
RNG = np.random.default_rng(3)


@pytest.mark.parametrize("p", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_reshape_patch_path_equals_extract_patches(p, dtype):
    images = RNG.integers(0, 256, (3, 32, 32, 3)).astype(dtype)
    expected = tf.image.extract_patches(images, [1, p, p, 1], [1, p, p, 1], [1, 1, 1, 1],
                                        "VALID")
    out = PatchExtractor(p, p)(images)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out.numpy(), tf.reshape(expected, out.shape).numpy())


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-8, 8, 401).astype(np.float32)
    erf = np.vectorize(__import__("math").erf)
    expected = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    np.testing.assert_allclose(vit_model.gelu(tf.constant(x)).numpy(), expected,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vit_model.gelu(tf.constant(x)).numpy(),
                               tf.nn.gelu(tf.constant(x), approximate=False).numpy(),
                               rtol=1e-6, atol=1e-6)


def test_gelu_gradient_is_the_exact_derivative():
    x = np.linspace(-8, 8, 401)
    erf = np.vectorize(__import__("math").erf)
    expected = 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    x32 = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x32)
        y = vit_model.gelu(x32)
    np.testing.assert_allclose(tape.gradient(y, x32).numpy(), expected, rtol=1e-5, atol=1e-6)


def plain_attention(q, k, v):
    return tf.matmul(tf.nn.softmax(tf.matmul(q, k), axis=-1), v)


@pytest.mark.parametrize("shape", [(2, 8, 65, 8), (3, 2, 5, 4), (1, 1, 1, 3)])
def test_attend_equals_numpy_and_its_gradient_equals_autodiff(shape):
    """Forward against numpy; the hand-written gradient against TensorFlow's autodiff of the
    plain softmax formula, both in float64 (upstream gradient random, not all ones)."""
    b, h, t, dh = shape
    q, k, v, upstream = (RNG.normal(size=s) for s in
                         ((b, h, t, dh), (b, h, dh, t), (b, h, t, dh), (b, h, t, dh)))
    scores = q @ k
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(vit_model.attend(q, k, v).numpy(), weights @ v, rtol=1e-10)

    inputs = [tf.constant(a) for a in (q, k, v)]
    grads = []
    for fn in (vit_model.attend, plain_attention):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = fn(*inputs)
        grads.append(tape.gradient(out, inputs, output_gradients=tf.constant(upstream)))
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_layer_norm_equals_keras_layer_normalization_with_gradients(policy):
    x = tf.constant(RNG.normal(3.0, 2.0, size=(4, 7, 16)), tf.float32)
    upstream = tf.constant(RNG.normal(size=(4, 7, 16)), tf.float32)
    weights = [RNG.normal(1.0, 0.5, 16), RNG.normal(0.0, 0.5, 16)]
    results = []
    for layer in (vit_model.LayerNormalization(epsilon=1e-6, dtype=policy),
                  keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy)):
        layer.build(x.shape)
        layer.set_weights(weights)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            out32 = tf.cast(out, tf.float32)
        grads = tape.gradient(out32, [x, *layer.trainable_weights], output_gradients=upstream)
        results.append((out, grads))
    (out, grads), (expected, expected_grads) = results
    assert out.dtype == expected.dtype == (tf.float32 if policy == "float32" else tf.float16)
    x64 = x.numpy().astype(np.float64)
    x_hat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    tolerance = 1e-5 if policy == "float32" else 2e-3
    np.testing.assert_allclose(out.numpy(), x_hat * weights[0] + weights[1],
                               rtol=tolerance, atol=tolerance)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=tolerance, atol=tolerance)


def test_attention_layer_training_path_equals_the_attention_map_path():
    """The layer's plain call (the attend kernel) gives the outputs of its
    return_attention path, which test_vit_model checks against numpy."""
    layer = vit_model.MultiHeadSelfAttention(64, 8)
    x = RNG.normal(size=(2, 65, 64)).astype(np.float32)
    out, _ = layer(x, return_attention=True)
    np.testing.assert_allclose(layer(x).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)


def test_model_attention_maps_equal_the_plain_formula():
    """attention_weights goes through the optimised layer; recompute block 0 by hand."""
    model = build_model(dataclasses.replace(PRESETS["tiny"], num_layers=1))
    images = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = model.attention_weights(images)[0].numpy()
    tokens = model.embed(images)
    x = model.blocks[0].attention_norm(tokens).numpy().astype(np.float64)
    layer = model.blocks[0].attention
    kernel, bias = [w.numpy().astype(np.float64) for w in layer.qkv.weights]
    qkv = x @ kernel + bias
    d, h = layer.embedding_dim, layer.num_heads
    q = qkv[..., :d].reshape(2, -1, h, d // h).transpose(0, 2, 1, 3)
    k = qkv[..., d:2 * d].reshape(2, -1, h, d // h).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_flops_match_a_hand_count():
    config = TrainConfig(patch_size=16, patch_stride=16, num_layers=1, embedding_dim=4,
                         num_heads=2, mlp_hidden_dim=8, head_units=(6,))
    # 2 x 2 = 4 patches of 16*16*3 = 768 values, T = 5 tokens, D = 4, MLP 8, head 4-6-10
    assert flops.forward_flops_per_image(config) == {
        "patch_proj": 2 * 4 * 768 * 4,          # 24,576
        "qkv": 2 * 5 * 4 * 12,                  # 480
        "scores": 2 * 5 * 5 * 4,                # 200: 2 heads x (5x2 @ 2x5)
        "attention_values": 2 * 5 * 5 * 4,      # 200
        "output_proj": 2 * 5 * 4 * 4,           # 160
        "mlp": 2 * 5 * 4 * 8 * 2,               # 640
        "head": 2 * (4 * 6 + 6 * 10),           # 168
    }
    assert flops.train_flops_per_image(config) == 3 * 26_424
    # the sample preset: 60.5 MFLOP forward, 181.5 MFLOP per image per training step
    assert flops.train_flops_per_image(PRESETS["sample"]) == 181_490_688


def test_flops_script_prints_the_sample_count(capsys):
    assert flops.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^forward +60\.50 MFLOP per image$", out, re.M)
    assert re.search(r"^training step +181\.49 MFLOP per image \(3x forward\)$", out, re.M)
    assert flops.main(["--preset", "huge"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --preset: invalid choice")


def xla_available() -> bool:
    try:
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(1.0))
    except Exception:  # noqa: BLE001 - no XLA on this build/device
        return False
    return True


def train(config, jit_compile=False):
    """Four Adam steps on fixed batches from fixed initial weights; (losses, weights)."""
    keras.utils.set_random_seed(7)
    model = build_model(config)
    training.compile_model(model, config, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, config.num_classes, 32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    history = model.fit(data, epochs=2, verbose=0, shuffle=False)
    return history.history["loss"], model.get_weights()


BASE = dataclasses.replace(PRESETS["tiny"], dropout=0.0, num_layers=2)


@pytest.mark.parametrize("setting", [
    {"steps_per_execution": 2},
    {"steps_per_execution": 4},
    pytest.param({"jit_compile": True}, id="xla"),
])
def test_optional_speed_settings_train_to_the_same_loss(setting):
    if setting.get("jit_compile") and not xla_available():
        pytest.skip("no XLA in this TensorFlow")
    reference_loss, reference_weights = train(BASE)
    config = dataclasses.replace(BASE, **{k: v for k, v in setting.items()
                                          if k != "jit_compile"})
    loss, weights = train(config, jit_compile=setting.get("jit_compile", False))
    np.testing.assert_allclose(loss, reference_loss, rtol=2e-4)
    for got, expected in zip(weights, reference_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2e-5)


def test_steps_per_execution_is_a_flag_and_must_be_positive():
    import cli
    from config import UsageError
    config, _ = cli.parse("cifar10", ["--steps-per-execution", "8"])
    assert config.steps_per_execution == 8
    with pytest.raises(UsageError, match="--steps-per-execution must be a positive"):
        cli.parse("cifar10", ["--steps-per-execution", "0"])


def test_train_throughput_benchmark_prints_its_figures():
    result = run_app("benchmarks/train_throughput.py", "--preset", "tiny", "--steps", 2,
                     "--windows", 2, "--warmup", 1, "--images", 256, "--batch-size", 32)
    assert result.returncode == 0, result.stderr[-2000:]
    rate = re.search(r"train throughput: ([\d.]+) images/s \(median of 2 windows", result.stdout)
    assert rate and float(rate.group(1)) > 0, result.stdout
    assert "input pipeline with augmentation, 256 synthetic uint8 images" in result.stdout
    assert re.search(r"peak memory: \d+ MiB", result.stdout)
    assert re.search(r"FLOPs: [\d.]+ MFLOP per image per training step", result.stdout)


def test_profile_benchmark_lists_op_types_and_rejects_bad_counts():
    result = run_app("benchmarks/profile_step.py", "--preset", "tiny", "--steps", 1,
                     "--batch-size", 16, "--top", 50)
    assert result.returncode == 0, result.stderr[-2000:]
    shares = dict(re.findall(r"^  (\S+) +[\d.]+ ms/step +([\d.]+)%$", result.stdout, re.M))
    assert any("MatMul" in op for op in shares), result.stdout       # the model's Dense layers
    assert any(op.endswith("Softmax") and "Sparse" not in op for op in shares)
    assert 99.0 <= sum(map(float, shares.values())) <= 100.5         # all op types listed
    bad = run_app("benchmarks/profile_step.py", "--steps", 0)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --steps")
