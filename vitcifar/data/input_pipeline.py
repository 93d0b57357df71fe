"""tf.data pipelines: uint8 images held once in memory, augmented per batch.

Training data are one sub-dataset per epoch, each shuffled and augmented with stateless
seeds made from (seed, epoch, batch index): every epoch sees a fresh order and fresh
augmentations, runs are reproducible, and a resumed run can start at any epoch. On several
replicas (tf.distribute), replica_train_dataset cuts the same batches into the replicas'
shares, each augmented with the replica's index folded into its seed.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

import data_augmentations
from vitcifar.config.settings import Augmentation, TrainConfig

AUTOTUNE = tf.data.AUTOTUNE
# images (B, 32, 32, 3) uint8, labels (B,), seed [2] int -> (images, labels); the labels
# come back as class indices, or as (B, classes) float one-hot or soft when the config
# trains on one-hot labels (label_classes: mixup/cutmix, label smoothing).
BatchAugment = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple]


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` with an AUTOTUNE prefetch (TensorFlow grows its buffer while the consumer
    waits) and tf.data's autotuning off, so that its iterator runs no autotune optimizing
    thread, which deleting the iterator waits for (it sleeps between optimizations). With
    autotuning on, on TensorFlow 2.21 on a 2-core CPU, the training iterator, freed by
    Python's garbage collector wherever that ran next, stalled the idle process for 14-17 s
    in 5 of 13 1.5-minute runs and 35-40 s in 2 of 5 3-minute ones (benchmarks/README.md,
    "A stall at the end of a run"). Without autotuning, an AUTOTUNE map's parallelism stays
    at TensorFlow's start value: the CPU count, at most 16. Under tf.distribute, the
    per-device pipelines tf.distribute makes from this one still autotune."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(AUTOTUNE).with_options(options)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def _epoch_batches(count: int, batch_size: int, seed: int, epoch):
    """(batches, augment seed) of one epoch: `batches` yields (batch index, image indices),
    the indices a stateless permutation of range(count) cut into batches."""
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
    shuffle_seed, augment_seed = tf.unstack(
        tf.random.experimental.stateless_split(epoch_seed, num=2))
    order = tf.argsort(tf.random.stateless_uniform([count], shuffle_seed))
    return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate(), augment_seed


def train_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                  augment: BatchAugment, seed: int, first_epoch: int,
                  last_epoch: int) -> tf.data.Dataset:
    """Batches for epochs first_epoch .. last_epoch - 1, back to back (use with
    steps_per_epoch); the last batch of an epoch may be short.

    Each epoch is a stateless permutation of the indices, batched, then gathered from the
    uint8 arrays held once in memory: no shuffle buffer to refill every epoch."""
    images, labels = tf.constant(images), tf.constant(labels)                # stays uint8
    count = int(images.shape[0])

    def one_epoch(epoch):
        batches, augment_seed = _epoch_batches(count, batch_size, seed, epoch)

        def augment_one(index, batch_indices):
            batch_seed = tf.random.experimental.stateless_fold_in(augment_seed, index)
            return augment(tf.gather(images, batch_indices), tf.gather(labels, batch_indices),
                           batch_seed)

        return batches.map(augment_one, num_parallel_calls=AUTOTUNE)

    epochs = tf.data.Dataset.range(first_epoch, last_epoch)
    return prefetched(epochs.flat_map(one_epoch))


def replica_train_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                          augment: BatchAugment, seed: int, first_epoch: int, last_epoch: int,
                          replicas: int, first_replica: int,
                          local_replicas: int) -> tf.data.Dataset:
    """train_dataset's batches (the same images per step, epoch after epoch) cut for
    `replicas` replicas in sync, of which this input pipeline feeds replicas first_replica ..
    first_replica + local_replicas - 1: per global batch of n images, replica r gets its
    indices [r n // R, (r + 1) n // R), so shares differ by at most one image (only in an
    epoch's short last batch when R divides the batch size). Yields, per step,
    local_replicas elements in replica order (tf.distribute hands a pipeline's elements to
    its replicas in turn), each augmented on its own with the batch's seed folded with the
    replica's index: per image, seeded, and different on every replica. Each image is
    trained on once per epoch over all replicas and workers: the data are sharded here, by
    index, not by tf.data's auto-sharding."""
    images, labels = tf.constant(images), tf.constant(labels)                # stays uint8
    count = int(images.shape[0])
    mine = tf.range(first_replica, first_replica + local_replicas, dtype=tf.int64)

    def one_epoch(epoch):
        batches, augment_seed = _epoch_batches(count, batch_size, seed, epoch)

        def shares(index, batch_indices):          # -> (index, replica, batch) per replica
            return tf.data.Dataset.from_tensor_slices(mine).map(
                lambda replica: (index, replica, batch_indices))

        def share(index, replica, batch_indices):
            n = tf.shape(batch_indices, out_type=tf.int64)[0]
            part = batch_indices[replica * n // replicas:(replica + 1) * n // replicas]
            share_seed = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(augment_seed, index), replica)
            return augment(tf.gather(images, part), tf.gather(labels, part), share_seed)

        return batches.flat_map(shares).map(share, num_parallel_calls=AUTOTUNE)

    epochs = tf.data.Dataset.range(first_epoch, last_epoch)
    return prefetched(epochs.flat_map(one_epoch))


def label_classes(config: TrainConfig) -> Optional[int]:
    """How labels are encoded for this config (encode_labels' one_hot_classes): one-hot over
    config.num_classes when it trains on soft labels, else None (class indices). Training,
    validation and test data must all follow it, as training.compile_model does."""
    return config.num_classes if config.soft_labels else None


def make_augment(augmentation: Augmentation, one_hot_classes: Optional[int]) -> BatchAugment:
    """The batch augment callback for train_dataset: labels encoded as encode_labels does,
    then the batch augmented as `augmentation` sets it."""
    def augment(images, labels, seed):
        return data_augmentations.augment_batch(
            images, encode_labels(labels, one_hot_classes), seed, augmentation)
    return augment


def encode_labels(labels, one_hot_classes: Optional[int]):
    """Class indices (B,) as the loss wants them: unchanged for the sparse loss (None), or
    float32 one-hot (B, one_hot_classes) for the categorical loss that soft labels need."""
    return labels if one_hot_classes is None else tf.one_hot(labels, one_hot_classes)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 one_hot_classes: Optional[int] = None) -> tf.data.Dataset:
    """Validation or test batches in order, labels encoded as by encode_labels."""
    return prefetched(tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
                      .map(lambda x, y: (x, encode_labels(y, one_hot_classes))))
