"""The named presets: each a TrainConfig, chosen with --preset NAME.

Each preset is a TrainConfig; every flag given on top overrides it. CIFAR accuracies below
are the sources' own: CIFAR cannot be downloaded on this project's machines, so none of them
has been reproduced here (benchmarks/README.md has what was measured, on what).

``sample`` (the default): the seed sample's model and schedule::

    python train_cifar10.py                      # = --preset sample

  A 0.6 M-parameter ViT (4x4 patches -> 64 tokens + a class token, 8 blocks of width 64,
  MLP head 512-256), Adam 1e-3 halved after 10 epochs without a better validation top-1,
  batch 512, up to 100 epochs; crop, flip and RandAugment 2/9. No published accuracy.

``fast``: the best accuracy in a short, fixed time that benchmarks/time_to_accuracy.py
found on this project's 2-core CPUs (Fashion-MNIST packed as CIFAR-10, the only real images
here; figures in benchmarks/README.md)::

    python train_cifar10.py --preset fast         # 3 minutes of training
    python train_cifar10.py --preset fast --time-budget 15

  Measured: 88.3% test top-1 (88.20-88.40%) in whole commands of 179-180 s, 7-8 epochs,
  2 seeds, `python -m benchmarks.time_to_accuracy --preset fast --seeds 2` (current stack,
  a 2-core AMD EPYC with AVX512-BF16, the Fashion-MNIST proxy: no CIFAR figure; float32,
  which --mixed-precision auto chose: bfloat16's block was only 1.17x; commit 82b19b5).
  Over all 8 runs of this model there (4 pairs, 3 versions of the code): median 88.2%
  (87.5-88.4%), pairs' medians 87.8-88.3%. The model came from eight shapes
  tried there in the same 3 minutes (nine commands, seed 0; benchmarks/README.md, "A
  smaller model for 3 minutes"): 6 blocks of width 192, `fast` until then, saw 2.8 epochs
  and reached 86.4% (86.6-86.7% over 2 seeds at 28d3cba); the smaller ones, which see more
  epochs, 87.1-88.3%. In a budget this short a model that sees more epochs beats a
  larger one that sees fewer. Figures of older commits (87.1% on an AVX-512/AMX Xeon,
  84.9% on an AVX2 EPYC, a weight EMA and batch 256 not adopted) are of that 6x192 model.

  --time-budget 3: the run times its first steps and fits as many steps as end within 3
  minutes (the last epoch cut short), warming up over 6% of them, then cosine decay to the
  last. 8x8 patches (16 tokens: attention is cheap), 3 blocks of width 128, 4 heads,
  MLP 256 (0.4 M parameters), mean pooling into a linear classifier, no dropout; AdamW 2e-3,
  weight decay 0.05, batch 128, label smoothing 0.1; horizontal flips only (at a few epochs
  stronger augmentation costs more than it brings), and regularisation "auto": mixing from
  10 epochs on, growing with the epochs (regularisation_rule). Each epoch validates on 3,000
  held-out images (of CIFAR's 7,500; a top-1 near 85% to about +-0.7%), so the budget's
  seconds go to training: on the AVX2 EPYC, validation 6-7 s of the command against 9-14 s,
  and 84.0% (83.5-84.1%, 4 runs) against 83.8% (83.4-84.0%, 4 runs) validating all 9,000.
  16 tokens and 3 narrow blocks cap its CIFAR accuracy well below the 4x4-patch recipes':
  it is for a good model soon, not the best one.

``vit_lite``: ViT-Lite-7/4 of Hassani et al. 2021, "Escaping the Big Data Paradigm with
Compact Transformers" (settings from the authors' SHI-Labs/Compact-Transformers: src/vit.py,
configs/datasets/cifar10.yml); reported 91.4% CIFAR-10 / 69.8% CIFAR-100 top-1::

    python train_cifar10.py --preset vit_lite

  4x4 patches, 7 blocks of width 256, 4 heads, MLP 512, class token into a linear
  classifier, attention dropout 0.1, stochastic depth 0.1; AdamW 5.5e-4, weight decay 0.06,
  batch 128, 10 warmup epochs then cosine to 1e-5, 200 epochs (the paper's table; the repo's
  config runs 300); label smoothing 0.1, mixup 0.8, cutmix 1.0, random erasing 0.25,
  RandAugment 2/9 over all operations. Where this app differs: random crops of a 4-pixel
  padding instead of random-resized crops of 80-100% of the image, RandAugment's magnitude
  drawn uniformly up to 9 instead of timm's normal(9, 0.5), mixing on every image instead of
  every batch, no warmup from 1e-5, no 10 cooldown epochs, on a CPU float32 unless bfloat16
  is measured faster (--mixed-precision auto).

``vit_small_data``: the ViT baseline of Lee et al. 2021, "Vision Transformer for Small-Size
Datasets" (settings from the authors' aanna0701/SPT_LSA_ViT main.py); reported 93.58%
CIFAR-10 / 73.81% CIFAR-100 top-1 after 100 epochs with repeated augmentation x3::

    python train_cifar10.py --preset vit_small_data

  4x4 patches, 9 blocks of width 192, 12 heads of 16, MLP 384 (ratio 2), class token into a
  linear classifier, stochastic depth 0.1; AdamW 1e-3, weight decay 0.05, batch 128, 10
  warmup epochs then cosine, 100 epochs; label smoothing 0.1, mixup and cutmix with alpha 1,
  random erasing 0.25 of up to 40% of the image. Where this app differs: no repeated
  augmentation (each image once per epoch, so the same 100 epochs see a third of the
  augmented copies), RandAugment 2/9 over all operations in place of the AutoAugment CIFAR
  policy, mixup or cutmix on every image instead of on half the batches, cosine to 1e-5.

``tiny``: a seconds-long smoke run for checking an install::

    python train_cifar10.py --preset tiny --data-dir DIR
"""
from __future__ import annotations

