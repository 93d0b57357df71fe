"""The model's layers and mathematics: hand-worked shapes, numpy references, the written-out
gradients against autodiff of the plain formulas, gradient flow, serialisation."""
import dataclasses
import inspect
import json
import os
import sys

import numpy as np
import pytest

import backends
import vit_model
from backends import dtype_name, numpy, tensor, value_and_gradients
from vit_model import (ClassToken, DropPath, MultiHeadSelfAttention, PatchExtractor,
                       TransformerBlock, VisionTransformer, build_model)
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import TrainConfig
from vitcifar.ops import kernels
from vitcifar.ops.kernels import keras, ops
from vitcifar.training import precision

RNG = np.random.default_rng(0)
ALL_OPTIONS = {"drop_path": 0.1, "attention_dropout": 0.1, "head_units": (), "pooling": "mean"}


def small_model(**options):
    """A 1-block ViT on 2x2 patches of 16x16 (N = 4), width 16: small enough to count by hand."""
    arguments = {"patch_size": 16, "patch_stride": 16, "num_layers": 1, "embedding_dim": 16,
                 "num_heads": 2, "mlp_hidden_dim": 8, "head_units": (), "dropout": 0.0}
    model = VisionTransformer(10, **{**arguments, **options})
    model(images(1))
    return model


def images(batch=2):
    return RNG.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)


def numpy_patches(x, p, s):
    n = (x.shape[1] - p) // s + 1
    return np.stack([x[:, i * s:i * s + p, j * s:j * s + p, :].reshape(len(x), -1)
                     for i in range(n) for j in range(n)], axis=1)


@pytest.mark.parametrize("p, s, expected", [
    (4, 4, (2, 64, 48)),      # 8 x 8 patches of 4*4*3
    (8, 4, (2, 49, 192)),     # overlapping: (32-8)/4+1 = 7 per side
    (32, 1, (2, 1, 3072)),    # the whole image is one patch
    (2, 2, (2, 256, 12)),
])
def test_patch_extractor_shapes_and_numpy_reference(p, s, expected):
    x = images().astype(np.float32)
    out = numpy(PatchExtractor(p, s)(x))
    assert out.shape == expected
    np.testing.assert_array_equal(out, numpy_patches(x, p, s))


