"""The model's layers and mathematics: hand-worked shapes, numpy references, the written-out
gradients against autodiff of the plain formulas, gradient flow, serialisation."""
import dataclasses
import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

import vit_model
from vit_model import (ClassToken, DropPath, MultiHeadSelfAttention, PatchExtractor,
                       TransformerBlock, VisionTransformer, build_model)
from vitcifar.backend import op_coverage
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import TrainConfig
from vitcifar.training import precision

keras = tf.keras
RNG = np.random.default_rng(0)
ALL_OPTIONS = {"drop_path": 0.1, "attention_dropout": 0.1, "head_units": (), "pooling": "mean"}
# Compared with float64 references: float32 rounds at 6e-8 relative, bfloat16 (8 significant
# bits) at 4e-3, so its results may differ by a few of those.
TOLERANCE = {tf.float32: 1e-5, tf.bfloat16: 3e-2}


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
    out = PatchExtractor(p, s)(x).numpy()
    assert out.shape == expected
    np.testing.assert_array_equal(out, numpy_patches(x, p, s))


@pytest.mark.parametrize("p, s", [(4, 4), (8, 4), (8, 8), (32, 1), (2, 2), (5, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_gather_patch_path_equals_the_default_one(p, s, dtype):
    x = images().astype(dtype)
    gathered = PatchExtractor(p, s, gather=True)(x)
    assert gathered.dtype == dtype
    np.testing.assert_array_equal(gathered.numpy(), PatchExtractor(p, s)(x).numpy())
    np.testing.assert_array_equal(gathered.numpy(), numpy_patches(x, p, s))


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
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True),
                                                            from_logits=True)
    grads = tape.gradient(loss, model.trainable_weights)
    assert len(grads) == len(model.trainable_weights) > 0
    for weight, grad in zip(model.trainable_weights, grads):
        assert grad is not None, weight.name
        assert weight.dtype == grad.dtype == tf.float32, weight.name    # float32 under mixed
        grad = tf.convert_to_tensor(grad).numpy()
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
        expected = model(x, training=False).numpy()
        path = vit_model.save_model(model, str(tmp_path / "model"))
        assert os.path.exists(path)
        loaded = vit_model.load_model(path)
        assert isinstance(loaded, VisionTransformer)
        assert loaded.get_config() == model.get_config()
        np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, atol=1e-6)
        # and the portable way: config + weights file
        model.save_weights(str(tmp_path / "w.weights.h5"))
        rebuilt = build_model(config)
        rebuilt.load_weights(str(tmp_path / "w.weights.h5"))
        np.testing.assert_allclose(rebuilt(x, training=False).numpy(), expected, atol=1e-6)
    assert {w.dtype for w in model.get_weights()} == {np.dtype(np.float32)}
    in_float32 = build_model(config)
    in_float32.load_weights(str(tmp_path / "w.weights.h5"))
    assert in_float32.patch_proj.compute_dtype == "float32"
    np.testing.assert_allclose(in_float32(x, training=False).numpy(), expected,
                               atol=1e-6 if policy == precision.FLOAT32 else 0.05)
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


@pytest.mark.parametrize("dtype", [tf.float32, tf.bfloat16])
def test_gelu_and_its_gradient_are_the_exact_formulas(dtype):
    """Under mixed bfloat16 GELU computes in bfloat16, as Keras's activations do: it and its
    gradient are then the exact formulas at the rounded inputs, to bfloat16's precision."""
    x = tf.cast(tf.constant(np.linspace(-8, 8, 401)), dtype)
    x64 = tf.cast(x, tf.float64).numpy()                     # the values the op was given
    erf = np.vectorize(__import__("math").erf)
    cdf = 0.5 * (1 + erf(x64 / np.sqrt(2)))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = vit_model.gelu(x)
    grad = tape.gradient(y, x)
    assert y.dtype == grad.dtype == dtype
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(tf.cast(y, tf.float64).numpy(), x64 * cdf, rtol=tolerance,
                               atol=tolerance / 10)
    np.testing.assert_allclose(tf.cast(grad, tf.float64).numpy(),
                               cdf + x64 * np.exp(-x64 * x64 / 2) / np.sqrt(2 * np.pi),
                               rtol=tolerance, atol=tolerance / 10)


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


