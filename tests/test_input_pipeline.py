"""The training pipeline: fresh augmentations every epoch, labels kept with their images."""
import numpy as np
import pytest
import tensorflow as tf

import data_augmentations as aug
from helpers import random_op
from vit_model import build_model
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import Augmentation, TrainConfig
from vitcifar.config.views import override
from vitcifar.data import input_pipeline
from vitcifar.training import compiled


def label_coded_images(n):
    """Image i is filled with the value 10 + label_i, so any pixel names its label."""
    labels = np.arange(n) % 10
    return (10 + labels[:, None, None, None] * np.ones((1, 32, 32, 3))).astype(np.uint8), labels


def augment(images, labels, seed):
    return aug.augment_batch(images, labels, seed, Augmentation(randaugment_n=0))


def collect(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_epochs_differ_and_labels_stay_with_their_images():
    images, labels = label_coded_images(50)
    images[:, :16, :8] = 200          # an off-centre mark, so crops and flips show
    batches = collect(input_pipeline.train_dataset(images, labels, 16, augment, seed=0,
                                                   first_epoch=0, last_epoch=2))
    steps = input_pipeline.steps_per_epoch(50, 16)
    assert len(batches) == 2 * steps == 8
    epochs = [batches[:steps], batches[steps:]]
    for epoch in epochs:
        seen = np.concatenate([y for _, y in epoch])
        assert sorted(seen) == sorted(labels)            # each image once per epoch
        for x, y in epoch:
            assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
            for image, label in zip(x, y):
                values = set(np.unique(image)) - {0, 200}          # 0: crop padding
                assert values == {10 + label}
    # images of one label are identical before augmentation, so compare them by label
    first = {int(y): x for x, ys in epochs[0] for y, x in zip(ys, x)}
    second = {int(y): x for x, ys in epochs[1] for y, x in zip(ys, x)}
    assert any(not np.array_equal(first[k], second[k]) for k in first)
    order = [np.concatenate([y for _, y in e]).tolist() for e in epochs]
    assert order[0] != order[1]                          # reshuffled


def test_same_seed_same_batches_and_a_resumed_epoch_is_the_same_epoch():
    images, labels = label_coded_images(30)
    images[:, :5, :3] = 99
    full = collect(input_pipeline.train_dataset(images, labels, 8, augment, 7, 0, 3))
    again = collect(input_pipeline.train_dataset(images, labels, 8, augment, 7, 0, 3))
    resumed = collect(input_pipeline.train_dataset(images, labels, 8, augment, 7, 2, 3))
    for (x1, y1), (x2, y2) in zip(full, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(full[-4:], resumed):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_flip_is_per_image_and_mirrors():
    images = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    out = random_op("flip")(tf.constant(images), tf.constant([1, 2])).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54                      # per image, not one coin per batch


def test_crop_shifts_each_image_within_the_padding():
    images = np.zeros((32, 32, 32, 3), np.uint8)
    images[:, 10, 20] = 255                            # one white pixel at (10, 20)
    out = random_op("crop")(tf.constant(images), tf.constant([3, 4]), padding=4).numpy()
    shifts = set()
    for image in out:
        rows, cols = np.nonzero(image[..., 0])
        assert len(rows) == 1
        dy, dx = rows[0] - 10, cols[0] - 20
        assert abs(dy) <= 4 and abs(dx) <= 4
        shifts.add((dy, dx))
    assert len(shifts) > 5
    np.testing.assert_array_equal(random_op("crop")(tf.constant(images), tf.constant([3, 4]), 0),
                                  images)


def test_the_default_augmentation_is_fresh_every_epoch():
    """The sample's settings (crop, flip, RandAugment) through the real pipeline."""
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40)                                  # one image per label
    batches = collect(input_pipeline.train_dataset(
        images, labels, 20, input_pipeline.make_augment(TrainConfig().augmentation, None), 3, 0, 2))
    epochs = [{}, {}]
    for epoch, (x, y) in zip([0, 0, 1, 1], batches):
        assert x.dtype == np.uint8 and x.shape == (20, 32, 32, 3)
        epochs[epoch].update(zip(y.tolist(), x))
    assert sorted(epochs[0]) == sorted(epochs[1]) == labels.tolist()
    assert all(not np.array_equal(epochs[0][k], images[k]) for k in labels)
    assert all(not np.array_equal(epochs[0][k], epochs[1][k]) for k in labels)


def test_mixed_labels_stay_with_their_images():
    """With mixup and cutmix on, each soft label still describes its own image's pixels."""
    images, labels = label_coded_images(60)
    mixing = Augmentation(mixup_alpha=0.4, cutmix_alpha=1.0, crop_padding=0, flip=False,
                          randaugment_n=0)
    augment_mixed = input_pipeline.make_augment(mixing, 10)
    for x, y in collect(input_pipeline.train_dataset(images, labels, 16, augment_mixed, 1, 0,
                                                     2)):
        assert y.shape == (len(x), 10) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(axis=1), 1, atol=1e-6)
        # image of class k has value 10 + k: the mean pixel is the label-weighted value
        np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), y @ (10.0 + np.arange(10)),
                                   atol=0.51)
        assert (y.max(axis=1) < 0.999).any()


