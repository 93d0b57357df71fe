"""The Vision Transformer's numerical kernels, one code for every Keras the app runs on:
Keras 2.10 (tf.keras, TF 2.10: the DirectML stack, no keras.ops), Keras 3 on TensorFlow and
Keras 3 on PyTorch (KERAS_BACKEND=torch).

`ops` is keras.ops on Keras 3, and on Keras 2 a shim mapping the names the model uses to
their TensorFlow functions. On PyTorch nothing here imports or runs TensorFlow. A few forms
are chosen by backend where keras.ops would change the TensorFlow graph that training,
DirectML's kernel coverage and the ONNX/TFLite export rely on: products with a transposed
operand (one MatMul op with its adjoint flag, no Transpose), the gather of patch pixels
(tf.gather, no negative-index fix-up), overlapping patches (ExtractImagePatches; Keras 3's
keras.ops.image.extract_patches is a convolution with an identity kernel) and drop-path
masks (one stateful uniform draw, no seed variable).

GELU, LayerNorm and the attention core have their gradients written out (custom_gradient:
tf.custom_gradient on Keras 2, keras.ops.custom_gradient on Keras 3, a
torch.autograd.Function on PyTorch): on a CPU or a small GPU most of a training step is
element-wise work, and autodiff of these formulas emits several times the ops the closed
forms need. Shapes use B batch, H heads, T tokens, Dh head width, D width.

Imports no app module but keras_compat (vit_model imports this one).
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np

from vitcifar.backend.keras_compat import BACKEND, KERAS_3, keras

TENSORFLOW = BACKEND == "tensorflow"
if TENSORFLOW:
    import tensorflow as tf

if KERAS_3:
    ops = keras.ops
    standardize_dtype = keras.backend.standardize_dtype
else:                   # Keras 2: keras.ops's names (and argument order) on tf functions
    ops = types.SimpleNamespace(
        cast=tf.cast, convert_to_tensor=tf.convert_to_tensor, reshape=tf.reshape,
        transpose=tf.transpose, split=tf.split, concatenate=tf.concat, tile=tf.tile,
        shape=tf.shape, zeros=tf.zeros, arange=tf.range, matmul=tf.matmul,
        softmax=tf.nn.softmax, erf=tf.math.erf, exp=tf.exp, square=tf.square,
        rsqrt=tf.math.rsqrt, floor=tf.floor, mean=tf.reduce_mean, sum=tf.reduce_sum,
        custom_gradient=tf.custom_gradient, convert_to_numpy=np.asarray)

    def standardize_dtype(dtype) -> str:
        return tf.as_dtype(dtype).name


def custom_gradient(forward):
    """ops.custom_gradient for `forward(*inputs) -> (output, grad)` with grad(upstream) ->
    one gradient per input. PyTorch's form calls grad(*inputs, upstream=...), TensorFlow's
    grad(upstream): adapted here, once."""
    @functools.wraps(forward)
    def forward_with_any_grad_call(*inputs):
        output, grad = forward(*inputs)
        return output, lambda *args, upstream=None: grad(args[0] if upstream is None
                                                          else upstream)
    return ops.custom_gradient(forward_with_any_grad_call)


def statistics_dtype(dtype) -> str:
    """"float32" for the half formats, else `dtype`'s name (float32, or the tests'
    float64): the format of the attention softmax and of pooled means under mixed
    precision, as Keras keeps the loss and normalisation statistics in float32."""
    name = standardize_dtype(dtype)
    return "float32" if name in ("float16", "bfloat16") else name


def matmul(a, b, transpose_a=False, transpose_b=False):
    """a @ b over the last two axes, either operand transposed there first. TensorFlow's
    MatMul takes the transposes as flags (no Transpose op); elsewhere they are views, and
    the product is the tensors' own `@` (keras.ops.matmul on PyTorch computes float64 in
    float32)."""
    if TENSORFLOW:
        return tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    return ((ops.swapaxes(a, -1, -2) if transpose_a else a)
            @ (ops.swapaxes(b, -1, -2) if transpose_b else b))


@custom_gradient
def gelu(x):
    """Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)): TF 2.10's tf.nn.gelu formula.
    Current TF's tf.nn.gelu computes the same through erfc, whose kernel and gradient take
    about three times as long on the CPU. Written in the op order of that formula, which the
    TFLite converter fuses into its GELU op (TFLite has no Erf) and ONNX Runtime into its
    Gelu kernel. The gradient is written out, Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi),
    reusing 2 Phi(x) from the forward pass: fewer element-wise ops than differentiating the
    formula op by op."""
    twice_cdf = 1.0 + ops.erf(x / ops.cast(math.sqrt(2.0), x.dtype))      # 2 Phi(x)

    def grad(upstream):
        density = ops.exp(-0.5 * ops.square(x)) * ops.cast(1.0 / math.sqrt(2.0 * math.pi),
                                                            x.dtype)
        return upstream * (0.5 * twice_cdf + x * density)

    return 0.5 * x * twice_cdf, grad


def attention_weights(q, k):
    """softmax(q k) over the last axis: q (B, H, T, Dh) already scaled, k (B, H, Dh, T) ->
    P (B, H, T, T), computed in statistics_dtype (float32 under mixed precision)."""
    return ops.softmax(ops.cast(matmul(q, k), statistics_dtype(q.dtype)), axis=-1)


@custom_gradient
def attend(q, k, v):
    """softmax(q k) v per head: q (B, H, T, Dh) already scaled by 1/sqrt(Dh), k (B, H, Dh, T),
    v (B, H, T, Dh) -> (B, H, T, Dh).

    The gradient is written out so that the softmax backward takes two element-wise passes
    over (B, H, T, T) instead of autodiff's four: with P the weights and O = P v,
    dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O) (the identity
    FlashAttention uses) is a sum over (B, H, T, Dh), 8x smaller for the sample preset.
    Under mixed precision the matrix products run in the inputs' format and the softmax and
    its backward (P, dP, the row sums, dS) in float32."""
    wide = statistics_dtype(q.dtype)
    weights = attention_weights(q, k)                                       # P: (B, H, T, T)
    narrow = ops.cast(weights, v.dtype)
    context = matmul(narrow, v)
    # The backward reads O; on PyTorch through a detached view of it: the returned tensor
    # points to its autograd node, which holds this closure, and a closure holding that
    # tensor makes a reference cycle that only Python's cycle collector frees (measured:
    # about 5 MB a step kept, 2 GB in 240 tiny-preset steps). TensorFlow's graph keeps it.
    saved = context if TENSORFLOW else ops.stop_gradient(context)

    def grad(d_context):
        d_v = matmul(narrow, d_context, transpose_a=True)
        d_weights = ops.cast(matmul(d_context, v, transpose_b=True), wide)  # dP
        row = ops.sum(ops.cast(d_context, wide) * ops.cast(saved, wide), axis=-1,
                      keepdims=True)                                        # (B, H, T, 1)
        d_scores = ops.cast(weights * (d_weights - row), q.dtype)
        return (matmul(d_scores, k, transpose_b=True),                      # dq: (B, H, T, Dh)
                matmul(q, d_scores, transpose_a=True), d_v)                 # dk: (B, H, Dh, T)

    return context, grad


def attend_plain(q, k, v, dropout=None):
    """`attend` by autodiff, with `dropout` (a function of the (B, H, T, T) weights, e.g. a
    Dropout layer in training) applied to the weights before they meet v. The slower path,
    used only when attention dropout is on in training; with dropout=None it is the plain
    formula that `attend`'s gradient is tested against."""
    weights = attention_weights(q, k)                                       # (B, H, T, T)
    if dropout is not None:
        weights = dropout(weights)
    return matmul(ops.cast(weights, v.dtype), v)


