"""Image files in, the most probable classes out: what predict.py (TensorFlow) and
onnx_predict.py (ONNX Runtime) share, so that both see an image the same way and print the
same lines. numpy and Pillow only, no TensorFlow.

An image is a PNG, JPEG, GIF (its first frame) or BMP file of any size: turned upright by
its EXIF orientation, made RGB (grey repeated, alpha dropped, a palette looked up, 16-bit
grey cut to its high byte), resized to 32x32 (read_image's `size`: a run's image size) by
antialiased bilinear interpolation (the aspect ratio is not kept: CIFAR images are square,
so crop yours to the object first) and kept as uint8, which the models scale themselves. A
folder stands for the image files directly in it, by name. image_folders.py reads training
images with the same read_image, so that a model sees an image at prediction as in training.

Why this resize: directly to the square, so the whole object stays in (a centre crop can cut
it off; keras.utils.image_dataset_from_directory resizes the same way by default), and
bilinear, which Pillow widens by the downscale ratio, so that every source pixel counts
(no aliasing) without the ringing halos of bicubic or Lanczos, large at 32 pixels. A JPEG
is decoded at 1/2, 1/4 or 1/8 scale when that still leaves at least twice the target size
(Pillow's draft, the same filter doing the last step: 256x256 photos to 32x32 read 2.7x
faster, pixels within 4/255 of a full decode, mean 0.9).

A file over the pixel limit (default Pillow's Image.MAX_IMAGE_PIXELS, about 89 M pixels; at
most twice that, where Pillow refuses by itself) is refused from its header, before it is
decoded: a small file can declare a huge image (a decompression bomb). Pillow's own
DecompressionBombWarning is silenced for that reason, once, process-wide: the limit here
replaces it, and a warning from a worker thread could not be caught per image.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import List, Optional

import numpy as np

from vitcifar.config.datasets import IMAGE_SIZE
from vitcifar.errors import UsageError

FORMATS = ("PNG", "JPEG", "GIF", "BMP")
SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
KINDS = "PNG, JPEG, GIF or BMP"
GREY_16 = ("I", "I;16", "I;16B", "I;16L", "I;16N")   # 16-bit grey PNG ("I" in older Pillow)

warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


class UnreadableImage(UsageError):
    """An image file that cannot be read or decoded, or has more pixels than allowed;
    `path` and `reason` separately, the message is both."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} {reason}")
        self.path, self.reason = path, reason


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


def read_image(path: str, size: int = IMAGE_SIZE, max_pixels: Optional[int] = None
               ) -> np.ndarray:
    """An image file -> (size, size, 3) uint8 RGB, by the rules in the module docstring;
    UnreadableImage for a file that cannot be read or decoded, or has more than max_pixels
    pixels (width x height; None: Pillow's limit)."""
    from PIL import Image, ImageOps
    limit = pixel_limit(max_pixels)
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise UnreadableImage(path, f"cannot be read ({error.strerror})") from None
    with handle:
        pixels = f"more than {limit:,} pixels"     # Pillow's own check does not say
        try:
            with Image.open(handle, formats=FORMATS) as image:
                width, height = image.size
                if width * height > limit:
                    pixels = f"{width}x{height} pixels, more than the limit of {limit:,}"
                    raise Image.DecompressionBombError
                image.draft(None, (2 * size, 2 * size))      # JPEG only: a smaller DCT scale
                image = _rgb(ImageOps.exif_transpose(image))
                return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR),
                                  np.uint8)
        except Image.DecompressionBombError:
            raise UnreadableImage(path, f"has {pixels} (a decompression bomb?); shrink it"
                                  ) from None
        except (OSError, ValueError, SyntaxError, EOFError):
            # Pillow's UnidentifiedImageError is an OSError; a truncated file raises OSError
            raise UnreadableImage(path, f"is not a {KINDS} image") from None


def pixel_limit(max_pixels: Optional[int] = None) -> int:
    """The pixels read_image allows: max_pixels (None: Pillow's Image.MAX_IMAGE_PIXELS), at
    most twice Pillow's, where Image.open refuses by itself."""
    from PIL import Image
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is None:
        return max_pixels or np.iinfo(np.int64).max
    return min(max_pixels or pillow, 2 * pillow)


def _rgb(image):
    """A PIL image of any mode -> mode RGB."""
    from PIL import Image
    if image.mode in GREY_16:                    # 0..65535 -> its high byte, 0..255
        high = np.clip(np.asarray(image, np.int64), 0, 65535) >> 8
        return Image.fromarray(high.astype(np.uint8)).convert("RGB")
    if image.mode == "P" or "transparency" in image.info:
        # through RGBA: a palette's transparency given per entry makes convert("RGB") warn
        image = image.convert("RGBA")
    return image.convert("RGB")


def read_images(paths: List[str], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8 of image files (size: the run's image size)."""
    return np.stack([read_image(path, size) for path in paths])


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