@pytest.mark.parametrize("p, s", [(4, 4), (8, 4), (8, 8), (32, 1), (2, 2), (5, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_gather_patch_path_equals_the_default_one(p, s, dtype):
    x = images().astype(dtype)
    gathered = PatchExtractor(p, s, gather=True)(x)
    assert dtype_name(gathered) == np.dtype(dtype).name
    np.testing.assert_array_equal(numpy(gathered), numpy(PatchExtractor(p, s)(x)))
    np.testing.assert_array_equal(numpy(gathered), numpy_patches(x, p, s))


def test_class_token_prepends_one_shared_learned_vector():
    tokens = RNG.normal(size=(3, 5, 8)).astype(np.float32)
    layer = ClassToken()
    out = numpy(layer(tokens))
    assert out.shape == (3, 6, 8)
    np.testing.assert_array_equal(out[:, 1:], tokens)
    np.testing.assert_array_equal(out[:, 0], np.repeat(numpy(layer.token)[0], 3, axis=0))


def numpy_attention(x, layer):
    """softmax(Q K^T / sqrt(d)) V per head, from the layer's own weights, in float64."""
    kernel, bias = [numpy(w).astype(np.float64) for w in layer.qkv.weights]
    out_kernel, out_bias = [numpy(w).astype(np.float64) for w in layer.output_proj.weights]
    d, h = layer.embedding_dim, layer.num_heads
    dh = d // h
    qkv = x.astype(np.float64) @ kernel + bias
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    heads, weights = [], []
    for i in range(h):
        cols = slice(i * dh, (i + 1) * dh)
        scores = q[..., cols] @ np.swapaxes(k[..., cols], 1, 2) / np.sqrt(dh)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        w = scores / scores.sum(-1, keepdims=True)
        weights.append(w)
        heads.append(w @ v[..., cols])
    return np.concatenate(heads, -1) @ out_kernel + out_bias, np.stack(weights, 1)


@pytest.mark.parametrize("d, h, t", [(64, 8, 65), (12, 3, 5), (16, 1, 2)])
def test_attention_matches_numpy_reference(d, h, t):
    x = RNG.normal(size=(2, t, d)).astype(np.float32)
    layer = MultiHeadSelfAttention(d, h)
    out, weights = layer(x, return_attention=True)
    assert out.shape == (2, t, d) and weights.shape == (2, h, t, t)
    expected_out, expected_weights = numpy_attention(x, layer)
    np.testing.assert_allclose(numpy(weights), expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(numpy(out), expected_out, rtol=1e-4, atol=1e-5)


def test_attention_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadSelfAttention(10, 3)


def test_transformer_block_keeps_shape_and_returns_attention():
    block = TransformerBlock(16, 4, 32, 0.1)
    x = RNG.normal(size=(2, 7, 16)).astype(np.float32)
    out, weights = block(x, return_attention=True)
    assert tuple(out.shape) == (2, 7, 16) and tuple(weights.shape) == (2, 4, 7, 7)
    np.testing.assert_allclose(numpy(weights).sum(-1), 1.0, rtol=1e-5)


def test_model_output_shapes_for_both_datasets():
    for dataset, classes in (("cifar10", 10), ("cifar100", 100)):
        model = build_model(TrainConfig(dataset=dataset, num_layers=1))
        assert tuple(model(images(3)).shape) == (3, classes)
    overlapping = build_model(TrainConfig(patch_size=8, patch_stride=4, num_layers=1))
    assert overlapping.num_tokens == 7 * 7 + 1
    assert tuple(overlapping.position_embedding.weights[0].shape) == (50, 64)


def test_uint8_and_float_images_give_the_same_logits():
    model = build_model(PRESETS["tiny"])
    x = images(4)
    np.testing.assert_allclose(numpy(model(x, training=False)),
                               numpy(model(x.astype(np.float32), training=False)), atol=1e-5)


def test_sample_preset_has_the_parameter_count_worked_out_by_hand():
    d, m, p, t, layers = 64, 256, 4 * 4 * 3, 65, 8
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    head = (d * 512 + 512) + (512 * 256 + 256) + (256 * 10 + 10)
    expected = (p * d + d) + d + t * d + layers * block + 2 * d + head
    assert build_model(TrainConfig()).count_params() == expected


def test_weights_saved_with_keras_layer_normalization_still_load(tmp_path, monkeypatch):
    """Runs saved before vit_model had its own LayerNormalization (with Keras's layer) load
    into today's model and give the same logits."""
    monkeypatch.setattr(vit_model, "LayerNormalization", keras.layers.LayerNormalization)
    old = build_model(PRESETS["tiny"])
    path = str(tmp_path / "best.weights.h5")
    old.save_weights(path)
    monkeypatch.undo()
    new = build_model(PRESETS["tiny"])
    assert isinstance(new.norm, vit_model.LayerNormalization)
    assert not isinstance(old.norm, vit_model.LayerNormalization)
    new.load_weights(path)
    x = images(3)
    np.testing.assert_allclose(numpy(new(x)), numpy(old(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [
    {}, {"drop_path": 0.1}, {"attention_dropout": 0.1}, {"head_units": ()},
    {"pooling": "mean"}, ALL_OPTIONS], ids=["default", "drop_path", "attention_dropout",
                                            "linear_head", "mean_pool", "all_options"])
@pytest.mark.parametrize("policy", [precision.FLOAT32, precision.BFLOAT16])
def test_every_trainable_weight_gets_a_finite_gradient(options, policy):
    keras.utils.set_random_seed(0)              # the dropout and drop-path masks
    with precision.policy(policy):
        model = build_model(dataclasses.replace(TrainConfig(num_layers=2), **options))
    x, y = images(8), RNG.integers(0, 10, 8)
    _, grads = value_and_gradients(lambda: ops.mean(keras.losses.sparse_categorical_crossentropy(
        y, model(x, training=True), from_logits=True)), variables=model.trainable_weights)
    assert len(grads) == len(model.trainable_weights) > 0
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.name
        assert dtype_name(weight) == dtype_name(grad) == "float32", weight.name   # under mixed
        grad = numpy(grad)
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), weight.name


@pytest.mark.parametrize("layer", [
    PatchExtractor(8, 4, name="p"), PatchExtractor(8, 8, gather=True, name="pg"), ClassToken(name="c"), MultiHeadSelfAttention(16, 4, name="a"),
    TransformerBlock(16, 4, 32, 0.3, name="b"),
    VisionTransformer(10, patch_size=8, patch_stride=8, num_layers=1, embedding_dim=16,
                      num_heads=2, mlp_hidden_dim=8, head_units=(4,), dropout=0.3, name="v"),
    DropPath(0.1, name="d"), MultiHeadSelfAttention(16, 4, attention_dropout=0.1, name="a1"),
    TransformerBlock(16, 4, 32, 0.3, drop_path=0.1, attention_dropout=0.1, name="b1"),
    VisionTransformer(10, patch_size=8, patch_stride=8, num_layers=3, embedding_dim=16,
                      num_heads=2, mlp_hidden_dim=8, dropout=0.3, name="v1", **ALL_OPTIONS),
], ids=lambda layer: layer.name)
def test_get_config_round_trips_every_constructor_argument(layer):
    config = layer.get_config()
    own_init = vars(type(layer)).get("__init__")                 # not Keras' base class's
    arguments = set(inspect.signature(own_init).parameters) - {"self", "kwargs"} \
        if own_init else set()
    assert arguments <= set(config), arguments - set(config)      # none left to its default
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


@pytest.mark.slow
@pytest.mark.parametrize("config", [PRESETS["tiny"], dataclasses.replace(PRESETS["tiny"], **ALL_OPTIONS)],
                         ids=["default", "all_options"])
@pytest.mark.parametrize("policy", [precision.FLOAT32, precision.BFLOAT16])
def test_saved_model_loads_back_with_the_same_outputs(tmp_path, config, policy):
    """In the precision it was trained in; and its weights, float32 whatever the precision,
    into a float32 model (a bfloat16 run evaluated or exported in float32)."""
    with precision.policy(policy):
        model = build_model(config)
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
        x, y = images(16), RNG.integers(0, 10, 16)
        model.fit(x, y, epochs=1, verbose=0)                 # trained, not initial weights
        expected = numpy(model(x, training=False))
        path = vit_model.save_model(model, str(tmp_path / "model"))
        assert os.path.exists(path)
        loaded = vit_model.load_model(path)
        assert isinstance(loaded, VisionTransformer)
        assert loaded.get_config() == model.get_config()
        np.testing.assert_allclose(numpy(loaded(x, training=False)), expected, atol=1e-6)
        # and the portable way: config + weights file
        model.save_weights(str(tmp_path / "w.weights.h5"))
        rebuilt = build_model(config)
        rebuilt.load_weights(str(tmp_path / "w.weights.h5"))
        np.testing.assert_allclose(numpy(rebuilt(x, training=False)), expected, atol=1e-6)
    assert {w.dtype for w in model.get_weights()} == {np.dtype(np.float32)}
    in_float32 = build_model(config)
    in_float32.load_weights(str(tmp_path / "w.weights.h5"))
    assert in_float32.patch_proj.compute_dtype == "float32"
    np.testing.assert_allclose(numpy(in_float32(x, training=False)), expected,
                               atol=1e-6 if policy == precision.FLOAT32 else 0.05)


@pytest.mark.parametrize("p, s", [(2, 2), (4, 4), (8, 8), (16, 16), (32, 32), (8, 4), (5, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_reshape_and_overlapping_patch_paths_keep_the_dtype_and_equal_numpy(p, s, dtype):
    """The reshape path (non-overlapping) and the overlapping one (ExtractImagePatches on
    TensorFlow, the gather elsewhere)."""
    x = RNG.integers(0, 256, (3, 32, 32, 3)).astype(dtype)
    out = PatchExtractor(p, s)(x)
    assert dtype_name(out) == np.dtype(dtype).name
    np.testing.assert_array_equal(numpy(out), numpy_patches(x, p, s))


def test_attention_layer_training_path_equals_the_attention_map_path():
    """The layer's plain call (the attend kernel) gives the outputs of its
    return_attention path, which test_vit_model checks against numpy."""
    layer = vit_model.MultiHeadSelfAttention(64, 8)
    x = RNG.normal(size=(2, 65, 64)).astype(np.float32)
    out, _ = layer(x, return_attention=True)
    np.testing.assert_allclose(numpy(layer(x)), numpy(out), rtol=1e-5, atol=1e-6)


def test_model_attention_maps_equal_the_plain_formula():
    """attention_weights goes through the optimised layer; recompute block 0 by hand."""
    model = build_model(dataclasses.replace(PRESETS["tiny"], num_layers=1))
    images = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = numpy(model.attention_weights(images)[0])
    tokens = model.embed(images)
    x = numpy(model.blocks[0].attention_norm(tokens)).astype(np.float64)
    layer = model.blocks[0].attention
    kernel, bias = [numpy(w).astype(np.float64) for w in layer.qkv.weights]
    qkv = x @ kernel + bias
    d, h = layer.embedding_dim, layer.num_heads
    q = qkv[..., :d].reshape(2, -1, h, d // h).transpose(0, 2, 1, 3)
    k = qkv[..., d:2 * d].reshape(2, -1, h, d // h).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)




# --- model options: stochastic depth, attention dropout, linear head, mean pooling -----------

def test_drop_path_is_the_identity_at_inference_and_at_rate_zero():
    x = RNG.normal(size=(64, 5, 8)).astype(np.float32)
    for training in (False, None):
        np.testing.assert_array_equal(numpy(DropPath(0.5)(x, training=training)), x)
    np.testing.assert_array_equal(numpy(DropPath(0.0)(x, training=True)), x)
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rate must be in"):
            DropPath(rate)


@pytest.mark.parametrize("policy, dtype", [("float32", "float32"),
                                           ("mixed_float16", "float16")])
def test_drop_path_zeroes_whole_samples_at_its_rate_and_scales_the_rest(policy, dtype):
    rate, batch = 0.25, 4000
    x = tensor(RNG.uniform(1.0, 2.0, (batch, 3, 5)), dtype)            # no zeros of its own
    out = DropPath(rate, dtype=policy)(x, training=True)
    assert dtype_name(out) == dtype
    out, x = numpy(out).astype(np.float64), numpy(x).astype(np.float64)
    dropped = np.all(out == 0, axis=(1, 2))
    # a sample is dropped whole or kept whole, scaled by 1 / keep
    np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - rate), rtol=1e-3)
    # Binomial(4000, 0.25): standard deviation of the fraction 0.0068; 0.03 is 4.4 of them
    assert abs(dropped.mean() - rate) < 0.03, dropped.mean()


@pytest.mark.parametrize("layers, expected", [
    (5, [0.0, 0.05, 0.1, 0.15, 0.2]), (2, [0.0, 0.2]), (1, [0.0])])
def test_drop_path_rates_rise_linearly_over_the_blocks(layers, expected):
    model = VisionTransformer(10, num_layers=layers, embedding_dim=16, num_heads=2,
                              mlp_hidden_dim=8, drop_path=0.2)
    np.testing.assert_allclose([block.drop_path.rate for block in model.blocks], expected,
                               atol=1e-12)
    assert [block.get_config()["drop_path"] for block in model.blocks] == \
        [block.drop_path.rate for block in model.blocks]
    with pytest.raises(ValueError, match="drop_path must be in"):
        VisionTransformer(10, num_layers=1, drop_path=1.0)


def test_attention_layer_takes_the_fast_kernel_unless_attention_dropout_trains(monkeypatch):
    """The fast kernel (attend) unless attention dropout is on in training, where the plain
    path (tests/test_kernels.py checks its dropout) drops weights."""
    calls = []
    fast = vit_model.attend
    monkeypatch.setattr(vit_model, "attend", lambda *qkv: calls.append(1) or fast(*qkv))
    x = tensor(RNG.normal(size=(2, 5, 16)), "float32")
    off, on = MultiHeadSelfAttention(16, 4), MultiHeadSelfAttention(16, 4, attention_dropout=0.5)
    off(x)
    on(x)
    on.set_weights(off.get_weights())
    for layer, training, fast_path in ((off, True, True), (on, False, True), (on, True, False)):
        calls.clear()
        out = layer(x, training=training)
        assert bool(calls) == fast_path, (layer.attention_dropout_rate, training)
        if fast_path:                             # no dropout: the rate-0 layer's outputs
            np.testing.assert_allclose(numpy(out), numpy(off(x)), rtol=1e-6, atol=1e-6)
        else:
            assert not np.allclose(numpy(out), numpy(off(x)), atol=1e-3)


def test_linear_head_maps_the_class_token_straight_to_logits():
    """head_units=(): logits = norm(tokens)[:, 0] W + b, and a hand-counted parameter total."""
    model = small_model(head_units=())
    x = images(3)
    assert model.head_layers == [] and model.head_dropout is None
    assert tuple(model(x).shape) == (3, 10)
    tokens = model.embed(x)
    for block in model.blocks:
        tokens = block(tokens)
    kernel, bias = model.classifier.get_weights()
    expected = numpy(model.norm(tokens))[:, 0] @ kernel + bias
    np.testing.assert_allclose(numpy(model(x)), expected, rtol=1e-5, atol=1e-5)
    d, m, p, t = 16, 8, 16 * 16 * 3, 4 + 1
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    assert model.count_params() == (p * d + d) + d + t * d + block + 2 * d + (d * 10 + 10)


def test_mean_pooling_has_no_class_token_and_averages_the_patch_tokens():
    model = small_model(pooling="mean", head_units=(6,))
    x = images(3)
    assert model.class_token is None and model.num_tokens == 4
    assert tuple(model.position_embedding.weights[0].shape) == (4, 16)
    assert not any("token" in weight.name for weight in model.weights)
    tokens = model.embed(x)
    assert tuple(tokens.shape) == (3, 4, 16)
    for block in model.blocks:
        tokens = block(tokens)
    pooled = numpy(model.norm(tokens)).mean(axis=1)                     # (B, D)
    (k1, b1), (k2, b2) = model.head_layers[0].get_weights(), model.classifier.get_weights()
    expected = numpy(kernels.gelu(tensor(pooled @ k1 + b1))) @ k2 + b2
    np.testing.assert_allclose(numpy(model(x)), expected, rtol=1e-5, atol=1e-5)
    assert [tuple(w.shape) for w in model.attention_weights(x)] == [(3, 2, 4, 4)]
    # parameters: the class-token model's, less its token and one position row
    class_token = small_model(head_units=(6,))
    assert model.count_params() == class_token.count_params() - 2 * 16
    with pytest.raises(ValueError, match="pooling must be one of"):
        VisionTransformer(10, pooling="max")


# --- one model on every Keras: weight paths, weights across backends, no TensorFlow on torch --

WEIGHT_PATHS = (["vit/patch_proj/kernel", "vit/patch_proj/bias", "vit/class_token/token",
                 "vit/position_embedding/embeddings"]
                + [f"vit/block_0/{layer}/{weight}" for layer, weight in (
                    ("attention_norm", "gamma"), ("attention_norm", "beta"),
                    ("attention/qkv", "kernel"), ("attention/qkv", "bias"),
                    ("attention/output_proj", "kernel"), ("attention/output_proj", "bias"),
                    ("mlp_norm", "gamma"), ("mlp_norm", "beta"), ("mlp_in", "kernel"),
                    ("mlp_in", "bias"), ("mlp_out", "kernel"), ("mlp_out", "bias"))]
                + ["vit/norm/gamma", "vit/norm/beta", "vit/head_0/kernel", "vit/head_0/bias",
                   "vit/logits/kernel", "vit/logits/bias"])
# What the other Keras does with this one's weights (argv: model arguments as JSON, folder):
# the same logits from them, then one training step of its own and its weights and logits
# back, for this Keras to load.
OTHER_KERAS = """
import json, sys
import numpy as np
import vit_model
from vitcifar.backend import keras_compat
from vitcifar.ops.kernels import ops
from vitcifar.runs import checkpoint
arguments, folder = json.loads(sys.argv[1]), sys.argv[2]
with np.load(folder + "/inputs.npz") as saved:
    x, y, expected = saved["images"], saved["labels"], saved["logits"]
model = vit_model.VisionTransformer(**arguments)
model(x[:1])
checkpoint.load_weights(model, folder + "/here.weights.npz")
np.testing.assert_allclose(ops.convert_to_numpy(model(x, training=False)), expected,
                           rtol=1e-5, atol=1e-5)
model.compile(optimizer="adam", loss=vit_model.keras.losses.SparseCategoricalCrossentropy(True))
model.train_on_batch(x, y)
checkpoint.save_weights(model, folder + "/there.weights.npz")
np.save(folder + "/there_logits.npy", ops.convert_to_numpy(model(x, training=False)))
print(keras_compat.BACKEND, keras_compat.keras_version())
"""


def weight_path_model(**options):
    return small_model(head_units=(6,), name="vit", **options)


def test_weight_paths_are_the_same_on_every_keras():
    """Keras 3's variable.path and Keras 2.10's variable.name less ":0", as checkpoint keys
    them: the names a run's weights files carry, whatever Keras wrote them."""
    from vitcifar.runs import checkpoint
    assert [checkpoint.weight_key(w) for w in weight_path_model().weights] == WEIGHT_PATHS
    dropping = weight_path_model(drop_path=0.1, attention_dropout=0.1)     # no weights
    assert [checkpoint.weight_key(w) for w in dropping.weights] == WEIGHT_PATHS


@pytest.mark.slow
@pytest.mark.parametrize("other", backends.OTHERS)
def test_weights_saved_here_give_the_same_logits_on_another_keras_and_back(tmp_path, other):
    """This Keras's weights (.npz keyed by weight path, checkpoint.save_weights) give the same
    logits on another Keras (this Python's other Keras 3 backend, or OTHER_STACK_PYTHON's), whose
    own weights after a training step give its logits here."""
    from vitcifar.runs import checkpoint
    python, backend = backends.other_python(other)
    if python is None:
        pytest.skip(backend)
    arguments = {"num_classes": 10, "patch_size": 8, "patch_stride": 8, "num_layers": 2,
                 "embedding_dim": 16, "num_heads": 2, "mlp_hidden_dim": 8, "head_units": [6],
                 "drop_path": 0.1, "name": "vit"}
    model = VisionTransformer(**arguments)
    x, y = images(8), RNG.integers(0, 10, 8)
    model(x)
    checkpoint.save_weights(model, str(tmp_path / "here.weights.npz"))
    np.savez(tmp_path / "inputs.npz", images=x, labels=y,
             logits=numpy(model(x, training=False)))
    result = backends.run_python(python, OTHER_KERAS, json.dumps(arguments), tmp_path,
                                 backend=backend)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == backend
    checkpoint.load_weights(model, str(tmp_path / "there.weights.npz"))
    there = np.load(tmp_path / "there_logits.npy")
    np.testing.assert_allclose(numpy(model(x, training=False)), there, rtol=1e-5, atol=1e-5)


# Builds every option and the export form, trains a step on PyTorch, then lists the
# TensorFlow modules loaded: none may be, so no TensorFlow op ran.
NO_TENSORFLOW = """
import sys
import numpy as np
import vit_model
from vitcifar.backend import keras_compat
assert keras_compat.BACKEND == "torch", keras_compat.BACKEND
x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
for options in ({"drop_path": 0.1, "attention_dropout": 0.1},
                {"patch_size": 8, "patch_stride": 4, "pooling": "mean", "head_units": ()}):
    model = vit_model.VisionTransformer(10, num_layers=2, embedding_dim=16, num_heads=2,
                                        mlp_hidden_dim=8, **options)
    model.compile(optimizer="adam",
                  loss=vit_model.keras.losses.SparseCategoricalCrossentropy(True))
    model.train_on_batch(x, np.arange(4))
    model.attention_weights(x)
vit_model.PatchExtractor(4, 4, gather=True)(x)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "tf_keras")))
"""


@pytest.mark.slow
def test_on_pytorch_the_model_trains_without_importing_tensorflow():
    if not (backends.TORCH or backends.OTHER_BACKEND == "torch"):
        pytest.skip("needs Keras 3 and torch")
    result = backends.run_python(sys.executable, NO_TENSORFLOW, backend="torch")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
