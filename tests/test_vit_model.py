"""The model's layers: hand-worked shapes, numpy references, gradients, serialisation."""
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
