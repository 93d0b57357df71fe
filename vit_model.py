"""A Vision Transformer for 32x32 images, one definition for Keras 2.10 (TF 2.10 + DirectML),
Keras 3 on TensorFlow and Keras 3 on PyTorch, with the same layer names and weight paths on
all three: weights trained on one load into the others.

Shapes below use B = batch, N = patches, T tokens (T = N + 1 with the class token first, the
default; T = N under mean pooling), D = embedding width, H = heads, Dh = D / H. Attention
is Dense + reshape + matmul + softmax: DirectML has no kernel for Einsum, so
keras.layers.MultiHeadAttention (EinsumDense) would fall back to the CPU, and
torch-directml sends scaled_dot_product_attention to the CPU.
GELU is the exact (erf) form on every stack: Keras 3's "gelu" string means the tanh
approximation while Keras 2's means erf, so the string would change the model between stacks.
The numerical kernels (GELU, LayerNorm and the attention core with their written-out
gradients, and the backend-neutral `ops`) are in kernels.py; on PyTorch the model runs
no TensorFlow op.

Saving: `save_model` writes the stack's native full-model format (Keras 3: a .keras file;
TF 2.10: a SavedModel folder). Neither opens on the other stack; what is portable is a run's
config.json plus its weights, rebuilt with `VisionTransformer.from_config`.
"""
from __future__ import annotations

import math

from vitcifar.backend.keras_compat import KERAS_3, register
from vitcifar.config.settings import POOLINGS, patch_grid_side
from vitcifar.ops.kernels import (attend, attend_plain, attention_weights, extracted_patches,
                                  gathered_patches, gelu, keras, layer_norm, matmul, ops,
                                  per_sample_uniform, statistics_dtype)


@register
class PatchExtractor(keras.layers.Layer):
    """(B, S, S, C) images -> (B, N, P*P*C): patches in row-major order, each flattened in
    (row, column, channel) order. N = ((S - P) // stride + 1) ** 2; stride < P overlaps.

    `gather=True` takes the same values by one Gather of precomputed pixel indices from the
    flattened images, for any size and stride: the form model_export uses, because every
    converter takes it with a dynamic batch (tf2onnx converts ExtractImagePatches only for
    a static one; TF 2.10's TFLite transposes at most 5 axes). Training keeps the default,
    whose gradient needs no scatter."""

    def __init__(self, patch_size: int, patch_stride: int, gather: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.gather = gather

    def call(self, images):
        p, s = self.patch_size, self.patch_stride
        _, height, width, channels = images.shape
        if self.gather:
            return gathered_patches(images, p, s)
        if p == s and height % p == 0 and width % p == 0:
            # Non-overlapping patches are a reshape and one transpose: same values and
            # order as extract_patches, in plain ops every backend has.
            rows, cols = height // p, width // p
            grid = ops.reshape(images, (-1, rows, p, cols, p, channels))
            grid = ops.transpose(grid, (0, 1, 3, 2, 4, 5))              # (B, rows, cols, p, p, C)
            return ops.reshape(grid, (-1, rows * cols, p * p * channels))
        return extracted_patches(images, p, s)

    def compute_output_shape(self, input_shape):
        side = patch_grid_side(input_shape[1], self.patch_size, self.patch_stride)
        return (input_shape[0], side * side, self.patch_size ** 2 * input_shape[3])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size,
                "patch_stride": self.patch_stride, "gather": self.gather}


@register
class ClassToken(keras.layers.Layer):
    """(B, N, D) -> (B, N + 1, D): prepends one learned D-vector to every sequence."""

    def build(self, input_shape):
        self.token = self.add_weight(name="token", shape=(1, 1, input_shape[-1]),
                                     initializer=keras.initializers.RandomNormal(stddev=0.02),
                                     trainable=True)
        super().build(input_shape)

    def call(self, tokens):
        token = ops.cast(self.token, tokens.dtype)                         # (1, 1, D)
        return ops.concatenate([ops.tile(token, (ops.shape(tokens)[0], 1, 1)), tokens], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] + 1, input_shape[2])


