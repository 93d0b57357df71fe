"""The model's layers and mathematics: hand-worked shapes, numpy references, the written-out
gradients against autodiff of the plain formulas, gradient flow, serialisation."""
import dataclasses
import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

import vit_model
from config import PRESETS, TrainConfig
from vit_model import (ClassToken, MultiHeadSelfAttention, PatchExtractor, TransformerBlock,
                       VisionTransformer, build_model)

keras = tf.keras
RNG = np.random.default_rng(0)


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
    out = PatchExtractor(p, s)(x).numpy()
    assert out.shape == expected
    np.testing.assert_array_equal(out, numpy_patches(x, p, s))


def test_class_token_prepends_one_shared_learned_vector():
    tokens = tf.random.normal((3, 5, 8))
    layer = ClassToken()
    out = layer(tokens).numpy()
    assert out.shape == (3, 6, 8)
    np.testing.assert_array_equal(out[:, 1:], tokens.numpy())
    np.testing.assert_array_equal(out[:, 0], np.repeat(layer.token.numpy()[0], 3, axis=0))


def numpy_attention(x, layer):
    """softmax(Q K^T / sqrt(d)) V per head, from the layer's own weights, in float64."""
    kernel, bias = [w.numpy().astype(np.float64) for w in layer.qkv.weights]
    out_kernel, out_bias = [w.numpy().astype(np.float64) for w in layer.output_proj.weights]
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
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out.numpy(), expected_out, rtol=1e-4, atol=1e-5)


def test_attention_rejects_heads_that_do_not_divide_width():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadSelfAttention(10, 3)


def test_transformer_block_keeps_shape_and_returns_attention():
    block = TransformerBlock(16, 4, 32, 0.1)
    x = tf.random.normal((2, 7, 16))
    out, weights = block(x, return_attention=True)
    assert out.shape == (2, 7, 16) and weights.shape == (2, 4, 7, 7)
    np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)


def test_model_output_shapes_for_both_datasets():
    for dataset, classes in (("cifar10", 10), ("cifar100", 100)):
        model = build_model(TrainConfig(dataset=dataset, num_layers=1))
        assert model(images(3)).shape == (3, classes)
    overlapping = build_model(TrainConfig(patch_size=8, patch_stride=4, num_layers=1))
    assert overlapping.num_tokens == 7 * 7 + 1
    assert overlapping.position_embedding.weights[0].shape == (50, 64)


def test_uint8_and_float_images_give_the_same_logits():
    model = build_model(PRESETS["tiny"])
    x = images(4)
    np.testing.assert_allclose(model(x, training=False).numpy(),
                               model(x.astype(np.float32), training=False).numpy(), atol=1e-5)


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
    np.testing.assert_allclose(new(x).numpy(), old(x).numpy(), rtol=1e-5, atol=1e-5)


def test_every_trainable_weight_gets_a_finite_gradient():
    model = build_model(TrainConfig(num_layers=2))
    x, y = images(8), RNG.integers(0, 10, 8)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                            from_logits=True)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == len(model.trainable_weights) > 0
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.name
        grad = tf.convert_to_tensor(grad).numpy()
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), weight.name


@pytest.mark.parametrize("layer", [
    PatchExtractor(8, 4, name="p"), ClassToken(name="c"), MultiHeadSelfAttention(16, 4, name="a"),
    TransformerBlock(16, 4, 32, 0.3, name="b"),
    VisionTransformer(10, patch_size=8, patch_stride=8, num_layers=1, embedding_dim=16,
                      num_heads=2, mlp_hidden_dim=8, head_units=(4,), dropout=0.3, name="v"),
])
def test_get_config_round_trips_every_constructor_argument(layer):
    config = layer.get_config()
    own_init = vars(type(layer)).get("__init__")                 # not Keras' base class's
    arguments = set(inspect.signature(own_init).parameters) - {"self", "kwargs"} \
        if own_init else set()
    assert arguments <= set(config), arguments - set(config)      # none left to its default
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


@pytest.mark.slow
def test_saved_model_loads_back_with_the_same_outputs(tmp_path):
    model = build_model(PRESETS["tiny"])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
    x, y = images(16), RNG.integers(0, 10, 16)
    model.fit(x, y, epochs=1, verbose=0)                     # trained, not initial weights
    expected = model(x, training=False).numpy()
    path = vit_model.save_model(model, str(tmp_path / "model"))
    assert os.path.exists(path)
    loaded = vit_model.load_model(path)
    assert isinstance(loaded, VisionTransformer)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, atol=1e-6)
    # and the portable way: config + weights file
    model.save_weights(str(tmp_path / "w.weights.h5"))
    rebuilt = build_model(PRESETS["tiny"])
    rebuilt.load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_allclose(rebuilt(x, training=False).numpy(), expected, atol=1e-6)
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