def layer_norm(x, gamma, beta, epsilon):
    """(x - mean) / sqrt(var + epsilon) * gamma + beta over the last axis, float32 in and out
    (x (..., D), gamma and beta (D,)), with the closed-form gradient (three reductions)
    instead of autodiff's op-by-op one."""
    @custom_gradient
    def normalise(x, gamma, beta):
        centred = x - ops.mean(x, axis=-1, keepdims=True)
        inv_std = ops.rsqrt(ops.mean(ops.square(centred), axis=-1, keepdims=True) + epsilon)
        x_hat = centred * inv_std

        def grad(upstream):
            g = upstream * gamma
            d_x = inv_std * (g - ops.mean(g, axis=-1, keepdims=True)
                             - x_hat * ops.mean(g * x_hat, axis=-1, keepdims=True))
            batch_axes = list(range(len(x.shape) - 1))
            return (d_x, ops.sum(upstream * x_hat, axis=batch_axes),
                    ops.sum(upstream, axis=batch_axes))

        return x_hat * gamma + beta, grad

    return normalise(x, gamma, beta)


def per_sample_uniform(x):
    """U[0, 1) float32 of shape (B, 1, ..., 1) for x (B, ...): one draw per sample. On
    TensorFlow one stateful draw (an op every device, DirectML included, has); elsewhere
    keras.random's global seed generator (keras.utils.set_random_seed seeds it)."""
    if TENSORFLOW:
        shape = tf.concat([tf.shape(x)[:1], tf.ones([len(x.shape) - 1], tf.int32)], axis=0)
        return tf.random.uniform(shape, dtype=tf.float32)
    return keras.random.uniform((x.shape[0],) + (1,) * (len(x.shape) - 1), dtype="float32")


def patch_indices(height: int, width: int, channels: int, patch_size: int,
                  patch_stride: int) -> np.ndarray:
    """(N, P*P*C) int32: for each patch in row-major order, the indices of its pixels in an
    image flattened to H*W*C, in (row, column, channel) order."""
    p = patch_size
    top = np.arange(0, height - p + 1, patch_stride)[:, None, None, None, None]
    left = np.arange(0, width - p + 1, patch_stride)[None, :, None, None, None]
    row = top + np.arange(p)[None, None, :, None, None]           # (rows, 1, P, 1, 1)
    column = left + np.arange(p)[None, None, None, :, None]       # (1, cols, 1, P, 1)
    index = (row * width + column) * channels + np.arange(channels)   # (rows, cols, P, P, C)
    return index.reshape(-1, p * p * channels).astype(np.int32)


def gathered_patches(images, patch_size: int, patch_stride: int):
    """(B, S, S, C) -> (B, N, P*P*C) patches by one gather of the flattened images."""
    _, height, width, channels = images.shape
    flat = ops.reshape(images, (-1, height * width * channels))             # (B, S*S*C)
    indices = patch_indices(height, width, channels, patch_size, patch_stride)
    if TENSORFLOW:
        return tf.gather(flat, indices, axis=1)
    return ops.take(flat, ops.convert_to_tensor(indices), axis=1)


def extracted_patches(images, patch_size: int, patch_stride: int):
    """(B, S, S, C) -> (B, N, P*P*C) patches of any size and stride: ExtractImagePatches on
    TensorFlow, the gather elsewhere (its gradient is an index_add on PyTorch)."""
    if not TENSORFLOW:
        return gathered_patches(images, patch_size, patch_stride)
    p, s = patch_size, patch_stride
    patches = tf.image.extract_patches(images, sizes=[1, p, p, 1], strides=[1, s, s, 1],
                                       rates=[1, 1, 1, 1], padding="VALID")
    _, rows, cols, depth = patches.shape
    return tf.reshape(patches, [-1, rows * cols, depth])
