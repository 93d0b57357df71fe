"""Numerical kernels that the design-card files (vit_model.py, data_augmentations.py) are
built from, kept apart so that each of those stays one readable file.

    pixel_ops  PIL's AutoAugment/RandAugment pixel operations on float batches

May import: vitcifar.errors, vitcifar.config, vitcifar.backend; never vit_model or
data_augmentations.
"""