@register
class LayerNormalization(keras.layers.LayerNormalization):
    """keras.layers.LayerNormalization over the last axis (with scale and offset, the
    defaults) computed by kernels.layer_norm: same weights, config and values, a cheaper gradient.
    Computes in float32 under a mixed-precision policy, as Keras does. It keeps Keras's class
    name because Keras 3 files key a layer's weights by it: a .keras file of a model built
    with keras.layers.LayerNormalization loads into this one."""

    def build(self, input_shape):
        super().build(input_shape)
        rank = len(input_shape)
        axes = [self.axis] if isinstance(self.axis, int) else list(self.axis)
        if ([axis % rank for axis in axes] != [rank - 1] or not (self.center and self.scale)
                or getattr(self, "rms_scaling", False)):                  # Keras 3 option
            raise ValueError("LayerNormalization here supports only the last axis, with center "
                             "and scale")

    def call(self, inputs):
        gamma, beta = (ops.cast(ops.convert_to_tensor(weight), "float32")
                       for weight in (self.gamma, self.beta))                # (D,) each
        out = layer_norm(ops.cast(inputs, "float32"), gamma, beta, self.epsilon)
        return ops.cast(out, self.compute_dtype)


@register
class DropPath(keras.layers.Layer):
    """Stochastic depth (Huang et al. 2016; timm's DropPath) on a residual branch's output
    (B, ...): in training each sample's whole branch is dropped with probability `rate` and
    the kept ones scaled by 1 / (1 - rate), so the expected output is unchanged; identity at
    inference or at rate 0. The mask is one uniform draw of shape (B, 1, ..., 1)
    (kernels.per_sample_uniform)."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must be in [0, 1), not {rate}")
        self.rate = rate

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # floor(keep + U[0, 1)) is 1 with probability keep, else 0: (B, 1, ..., 1)
        mask = ops.floor(keep + per_sample_uniform(x)) * (1.0 / keep)
        return x * ops.cast(mask, x.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


@register
class MultiHeadSelfAttention(keras.layers.Layer):
    """softmax(Q K^T / sqrt(Dh)) V over H heads, (B, T, D) -> (B, T, D).

    One fused Dense makes Q, K and V; with `return_attention=True` the (B, H, T, T)
    attention weights come back too (for attention maps). `attention_dropout` drops entries
    of the (B, H, T, T) weights in training; it takes the autodiff path `attend_plain`, so
    at rate 0 (the default) training keeps the fast `attend` kernel."""

    def __init__(self, embedding_dim: int, num_heads: int, attention_dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim {embedding_dim} is not divisible by "
                             f"num_heads {num_heads}")
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.head_dim = embedding_dim // num_heads
        self.attention_dropout_rate = attention_dropout
        self.qkv = keras.layers.Dense(3 * embedding_dim, name="qkv")
        self.output_proj = keras.layers.Dense(embedding_dim, name="output_proj")
        # Only when on: at rate 0 the layer has exactly the sublayers (and, on Keras 3, the
        # seed variables) it had before this option existed.
        self.attention_dropout = (keras.layers.Dropout(attention_dropout,
                                                       name="attention_dropout")
                                  if attention_dropout > 0 else None)

    def call(self, x, training=None, return_attention=False):
        tokens, heads, head_dim = x.shape[1], self.num_heads, self.head_dim
        q, k, v = ops.split(self.qkv(x), 3, axis=-1)                        # 3 x (B, T, D)
        q = q * ops.cast(1.0 / math.sqrt(head_dim), q.dtype)     # scaled before the product
        # One 4-D transpose each (cheaper than a 5-D transpose of all three and an unstack,
        # forwards and backwards); K goes straight to (B, H, Dh, T) for Q K^T.
        q = ops.transpose(ops.reshape(q, (-1, tokens, heads, head_dim)), (0, 2, 1, 3))
        k = ops.transpose(ops.reshape(k, (-1, tokens, heads, head_dim)), (0, 2, 3, 1))
        v = ops.transpose(ops.reshape(v, (-1, tokens, heads, head_dim)), (0, 2, 1, 3))
        if return_attention:                      # inference only: no gradient needed
            weights = attention_weights(q, k)                               # (B, H, T, T)
            context = matmul(ops.cast(weights, v.dtype), v)
        elif training and self.attention_dropout is not None:
            context = attend_plain(q, k, v, lambda weights: self.attention_dropout(
                weights, training=True))
        else:
            context = attend(q, k, v)                                       # (B, H, T, Dh)
        context = ops.transpose(context, (0, 2, 1, 3))                      # (B, T, H, Dh)
        out = self.output_proj(ops.reshape(context, (-1, tokens, self.embedding_dim)))
        return (out, weights) if return_attention else out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "num_heads": self.num_heads, "attention_dropout": self.attention_dropout_rate}


@register
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm block, (B, T, D) -> (B, T, D): x + DropPath(Drop(MHSA(LN(x)))), then
    x + DropPath(Drop(MLP(LN(x)))), as timm's Block. `drop_path` is this block's stochastic
    depth rate, `attention_dropout` the rate on its attention weights."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_hidden_dim: int,
                 dropout: float, drop_path: float = 0.0, attention_dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_hidden_dim = mlp_hidden_dim
        self.dropout_rate = dropout
        self.drop_path_rate = drop_path
        self.attention_dropout_rate = attention_dropout
        self.attention_norm = LayerNormalization(epsilon=1e-6, name="attention_norm")
        self.attention = MultiHeadSelfAttention(embedding_dim, num_heads, attention_dropout,
                                                name="attention")
        self.mlp_norm = LayerNormalization(epsilon=1e-6, name="mlp_norm")
        self.mlp_in = keras.layers.Dense(mlp_hidden_dim, name="mlp_in")
        self.mlp_out = keras.layers.Dense(embedding_dim, name="mlp_out")
        self.dropout = keras.layers.Dropout(dropout, name="dropout")
        self.drop_path = DropPath(drop_path, name="drop_path")          # no weights

    def call(self, x, training=None, return_attention=False):
        attended = self.attention(self.attention_norm(x), training=training,
                                  return_attention=return_attention)
        if return_attention:
            attended, weights = attended
        x = x + self.drop_path(self.dropout(attended, training=training), training=training)
        hidden = self.dropout(gelu(self.mlp_in(self.mlp_norm(x))), training=training)
        x = x + self.drop_path(self.dropout(self.mlp_out(hidden), training=training),
                               training=training)
        return (x, weights) if return_attention else x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "num_heads": self.num_heads, "mlp_hidden_dim": self.mlp_hidden_dim,
                "dropout": self.dropout_rate, "drop_path": self.drop_path_rate,
                "attention_dropout": self.attention_dropout_rate}


@register
class VisionTransformer(keras.Model):
    """uint8 or float 0..255 images (B, S, S, 3) -> class logits (B, num_classes).

    Options (each default is the original model): `drop_path`, the stochastic depth rate of
    the last block, rising linearly from 0 at block 0 (timm's schedule); `attention_dropout`
    on every block's attention weights; `head_units=()` for a plain linear classifier on the
    pooled token; `pooling` "class_token" (read the class token after the final norm) or
    "mean" (average the N patch tokens after the final norm, with no class token: T = N, as
    timm's global_pool="avg", class_token=False)."""

    def __init__(self, num_classes: int, image_size: int = 32, patch_size: int = 4,
                 patch_stride: int = 4, num_layers: int = 8, embedding_dim: int = 64,
                 num_heads: int = 8, mlp_hidden_dim: int = 256, head_units=(512, 256),
                 dropout: float = 0.2, drop_path: float = 0.0, attention_dropout: float = 0.0,
                 pooling: str = "class_token", **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), not {drop_path}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.patch_size = patch_size
        self.patch_stride = patch_stride
        self.num_layers = num_layers
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_hidden_dim = mlp_hidden_dim
        self.head_units = tuple(head_units)
        self.dropout_rate = dropout
        self.drop_path_rate = drop_path
        self.attention_dropout_rate = attention_dropout
        self.pooling = pooling
        uses_class_token = pooling == "class_token"
        self.num_tokens = (patch_grid_side(image_size, patch_size, patch_stride) ** 2
                           + int(uses_class_token))

        self.patches = PatchExtractor(patch_size, patch_stride, name="patches")
        self.patch_proj = keras.layers.Dense(embedding_dim, name="patch_proj")
        self.class_token = ClassToken(name="class_token") if uses_class_token else None
        self.position_embedding = keras.layers.Embedding(
            self.num_tokens, embedding_dim, name="position_embedding",
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.blocks = [TransformerBlock(embedding_dim, num_heads, mlp_hidden_dim, dropout,
                                        drop_path=rate, attention_dropout=attention_dropout,
                                        name=f"block_{i}")
                       for i, rate in enumerate(self.drop_path_rates())]
        self.norm = LayerNormalization(epsilon=1e-6, name="norm")
        self.head_layers = [keras.layers.Dense(units, name=f"head_{i}")
                            for i, units in enumerate(self.head_units)]
        # A linear classifier (head_units=()) has no hidden layer to drop out of.
        self.head_dropout = (keras.layers.Dropout(dropout, name="head_dropout")
                             if self.head_units else None)
        # float32 logits even under a mixed-precision policy, for a stable softmax loss.
        self.classifier = keras.layers.Dense(num_classes, dtype="float32", name="logits")

    def drop_path_rates(self):
        """Block i of L gets drop_path * i / (L - 1): 0 for the first, drop_path for the
        last (a single block gets 0)."""
        last = self.num_layers - 1
        return [self.drop_path_rate * i / last if last > 0 else 0.0
                for i in range(self.num_layers)]

    def embed(self, images):
        """(B, S, S, 3) 0..255 -> (B, T, D) tokens, positions added: the class token first
        (class-token pooling), or the N patch tokens alone (mean pooling)."""
        x = ops.cast(images, self.compute_dtype) * ops.cast(1.0 / 255.0, self.compute_dtype)
        tokens = self.patch_proj(self.patches(x))                           # (B, N, D)
        if self.class_token is not None:
            tokens = self.class_token(tokens)                               # (B, N + 1, D)
        # The whole table (T, D) is read, not looked up at range(T): the same values, but a
        # dense gradient. A lookup's gradient is IndexedSlices, which tf.distribute sums over
        # replicas by concatenating (duplicate indices), and Keras 3's Adam squares those
        # slices one by one (its sparse square), so its second moment would be the sum of
        # the replicas' squares, not the square of their sum: the table would train
        # differently on several replicas than on one.
        if not self.position_embedding.built:
            self.position_embedding(ops.arange(self.num_tokens))  # creates the table
        return tokens + ops.cast(self.position_embedding.embeddings, tokens.dtype)

    def call(self, images, training=None):
        x = self.embed(images)
        for block in self.blocks:
            x = block(x, training=training)
        x = self.norm(x)                                                    # (B, T, D)
        if self.class_token is not None:
            x = x[:, 0]                                                     # (B, D)
        else:                                   # a float32 mean under mixed precision
            x = ops.mean(ops.cast(x, statistics_dtype(x.dtype)), axis=1)
        for dense in self.head_layers:
            x = self.head_dropout(gelu(dense(x)), training=training)
        return self.classifier(x)

    def attention_weights(self, images):
        """Per block, the (B, H, T, T) attention weights for these images (inference mode)."""
        x, maps = self.embed(images), []
        for block in self.blocks:
            x, weights = block(x, training=False, return_attention=True)
            maps.append(weights)
        return maps

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable,
                "num_classes": self.num_classes, "image_size": self.image_size,
                "patch_size": self.patch_size, "patch_stride": self.patch_stride,
                "num_layers": self.num_layers, "embedding_dim": self.embedding_dim,
                "num_heads": self.num_heads, "mlp_hidden_dim": self.mlp_hidden_dim,
                "head_units": list(self.head_units), "dropout": self.dropout_rate,
                "drop_path": self.drop_path_rate,
                "attention_dropout": self.attention_dropout_rate, "pooling": self.pooling}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def build_model(config) -> VisionTransformer:
    """The model a TrainConfig describes, built (weights created) for its SxSx3 images."""
    model = VisionTransformer(
        num_classes=config.num_classes, image_size=config.image_size,
        patch_size=config.patch_size, patch_stride=config.patch_stride,
        num_layers=config.num_layers,
        embedding_dim=config.embedding_dim, num_heads=config.num_heads,
        mlp_hidden_dim=config.mlp_hidden_dim, head_units=config.head_units,
        dropout=config.dropout, drop_path=config.drop_path,
        attention_dropout=config.attention_dropout, pooling=config.pooling, name="vit")
    model(ops.zeros((1, config.image_size, config.image_size, 3), "uint8"))
    return model


def save_model(model: keras.Model, path: str) -> str:
    """Full model in the stack's own format; returns the path written (.keras appended on
    Keras 3)."""
    if KERAS_3:
        path = path if path.endswith(".keras") else path + ".keras"
        model.save(path)
    else:
        model.save(path, save_format="tf", include_optimizer=False)
    return path


def load_model(path: str) -> keras.Model:
    return keras.models.load_model(path, compile=False)