@pytest.mark.parametrize("shape", [(2, 8, 65, 8), (3, 6, 16, 32)])      # sample's, fast's
def test_attend_in_bfloat16_has_float32_softmax_and_beats_bfloat16_autodiff(shape):
    """Under mixed bfloat16 the attention core takes and returns bfloat16, and computes its
    softmax and the softmax's backward in float32 (as Keras keeps the loss and LayerNorm
    statistics). Against the float64 formula at the same rounded inputs, its outputs and
    gradients are within bfloat16's precision, and no further off than autodiff of the plain
    formula computed all in bfloat16: the largest error relative to each tensor's largest
    entry, and the root-mean-square error relative to the tensor's norm (the largest single
    error is one draw's luck: over seeds 0-7 ours is 0.5-1.7x autodiff's, the RMS 0.83-0.99x)."""
    b, h, t, dh = shape
    rng = np.random.default_rng(0)          # its own draw: not shifted by the tests before it
    q, k, v, upstream = (tf.cast(tf.constant(rng.normal(size=s)), tf.bfloat16) for s in
                         ((b, h, t, dh), (b, h, dh, t), (b, h, t, dh), (b, h, t, dh)))
    q = q * tf.cast(1 / np.sqrt(dh), tf.bfloat16)                # scaled, as the layer does

    def outputs_and_grads(fn, inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = fn(*inputs)
        grads = tape.gradient(out, inputs, output_gradients=tf.cast(upstream, out.dtype))
        return [tf.cast(a, tf.float64).numpy() for a in (out, *grads)], out.dtype, grads

    ours, dtype, grads = outputs_and_grads(vit_model.attend, [q, k, v])
    assert dtype == tf.bfloat16 and all(g.dtype == tf.bfloat16 for g in grads)
    plain, _, _ = outputs_and_grads(plain_attention, [q, k, v])
    exact, _, _ = outputs_and_grads(plain_attention, [tf.cast(a, tf.float64) for a in (q, k, v)])
    for name, got, baseline, want in zip(("out", "dq", "dk", "dv"), ours, plain, exact):
        assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max(), name
        rms_error = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert rms_error <= np.linalg.norm(baseline - want) / np.linalg.norm(want), name

    step = tf.function(lambda q, k, v: tf.gradients(vit_model.attend(q, k, v), [q, k, v],
                                                    grad_ys=upstream))
    ops = op_coverage.graph_op_dtypes(step.get_concrete_function(q, k, v).graph.as_graph_def())
    assert ops["Softmax"] == {"T=float32"}
    assert ops["BatchMatMulV2"] == {"T=bfloat16"}               # the products stay bfloat16


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_layer_norm_equals_keras_layer_normalization_with_gradients(policy):
    # inputs in the policy's compute dtype, as the layer gets them from the layers before it
    # (Keras 2 would round float32 inputs itself, Keras 3's LayerNormalization would not: by
    # up to 0.004 in float16 for x ~ N(3, 2), more than the output's own rounding)
    compute_dtype = {"float32": tf.float32, "mixed_float16": tf.float16,
                     "mixed_bfloat16": tf.bfloat16}[policy]
    x = tf.constant(RNG.normal(3.0, 2.0, size=(4, 7, 16)), compute_dtype)
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
    assert out.dtype == expected.dtype == compute_dtype
    x64 = tf.cast(x, tf.float64).numpy()
    x_hat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    tolerance = {"float32": 1e-5, "mixed_float16": 2e-3, "mixed_bfloat16": 3e-2}[policy]
    out = tf.cast(out, tf.float32)
    np.testing.assert_allclose(out.numpy(), x_hat * weights[0] + weights[1],
                               rtol=tolerance, atol=tolerance)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(),
                                   tf.cast(want, tf.float32).numpy(), rtol=tolerance,
                                   atol=tolerance)


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




# --- model options: stochastic depth, attention dropout, linear head, mean pooling -----------

def test_drop_path_is_the_identity_at_inference_and_at_rate_zero():
    x = tf.random.normal((64, 5, 8))
    for training in (False, None):
        np.testing.assert_array_equal(DropPath(0.5)(x, training=training).numpy(), x.numpy())
    np.testing.assert_array_equal(DropPath(0.0)(x, training=True).numpy(), x.numpy())
    for rate in (-0.1, 1.0):
        with pytest.raises(ValueError, match="rate must be in"):
            DropPath(rate)


@pytest.mark.parametrize("policy, dtype", [("float32", tf.float32),
                                           ("mixed_float16", tf.float16)])
def test_drop_path_zeroes_whole_samples_at_its_rate_and_scales_the_rest(policy, dtype):
    rate, batch = 0.25, 4000
    x = tf.cast(tf.random.uniform((batch, 3, 5), 1.0, 2.0), dtype)    # no zeros of its own
    out = DropPath(rate, dtype=policy)(x, training=True)
    assert out.dtype == dtype
    out, x = out.numpy().astype(np.float64), x.numpy().astype(np.float64)
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