from vitcifar.config.settings import RANDAUGMENT_OPS, TrainConfig
from vitcifar.config.views import override


def _preset(**values) -> TrainConfig:
    return override(TrainConfig(), **values)


PRESETS = {
    # The seed sample: the dataclass defaults.
    "sample": TrainConfig(),
    # Seconds per epoch on a laptop CPU; for checking an installation, not for accuracy.
    "tiny": TrainConfig(patch_size=8, patch_stride=8, num_layers=2, embedding_dim=32,
                        num_heads=4, mlp_hidden_dim=64, head_units=(64,), batch_size=128,
                        epochs=3, patience=2),
    # The best accuracy for a short budget found with benchmarks/time_to_accuracy.py (see the
    # module docstring, "fast").
    "fast": _preset(
        patch_size=8, patch_stride=8, num_layers=3, embedding_dim=128, num_heads=4,
        mlp_hidden_dim=256, head_units=(), dropout=0.0, pooling="mean",
        optimizer="adamw", learning_rate=2e-3, weight_decay=0.05, lr_schedule="cosine",
        warmup_epochs=0.3, min_learning_rate=1e-5, epochs=5, batch_size=128,
        label_smoothing=0.1, time_budget=3.0, crop_padding=0, randaugment_n=0,
        regularisation="auto", validation_images=3000),
    # ViT-Lite-7/4 of Hassani et al. 2021 (see the module docstring, "vit_lite").
    "vit_lite": _preset(
        patch_size=4, patch_stride=4, num_layers=7, embedding_dim=256, num_heads=4,
        mlp_hidden_dim=512, head_units=(), dropout=0.0, attention_dropout=0.1, drop_path=0.1,
        optimizer="adamw", learning_rate=5.5e-4, weight_decay=0.06, lr_schedule="cosine",
        warmup_epochs=10, min_learning_rate=1e-5, epochs=200, batch_size=128,
        label_smoothing=0.1, randaugment_ops=RANDAUGMENT_OPS, randaugment_n=2,
        randaugment_magnitude=9.0, erasing_prob=0.25, mixup_alpha=0.8, cutmix_alpha=1.0),
    # The ViT of Lee et al. 2021 (see the module docstring, "vit_small_data").
    "vit_small_data": _preset(
        patch_size=4, patch_stride=4, num_layers=9, embedding_dim=192, num_heads=12,
        mlp_hidden_dim=384, head_units=(), dropout=0.0, drop_path=0.1,
        optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, lr_schedule="cosine",
        warmup_epochs=10, min_learning_rate=1e-5, epochs=100, batch_size=128,
        label_smoothing=0.1, randaugment_ops=RANDAUGMENT_OPS, randaugment_n=2,
        randaugment_magnitude=9.0, erasing_prob=0.25, erasing_max_area=0.4,
        mixup_alpha=1.0, cutmix_alpha=1.0),
}
