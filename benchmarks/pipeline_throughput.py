"""Throughput of the training input pipeline against the per-image way, and against training.

    python -m benchmarks.pipeline_throughput [--seconds 3] [--windows 5] [--batch-size 512]

Measures, on synthetic uint8 images of CIFAR's shape (the numbers do not depend on pixel
values), in interleaved timed windows so that every figure sees the same machine load:

  batched    the app's pipeline (input_pipeline.train_dataset with input_pipeline.make_augment):
             cached uint8 -> shuffle -> batch -> augment per batch -> prefetch
  per-image  the same augmentations the way the original sample applied them: per image,
             before batching, each op behind a tf.cond coin flip (tf.image's random ops where
             they exist, a one-image ImageProjectiveTransformV3 for geometry); the coin's
             probability gives each image as many RandAugment ops on average
  train      training steps of the default model (vit_model.build_model(TrainConfig()),
             compiled by compiled.compile_model, XLA off as on CPU/DirectML) on fixed batches

and prints images per second (median of the windows, and their range) and the ratios,
each ratio taken window by window. The augmentation is the default one unless flags say
otherwise (any training flag, e.g. --randaugment-magnitude 15 --mixup-alpha 0.4).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from vitcifar.backend import devices
from vitcifar.config.flags import verbose_requested

if "tensorflow" not in sys.modules:           # run as a script: a quiet TensorFlow start
    devices.prepare_environment(None, verbose=verbose_requested(sys.argv[1:]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data_augmentations as aug  # noqa: E402
from vit_model import build_model  # noqa: E402
from vitcifar.config.datasets import IMAGE_SIZE  # noqa: E402
from vitcifar.config.flags import parse_train_flags  # noqa: E402
from vitcifar.config.settings import MAX_MAGNITUDE, RANDAUGMENT_STRENGTH, TrainConfig  # noqa: E402
from vitcifar.data import input_pipeline  # noqa: E402
from vitcifar.errors import entry_point  # noqa: E402
from vitcifar.training import compiled  # noqa: E402


def per_image_dataset(images, labels, config: TrainConfig) -> tf.data.Dataset:
    """The same augmentations, per image before batching, each op behind a tf.cond."""
    a = config.augmentation
    level = a.randaugment_magnitude / MAX_MAGNITUDE
    chance = a.randaugment_n / len(a.randaugment_ops) * a.randaugment_prob
    bounds = {op: RANDAUGMENT_STRENGTH[op] * level for op in a.randaugment_ops}

    def uniform(bound):
        return tf.random.uniform([1], -bound, bound)

    def warp(image, matrix):
        return tf.cast(tf.round(aug.projective_transform(
            tf.cast(image, tf.float32)[None], matrix)[0]), tf.uint8)

    ops = {
        "rotation": lambda i, b: warp(i, aug.rotation_matrix(uniform(b))),
        "shear": lambda i, b: warp(i, aug.shear_matrix(uniform(b), uniform(b))),
        "zoom": lambda i, b: warp(i, aug.scale_matrix(*[1.0 + uniform(b)] * 2)),
        "translation": lambda i, b: warp(i, aug.translation_matrix(
            uniform(b) * IMAGE_SIZE, uniform(b) * IMAGE_SIZE)),
        "hue": lambda i, b: tf.image.random_hue(i, b),
        "saturation": lambda i, b: tf.image.random_saturation(i, 1.0 - b, 1.0 + b),
        "brightness": lambda i, b: tf.image.random_brightness(i, b),
        "contrast": lambda i, b: tf.image.random_contrast(i, 1.0 - b, 1.0 + b),
    }
    padding = a.crop_padding

    def augment(image, label):
        if padding:
            image = tf.image.random_crop(
                tf.pad(image, [[padding, padding], [padding, padding], [0, 0]]),
                [IMAGE_SIZE, IMAGE_SIZE, 3])
        if a.flip:
            image = tf.image.random_flip_left_right(image)
        if a.vertical_flip:
            image = tf.image.random_flip_up_down(image)
        for op, bound in bounds.items():
            image = tf.cond(tf.random.uniform([]) < chance,
                            lambda image=image, op=op, bound=bound: ops[op](image, bound),
                            lambda image=image: image)
        return image, label

    return (tf.data.Dataset.from_tensor_slices((images, labels)).cache().repeat()
            .shuffle(len(images)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(config.batch_size).prefetch(tf.data.AUTOTUNE))


def batch_source(dataset: tf.data.Dataset):
    """A callable that takes one batch and returns its image count."""
    iterator = iter(dataset)
    return lambda: int(next(iterator)[0].shape[0])


def train_source(config: TrainConfig, batch_size: int):
    model = build_model(config)
    compiled.compile_model(model, config)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3),
                                      dtype=np.uint8))
    labels = input_pipeline.encode_labels(
        tf.constant(rng.integers(0, config.num_classes, batch_size)),
        input_pipeline.label_classes(config))

    def step():
        model.train_on_batch(images, labels)
        return batch_size
    return step


def window(source, seconds: float) -> float:
    """Images per second over at least `seconds` (and at least one call)."""
    count, started = 0, time.perf_counter()
    while True:
        count += source()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def summary(values) -> str:
    return f"{statistics.median(values):10,.0f}  ({min(values):,.0f} - {max(values):,.0f})"


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Any training flag also applies.")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each window")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per figure")
    parser.add_argument("--images", type=int, default=42_500,
                        help="synthetic training images (default: CIFAR-10's training split)")
    parser.add_argument("--train-batch-sizes", type=int, nargs="*", default=[512, 128],
                        help="batch sizes for the training-step figures (none: skip)")
    args, flags = parser.parse_known_args(argv)
    config, _, _ = parse_train_flags("cifar10", flags)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, args.images)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs | {args.images:,} images "
          f"cached as {images.dtype} ({images.nbytes / 1e6:.0f} MB), batch "
          f"{config.batch_size} | {args.windows} windows of {args.seconds:g} s each")
    print("augmentation: " + ", ".join(
        f"{name}={getattr(config.augmentation, name)}" for name in
        ("crop_padding", "flip", "vertical_flip", "randaugment_n", "randaugment_magnitude",
         "randaugment_prob", "erasing_prob", "mixup_alpha", "cutmix_alpha")))

    sources = {
        "batched pipeline": batch_source(input_pipeline.train_dataset(
            images, labels, config.batch_size, input_pipeline.make_augment(
                config.augmentation, input_pipeline.label_classes(config)), config.seed,
            0, 1_000_000)),
        "per-image pipeline": batch_source(per_image_dataset(images, labels, config)),
    }
    for batch_size in args.train_batch_sizes:
        sources[f"train steps, batch {batch_size}"] = train_source(config, batch_size)
    for source in sources.values():                    # tracing, first shuffle buffers
        window(source, args.seconds)
    rates = {name: [] for name in sources}
    for _ in range(args.windows):
        for name, source in sources.items():
            rates[name].append(window(source, args.seconds))

    print(f"\n{'images per second':32s}{'median':>10s}  (range)")
    for name, values in rates.items():
        print(f"{name:32s}{summary(values)}")
    new = rates["batched pipeline"]
    print(f"\n{'ratios, window by window':32s}")
    for name, values in rates.items():
        if name != "batched pipeline":
            ratios = [a / b for a, b in zip(new, values)]
            print(f"{'batched / ' + name:32s}{statistics.median(ratios):10.1f}x "
                  f"({min(ratios):.1f} - {max(ratios):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
