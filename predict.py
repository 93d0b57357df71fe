"""Classify image files with a trained run.

    python predict.py RUN_DIR IMAGE... [--top-k K]

prints one line per image, the K most probable classes first:

    photos/cat.jpg: cat 0.71, dog 0.12, deer 0.06, frog 0.04, bird 0.03

Images are PNG, JPEG, GIF or BMP of any size and are resized to 32x32 (the aspect ratio is
not kept: CIFAR images are square, crop yours to the object first for the best guess). The
class names come from the run directory; the dataset is not needed.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import numpy as np

import checkpoint
import run_dir
from datasets import IMAGE_SIZE
from errors import UsageError, entry_point
from flags import Parser, add_verbose_flag, verbose_requested


def read_image(path: str) -> np.ndarray:
    """An image file -> (32, 32, 3) uint8 RGB: decoded by TensorFlow (grey becomes RGB, alpha
    is dropped), resized with antialiasing, rounded back to 0..255 like the training images."""
    import tensorflow as tf
    try:
        with open(path, "rb") as handle:
            encoded = handle.read()
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    except OSError as error:
        raise UsageError(f"cannot read {path} ({error.strerror})") from None
    except (tf.errors.InvalidArgumentError, ValueError):
        raise UsageError(f"{path} is not a PNG, JPEG, GIF or BMP image") from None
    resized = tf.image.resize(image, (IMAGE_SIZE, IMAGE_SIZE), antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def top_k_lines(paths: List[str], probabilities: np.ndarray, label_names: List[str],
                top_k: int) -> List[str]:
    """'path: name p, name p, ...' per image, most probable first, probabilities to 2 places."""
    lines = []
    for path, row in zip(paths, probabilities):
        best = np.argsort(-row, kind="stable")[:top_k]
        lines.append(f"{path}: " + ", ".join(f"{label_names[i]} {row[i]:.2f}" for i in best))
    return lines


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """Returns the exit code: 0, or 2 with one `error:` line for bad input."""
    parser = Parser(prog="predict.py",
                    description="Print the most probable classes of image files, as a trained "
                                "run's model sees them.")
    parser.add_argument("run_dir", help="a run directory written by train_cifar10.py / "
                                        "train_cifar100.py")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="PNG, JPEG, GIF or BMP files of any size")
    parser.add_argument("--top-k", type=int, default=5,
                        help="classes per image (default 5, at most the number of classes)")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise UsageError(f"--top-k must be 1 or more, got {args.top_k}")
    run = run_dir.open_run(args.run_dir)
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise UsageError(f"no image file {missing[0]}")
    images = np.stack([read_image(path) for path in args.images])
    import tensorflow as tf

    from vit_model import build_model
    model = build_model(run.config)
    checkpoint.load_best_weights(run, model)
    probabilities = tf.nn.softmax(model.predict(images, verbose=0)).numpy()
    top_k = min(args.top_k, len(run.label_names))
    print("\n".join(top_k_lines(args.images, probabilities, run.label_names, top_k)))
    return 0


if __name__ == "__main__":
    import devices
    devices.prepare_environment(None, verbose=verbose_requested(sys.argv[1:]))
    sys.exit(main())