def test_attention_dropout_plain_path_equals_the_fast_kernel_at_rate_zero():
    """attend_plain (autodiff, where attention dropout goes) gives attend's outputs and
    gradients when nothing is dropped (float64, random upstream gradient)."""
    b, h, t, dh = 2, 3, 7, 4
    q, k, v, upstream = (tf.constant(RNG.normal(size=s)) for s in
                         ((b, h, t, dh), (b, h, dh, t), (b, h, t, dh), (b, h, t, dh)))
    dropout = keras.layers.Dropout(0.0, dtype="float64")        # no cast to float32
    results = []
    for fn in (vit_model.attend, lambda *qkv: vit_model.attend_plain(*qkv),
               lambda *qkv: vit_model.attend_plain(*qkv, lambda w: dropout(w, training=True))):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = fn(q, k, v)
        results.append((out, tape.gradient(out, [q, k, v], output_gradients=upstream)))
    (fast, fast_grads), *plain = results
    for out, grads in plain:
        np.testing.assert_allclose(out.numpy(), fast.numpy(), rtol=1e-10)
        for got, expected in zip(grads, fast_grads):
            np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-9, atol=1e-12)


def test_attention_dropout_drops_weights_in_training_only(monkeypatch):
    # v = identity (T = Dh) makes attend_plain return the dropped (B, H, T, T) weights.
    b, h, t, rate = 8, 4, 32, 0.25
    q, k = RNG.normal(size=(b, h, t, t)), RNG.normal(size=(b, h, t, t))
    eye = np.broadcast_to(np.eye(t), (b, h, t, t))
    weights = tf.nn.softmax(q @ k, axis=-1).numpy()
    dropout = keras.layers.Dropout(rate, dtype="float64")
    dropped = vit_model.attend_plain(q, k, eye, lambda w: dropout(w, training=True)).numpy()
    zero = dropped == 0
    np.testing.assert_allclose(dropped[~zero], weights[~zero] / (1 - rate), rtol=1e-9)
    assert abs(zero.mean() - rate) < 0.02, zero.mean()      # 32,768 entries: sd 0.0024

    # Which path the layer takes: the fast kernel unless attention dropout is on in training.
    calls = []
    fast = vit_model.attend
    monkeypatch.setattr(vit_model, "attend", lambda *qkv: calls.append(1) or fast(*qkv))
    x = tf.constant(RNG.normal(size=(2, 5, 16)), tf.float32)
    off, on = MultiHeadSelfAttention(16, 4), MultiHeadSelfAttention(16, 4, attention_dropout=0.5)
    off(x)
    on(x)
    on.set_weights(off.get_weights())
    for layer, training, fast_path in ((off, True, True), (on, False, True), (on, True, False)):
        calls.clear()
        out = layer(x, training=training)
        assert bool(calls) == fast_path, (layer.attention_dropout_rate, training)
        if fast_path:                             # no dropout: the rate-0 layer's outputs
            np.testing.assert_allclose(out.numpy(), off(x).numpy(), rtol=1e-6, atol=1e-6)
        else:
            assert not np.allclose(out.numpy(), off(x).numpy(), atol=1e-3)


def test_linear_head_maps_the_class_token_straight_to_logits():
    """head_units=(): logits = norm(tokens)[:, 0] W + b, and a hand-counted parameter total."""
    model = small_model(head_units=())
    x = images(3)
    assert model.head_layers == [] and model.head_dropout is None
    assert model(x).shape == (3, 10)
    tokens = model.embed(x)
    for block in model.blocks:
        tokens = block(tokens)
    kernel, bias = model.classifier.get_weights()
    expected = model.norm(tokens).numpy()[:, 0] @ kernel + bias
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    d, m, p, t = 16, 8, 16 * 16 * 3, 4 + 1
    block = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    assert model.count_params() == (p * d + d) + d + t * d + block + 2 * d + (d * 10 + 10)


def test_mean_pooling_has_no_class_token_and_averages_the_patch_tokens():
    model = small_model(pooling="mean", head_units=(6,))
    x = images(3)
    assert model.class_token is None and model.num_tokens == 4
    assert model.position_embedding.weights[0].shape == (4, 16)
    assert not any("token" in weight.name for weight in model.weights)
    tokens = model.embed(x)
    assert tokens.shape == (3, 4, 16)
    for block in model.blocks:
        tokens = block(tokens)
    pooled = model.norm(tokens).numpy().mean(axis=1)                    # (B, D)
    (k1, b1), (k2, b2) = model.head_layers[0].get_weights(), model.classifier.get_weights()
    expected = vit_model.gelu(tf.constant(pooled @ k1 + b1)).numpy() @ k2 + b2
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert [w.shape for w in model.attention_weights(x)] == [(3, 2, 4, 4)]
    # parameters: the class-token model's, less its token and one position row
    class_token = small_model(head_units=(6,))
    assert model.count_params() == class_token.count_params() - 2 * 16
    with pytest.raises(ValueError, match="pooling must be one of"):
        VisionTransformer(10, pooling="max")
