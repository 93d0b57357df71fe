"""Floating-point operations of the model, counted from its layer shapes (no TensorFlow).

Convention: only matrix products are counted, at 2 FLOPs per multiply-add (patch projection,
fused QKV, Q K^T, attention x V, output projection, both MLP layers of every block and the
classifier head). Element-wise work (LayerNorm, softmax, GELU, dropout, biases, Adam) is
left out. A training step is counted as 3x the forward pass (the backward pass computes two
matrix products, for the input and for the weight gradient, per forward product).
"""
from __future__ import annotations

from vitcifar.config.settings import patch_grid_side

TRAIN_STEP_FACTOR = 3


def forward_flops_per_image(config, channels: int = 3) -> dict:
    """{part: FLOPs} of one (S, S, channels) image's forward pass for a TrainConfig-like
    object (S: config.image_size)."""
    side = patch_grid_side(config.image_size, config.patch_size, config.patch_stride)
    n = side * side                                  # patches
    t = n + (config.pooling == "class_token")        # tokens, a class token included
    d, m = config.embedding_dim, config.mlp_hidden_dim
    patch = config.patch_size ** 2 * channels
    per_block = {
        "qkv": 2 * t * d * 3 * d,
        "scores": 2 * t * t * d,                     # H heads x (T x Dh) @ (Dh x T)
        "attention_values": 2 * t * t * d,           # H heads x (T x T) @ (T x Dh)
        "output_proj": 2 * t * d * d,
        "mlp": 2 * t * d * m * 2,
    }
    widths = [d, *config.head_units, config.num_classes]
    parts = {"patch_proj": 2 * n * patch * d}
    parts.update({name: config.num_layers * value for name, value in per_block.items()})
    parts["head"] = sum(2 * a * b for a, b in zip(widths, widths[1:]))
    return parts


def train_flops_per_image(config) -> int:
    """FLOPs of one image in a training step (forward + backward), by the convention above."""
    return TRAIN_STEP_FACTOR * sum(forward_flops_per_image(config).values())
