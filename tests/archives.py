"""Tiny CIFAR archives with the official layout, built in a temporary folder by the tests.

cifar-10-python.tar.gz:  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta,
                         readme.html}, each batch a dict with b"batch_label", b"labels",
                         b"data" (N x 3072 uint8, channel-major rows) and b"filenames".
cifar-100-python.tar.gz: cifar-100-python/{train, test, meta, file.txt~}, batches with
                         b"fine_labels" and b"coarse_labels", meta with both name lists.
The originals were pickled by Python 2 (protocol 2, byte-string keys): so are these.
"""
import io
import os
import pickle
import tarfile

import numpy as np

from vitcifar.config import datasets

LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-py",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"]},
}


def class_pattern_images(labels, rng):
    """Images whose class is visible: a bright square at a class-dependent place, plus noise."""
    images = rng.integers(0, 60, (len(labels), 32, 32, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        images[i, row * 8:row * 8 + 8, col * 8:col * 8 + 8, int(label) % 3] = 250
    return images


def batch_dict(dataset, images, labels, name):
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)     # NHWC -> channel-major
    batch = {b"batch_label": name.encode(), b"data": data,
             b"filenames": [f"{name}_{i}.png".encode() for i in range(len(images))]}
    if dataset == "cifar10":
        batch[b"labels"] = [int(v) for v in labels]
    else:
        batch[b"fine_labels"] = [int(v) for v in labels]
        batch[b"coarse_labels"] = [int(v) // 5 for v in labels]
    return batch


def meta_dict(dataset, names=None):
    if dataset == "cifar10":
        return {b"num_cases_per_batch": 10000, b"num_vis": 3072,
                b"label_names": [n.encode() for n in (names or datasets.CIFAR10_CLASSES)]}
    return {b"fine_label_names": [n.encode() for n in (names or datasets.CIFAR100_CLASSES)],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)]}


def archive_files(dataset, per_batch=20, seed=0):
    """{path inside the archive: bytes}, and the (images, labels) written, by split."""
    layout, rng = LAYOUT[dataset], np.random.default_rng(seed)
    classes = 10 if dataset == "cifar10" else 100
    splits = {}
    for split in ("train", "test"):
        labels = rng.integers(0, classes, per_batch * len(layout[split]))
        splits[split] = (class_pattern_images(labels, rng), labels)
    return files_from_arrays(dataset, splits), splits


def files_from_arrays(dataset, splits, names=None):
    """{path inside the archive: bytes} for {"train": (images, labels), "test": (...)},
    uint8 NHWC images; the training set is divided evenly over the training batches."""
    layout, files = LAYOUT[dataset], {}
    for split in ("train", "test"):
        images, labels = splits[split]
        parts = np.array_split(np.arange(len(images)), len(layout[split]))
        for name, part in zip(layout[split], parts):
            files[f"{layout['folder']}/{name}"] = pickle.dumps(
                batch_dict(dataset, images[part], labels[part], name), protocol=2)
    meta = "batches.meta" if dataset == "cifar10" else "meta"
    files[f"{layout['folder']}/{meta}"] = pickle.dumps(meta_dict(dataset, names), protocol=2)
    extra = "readme.html" if dataset == "cifar10" else "file.txt~"
    files[f"{layout['folder']}/{extra}"] = b"not read"
    return files


def write_tar(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_folder(root, files):
    for name, payload in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(payload)
    return root
