"""kernels.py: GELU, the attention core and LayerNorm against numpy and their written-out
gradients against autodiff of the plain formulas, on whichever Keras runs the tests (Keras
2.10, Keras 3 on TensorFlow, or KERAS_BACKEND=torch for Keras 3 on PyTorch)."""
import math

import numpy as np
import pytest

import vit_model
from backends import TORCH, dtype_name, numpy, tensor, value_and_gradients
from vitcifar.ops import kernels
from vitcifar.ops.kernels import keras, ops

RNG = np.random.default_rng(0)
# Compared with float64 references: float32 rounds at 6e-8 relative, bfloat16 (8 significant
# bits) at 4e-3, so its results may differ by a few of those.
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2}
erf = np.vectorize(math.erf)


def as64(x):
    return numpy(ops.cast(x, "float64"))


def test_gelu_is_the_exact_erf_form():
    x = np.linspace(-8, 8, 401).astype(np.float32)
    expected = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / np.sqrt(2)))
    got = numpy(kernels.gelu(tensor(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, numpy(keras.activations.gelu(tensor(x), approximate=False)),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gelu_and_its_gradient_are_the_exact_formulas(dtype):
    """Under mixed bfloat16 GELU computes in bfloat16, as Keras's activations do: it and its
    gradient are then the exact formulas at the rounded inputs, to bfloat16's precision."""
    x = tensor(np.linspace(-8, 8, 401), dtype)
    x64 = as64(x)                                            # the values the op was given
    cdf = 0.5 * (1 + erf(x64 / np.sqrt(2)))
    y, (grad,) = value_and_gradients(kernels.gelu, [x], upstream=np.ones(401))
    assert dtype_name(y) == dtype_name(grad) == dtype
    tolerance = TOLERANCE[dtype]
    np.testing.assert_allclose(as64(y), x64 * cdf, rtol=tolerance, atol=tolerance / 10)
    np.testing.assert_allclose(as64(grad), cdf + x64 * np.exp(-x64 * x64 / 2) / np.sqrt(2 * np.pi),
                               rtol=tolerance, atol=tolerance / 10)


def plain_attention(q, k, v):
    return ops.softmax(q @ k, axis=-1) @ v


def attention_inputs(shape, rng, dtype=None):
    """q (B, H, T, Dh), k (B, H, Dh, T), v (B, H, T, Dh) and an upstream gradient like v."""
    b, h, t, dh = shape
    return [tensor(rng.normal(size=s), dtype) for s in
            ((b, h, t, dh), (b, h, dh, t), (b, h, t, dh), (b, h, t, dh))]


@pytest.mark.parametrize("shape", [(2, 8, 65, 8), (3, 2, 5, 4), (1, 1, 1, 3)])
def test_attend_equals_numpy_and_its_gradient_equals_autodiff(shape):
    """Forward against numpy; the hand-written gradient against the backend's autodiff of
    the plain softmax formula, both in float64 (upstream gradient random, not all ones)."""
    *qkv, upstream = attention_inputs(shape, RNG)
    q, k, v = (numpy(a) for a in qkv)
    scores = q @ k
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(numpy(kernels.attend(*qkv)), weights @ v, rtol=1e-10)
    (_, got), (_, expected) = (value_and_gradients(fn, qkv, upstream=upstream)
                               for fn in (kernels.attend, plain_attention))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(numpy(a), numpy(b), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 8, 65, 8), (3, 6, 16, 32)])      # sample's, fast's 6x192
def test_attend_in_bfloat16_has_float32_softmax_and_beats_bfloat16_autodiff(shape):
    """Under mixed bfloat16 the attention core takes and returns bfloat16, and computes its
    softmax and the softmax's backward in float32 (as Keras keeps the loss and LayerNorm
    statistics). Against the float64 formula at the same rounded inputs, its outputs and
    gradients are within bfloat16's precision, and no further off than autodiff of the plain
    formula computed all in bfloat16: the largest error relative to each tensor's largest
    entry, and the root-mean-square error relative to the tensor's norm (the largest single
    error is one draw's luck: over seeds 0-7 ours is 0.5-1.7x autodiff's, the RMS 0.83-0.99x)."""
    rng = np.random.default_rng(0)          # its own draw: not shifted by the tests before it
    q, k, v, upstream = attention_inputs(shape, rng, "bfloat16")
    q = q * ops.cast(1 / np.sqrt(shape[-1]), "bfloat16")        # scaled, as the layer does

    def outputs_and_grads(fn, inputs):
        out, grads = value_and_gradients(fn, inputs, upstream=upstream)
        return [as64(a) for a in (out, *grads)], [out, *grads]

    ours, tensors = outputs_and_grads(kernels.attend, [q, k, v])
    assert {dtype_name(a) for a in tensors} == {"bfloat16"}
    plain, _ = outputs_and_grads(plain_attention, [q, k, v])
    exact, _ = outputs_and_grads(plain_attention, [ops.cast(a, "float64") for a in (q, k, v)])
    for name, got, baseline, want in zip(("out", "dq", "dk", "dv"), ours, plain, exact):
        assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max(), name
        if not TORCH:     # PyTorch's bfloat16 softmax accumulates in float32 by itself
            rms_error = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert rms_error <= np.linalg.norm(baseline - want) / np.linalg.norm(want), name
    if not TORCH:
        assert_tensorflow_graph_keeps_products_bfloat16(q, k, v, upstream)


def assert_tensorflow_graph_keeps_products_bfloat16(q, k, v, upstream):
    import tensorflow as tf

    from vitcifar.backend import op_coverage
    step = tf.function(lambda q, k, v: tf.gradients(kernels.attend(q, k, v), [q, k, v],
                                                    grad_ys=upstream))
    ops_ = op_coverage.graph_op_dtypes(step.get_concrete_function(q, k, v).graph.as_graph_def())
    assert ops_["Softmax"] == {"T=float32"}
    assert ops_["BatchMatMulV2"] == {"T=bfloat16"}              # the products stay bfloat16


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_layer_norm_equals_keras_layer_normalization_with_gradients(policy):
    # inputs in the policy's compute dtype, as the layer gets them from the layers before it
    # (Keras 2 would round float32 inputs itself, Keras 3's LayerNormalization would not: by
    # up to 0.004 in float16 for x ~ N(3, 2), more than the output's own rounding)
    compute_dtype = {"float32": "float32", "mixed_float16": "float16",
                     "mixed_bfloat16": "bfloat16"}[policy]
    x = tensor(RNG.normal(3.0, 2.0, size=(4, 7, 16)), compute_dtype)
    upstream = RNG.normal(size=(4, 7, 16)).astype(np.float32)
    weights = [RNG.normal(1.0, 0.5, 16), RNG.normal(0.0, 0.5, 16)]
    results = []
    for layer in (vit_model.LayerNormalization(epsilon=1e-6, dtype=policy),
                  keras.layers.LayerNormalization(epsilon=1e-6, dtype=policy)):
        layer.build(tuple(x.shape))
        layer.set_weights(weights)
        assert dtype_name(layer(x)) == compute_dtype
        results.append(value_and_gradients(lambda x: ops.cast(layer(x), "float32"), [x],
                                           layer.trainable_weights, upstream))
    (out, grads), (_, expected_grads) = results
    x64 = as64(x)
    x_hat = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    tolerance = {"float32": 1e-5, "mixed_float16": 2e-3, "mixed_bfloat16": 3e-2}[policy]
    np.testing.assert_allclose(numpy(out), x_hat * weights[0] + weights[1],
                               rtol=tolerance, atol=tolerance)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(numpy(ops.cast(got, "float32")),
                                   numpy(ops.cast(want, "float32")), rtol=tolerance,
                                   atol=tolerance)


def test_attention_dropout_plain_path_equals_the_fast_kernel_at_rate_zero():
    """attend_plain (autodiff, where attention dropout goes) gives attend's outputs and
    gradients when nothing is dropped (float64, random upstream gradient)."""
    *qkv, upstream = attention_inputs((2, 3, 7, 4), RNG)
    dropout = keras.layers.Dropout(0.0, dtype="float64")        # no cast to float32
    results = [value_and_gradients(fn, qkv, upstream=upstream) for fn in (
        kernels.attend, lambda *qkv: kernels.attend_plain(*qkv),
        lambda *qkv: kernels.attend_plain(*qkv, lambda w: dropout(w, training=True)))]
    (fast, fast_grads), *plain = results
    for out, grads in plain:
        np.testing.assert_allclose(numpy(out), numpy(fast), rtol=1e-10)
        for got, expected in zip(grads, fast_grads):
            np.testing.assert_allclose(numpy(got), numpy(expected), rtol=1e-9, atol=1e-12)


def test_attention_dropout_drops_weights_at_its_rate():
    # v = identity (T = Dh) makes attend_plain return the dropped (B, H, T, T) weights.
    b, h, t, rate = 8, 4, 32, 0.25
    q, k = RNG.normal(size=(b, h, t, t)), RNG.normal(size=(b, h, t, t))
    scores = q @ k
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    eye = tensor(np.broadcast_to(np.eye(t), (b, h, t, t)).copy())
    dropout = keras.layers.Dropout(rate, dtype="float64")
    dropped = numpy(kernels.attend_plain(tensor(q), tensor(k), eye,
                                             lambda w: dropout(w, training=True)))
    zero = dropped == 0
    np.testing.assert_allclose(dropped[~zero], weights[~zero] / (1 - rate), rtol=1e-9)
    assert abs(zero.mean() - rate) < 0.02, zero.mean()      # 32,768 entries: sd 0.0024


@pytest.mark.parametrize("transpose_a, transpose_b", [(False, False), (True, False),
                                                      (False, True), (True, True)])
def test_matmul_transposes_the_last_two_axes(transpose_a, transpose_b):
    a = RNG.normal(size=(2, 3, 5, 4) if transpose_a else (2, 3, 4, 5))      # (4, 5) used
    b = RNG.normal(size=(2, 3, 6, 5) if transpose_b else (2, 3, 5, 6))      # (5, 6) used
    want = (np.swapaxes(a, -1, -2) if transpose_a else a) @ \
        (np.swapaxes(b, -1, -2) if transpose_b else b)
    got = kernels.matmul(tensor(a), tensor(b), transpose_a, transpose_b)
    np.testing.assert_allclose(numpy(got), want, rtol=1e-12)


@pytest.mark.skipif(not TORCH, reason="a PyTorch autograd graph (KERAS_BACKEND=torch)")
@pytest.mark.parametrize("name", ["gelu", "attend", "layer_norm"])
def test_a_kernels_output_is_freed_without_the_cycle_collector(name):
    """A closed-form gradient that holds its own output points back at that output's
    autograd node: a reference cycle that only Python's cycle collector frees. Seen on the
    attention core: about 5 MB a step kept on the tiny preset until gc ran."""
    import gc
    import weakref

    import torch
    rng = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=rng, requires_grad=True)

    inputs = {"gelu": lambda: (leaf(4, 8),),
              "attend": lambda: (leaf(2, 2, 5, 3), leaf(2, 2, 3, 5), leaf(2, 2, 5, 3)),
              "layer_norm": lambda: (leaf(4, 8), leaf(8), leaf(8), 1e-6)}[name]()
    gc.collect()
    gc.disable()
    try:
        out = getattr(kernels, name)(*inputs)
        out.sum().backward()
        freed = weakref.ref(out)
        del out
        assert freed() is None, f"{name}'s output is kept by a reference cycle"
    finally:
        gc.enable()