@pytest.mark.slow
def test_soft_labels_train_and_evaluate_under_the_same_metric_names():
    images, labels = label_coded_images(32)
    for config in [override(PRESETS["tiny"], mixup_alpha=0.2), PRESETS["tiny"]]:
        classes = input_pipeline.label_classes(config)
        val = input_pipeline.eval_dataset(images, labels, 16, classes)
        assert val.element_spec[1].shape.as_list() == ([None] if classes is None
                                                       else [None, 10])
        model = build_model(config)
        compiled.compile_model(model, config)
        train = input_pipeline.train_dataset(
            images, labels, 16, input_pipeline.make_augment(config.augmentation, classes),
            0, 0, 1)
        history = model.fit(train, steps_per_epoch=2, epochs=1, validation_data=val,
                            shuffle=False, verbose=0).history
        assert {"loss", "top1", "top5", "val_loss", "val_top1", "val_top5"} <= set(history)
        scores = model.evaluate(val, return_dict=True, verbose=0)
        assert 0 <= scores["top1"] <= scores["top5"] <= 1


def test_seed_zero_works_when_keras_has_set_the_global_seed():
    """trainer.run calls keras.utils.set_random_seed(--seed) first; TF's global seed 0 once
    broke a shuffle seeded from a tensor."""
    tf.keras.utils.set_random_seed(0)
    images, labels = label_coded_images(20)
    batches = collect(input_pipeline.train_dataset(images, labels, 8, augment, 0, 0, 2))
    assert [len(y) for _, y in batches] == [8, 8, 4, 8, 8, 4]
    assert sorted(np.concatenate([y for _, y in batches[:3]])) == sorted(labels)


def seed_as_images(images, labels, seed):
    """An 'augmentation' that returns the seed it was given in place of the images: (B, 2)."""
    return tf.tile(seed[None], [tf.shape(labels)[0], 1]), labels


@pytest.mark.parametrize("replicas, workers", [(2, 1), (4, 2), (3, 3)])
def test_replica_shares_make_up_each_global_batch_and_augment_differently(replicas, workers):
    """Every worker's pipeline (replicas / workers local replicas each) yields, per step, its
    replicas' shares of train_dataset's batch: together exactly that batch, each image once
    per epoch, and each share with its own augmentation seed."""
    n, batch = 45, 12                          # 4 steps: batches of 12, 12, 12 and 9 images
    images, labels = np.zeros((n, 32, 32, 3), np.uint8), np.arange(n)
    steps = input_pipeline.steps_per_epoch(n, batch)
    whole = [y for _, y in collect(input_pipeline.train_dataset(
        images, labels, batch, seed_as_images, 3, 0, 2))]
    local = replicas // workers
    per_worker = [collect(input_pipeline.replica_train_dataset(
        images, labels, batch, seed_as_images, 3, 0, 2, replicas, worker * local, local))
        for worker in range(workers)]
    for part in per_worker:
        assert len(part) == 2 * steps * local
    for step, expected in enumerate(whole):
        shares = [part[step * local + r] for part in per_worker for r in range(local)]
        got = np.concatenate([y for _, y in shares])
        np.testing.assert_array_equal(got, expected)          # same images, same order
        sizes = [len(y) for _, y in shares]
        assert max(sizes) - min(sizes) <= 1                   # 12 -> 6 6 / 3 3 3 3 / 4 4 4
        seeds = {tuple(x[0]) for x, _ in shares}
        assert len(seeds) == replicas                         # a seed per replica
    for epoch in range(2):
        seen = np.concatenate(whole[epoch * steps:(epoch + 1) * steps])
        assert sorted(seen) == list(range(n))


def test_the_app_pipelines_run_without_autotuning():
    """input_pipeline.prefetched: no autotune thread for a freed iterator to wait for. The
    training, replica-share and evaluation pipelines all have it, and still deliver every
    batch."""
    images, labels = label_coded_images(20)
    pipelines = [
        input_pipeline.train_dataset(images, labels, 8, augment, seed=0, first_epoch=0,
                                     last_epoch=1),
        input_pipeline.replica_train_dataset(images, labels, 8, augment, seed=0,
                                             first_epoch=0, last_epoch=1, replicas=2,
                                             first_replica=0, local_replicas=2),
        input_pipeline.eval_dataset(images, labels, 8)]
    for dataset in pipelines:
        assert dataset.options().autotune.enabled is False
        assert sum(len(y) for _, y in collect(dataset)) == 20
