"""Image files in, the most probable classes out: what predict.py (TensorFlow) and
onnx_predict.py (ONNX Runtime) share, so that both see an image the same way and print the
same lines. numpy and Pillow only, no TensorFlow.

An image is a PNG, JPEG, GIF (its first frame) or BMP file of any size: turned upright by
its EXIF orientation, made RGB (grey repeated, alpha dropped, a palette looked up, 16-bit
grey cut to its high byte), resized to 32x32 by antialiased bilinear interpolation (the
aspect ratio is not kept: CIFAR images are square, so crop yours to the object first) and
kept as uint8, which the models scale themselves. A folder stands for the image files
directly in it, by name.
"""
from __future__ import annotations

import argparse
import io
import json
import os
from typing import List

import numpy as np

from vitcifar.config.datasets import IMAGE_SIZE
from vitcifar.errors import UsageError

FORMATS = ("PNG", "JPEG", "GIF", "BMP")
SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
KINDS = "PNG, JPEG, GIF or BMP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The images and the output flags (--top-k, --json)."""
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help=f"{KINDS} files of any size, or folders of them")
    parser.add_argument("--top-k", "--top", type=int, default=5, dest="top_k",
                        help="classes per image (default 5, at most the number of classes)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON list, an object per image: {image, top: "
                             "[{class, label, probability}, ...]}")


def check_top_k(top_k: int) -> None:
    if top_k < 1:
        raise UsageError(f"--top-k must be 1 or more, got {top_k}")


def image_paths(given: List[str]) -> List[str]:
    """The image files the arguments name: files as given, each folder's image files
    (by suffix, sorted by name); UsageError for a path that is neither, or an empty folder."""
    paths = []
    for path in given:
        if os.path.isdir(path):
            inside = sorted(name for name in os.listdir(path)
                            if name.lower().endswith(SUFFIXES)
                            and os.path.isfile(os.path.join(path, name)))
            if not inside:
                raise UsageError(f"folder {path} holds no {KINDS} files "
                                 f"({', '.join(SUFFIXES)})")
            paths += [os.path.join(path, name) for name in inside]
        elif os.path.isfile(path):
            paths.append(path)
        else:
            raise UsageError(f"no image file {path}")
    return paths


def read_image(path: str) -> np.ndarray:
    """An image file -> (32, 32, 3) uint8 RGB, by the rules in the module docstring."""
    from PIL import Image, ImageOps
    try:
        with open(path, "rb") as handle:
            encoded = handle.read()
    except OSError as error:
        raise UsageError(f"cannot read {path} ({error.strerror})") from None
    try:
        with Image.open(io.BytesIO(encoded), formats=FORMATS) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode.startswith("I;16"):
                image = Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8))
            image = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE),
                                                Image.Resampling.BILINEAR)
            return np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # Pillow's UnidentifiedImageError is an OSError; a truncated file raises OSError
        raise UsageError(f"{path} is not a {KINDS} image") from None


def read_images(paths: List[str]) -> np.ndarray:
    """(N, 32, 32, 3) uint8 of image files."""
    return np.stack([read_image(path) for path in paths])


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def ranked(row: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the top_k largest values of one row, largest first (ties by index)."""
    return np.argsort(-row, kind="stable")[:top_k]


def report(paths: List[str], probabilities: np.ndarray, label_names: List[str], top_k: int,
           as_json: bool = False) -> str:
    """'path: name p, name p, ...' per image, most probable first, probabilities to 2
    places; or (as_json) one JSON list with the full probabilities. top_k is capped at the
    number of classes."""
    top_k = min(top_k, len(label_names))
    if as_json:
        return json.dumps([{"image": path, "top": [
            {"class": label_names[i], "label": int(i), "probability": round(float(row[i]), 6)}
            for i in ranked(row, top_k)]} for path, row in zip(paths, probabilities)], indent=1)
    return "\n".join(f"{path}: " + ", ".join(f"{label_names[i]} {row[i]:.2f}"
                                             for i in ranked(row, top_k))
                     for path, row in zip(paths, probabilities))
