"""Numerical kernels that the design-card files (vit_model.py, data_augmentations.py) are
built from, kept apart so that each of those stays one readable file.

    kernels    the ViT's ops on every Keras (keras.ops, a tf shim on Keras 2.10), GELU,
               LayerNorm and attention with closed-form gradients
    pixel_ops  PIL's AutoAugment/RandAugment pixel operations on float batches

May import: vitcifar.errors, vitcifar.config, vitcifar.backend; never vit_model or
data_augmentations.
"""
