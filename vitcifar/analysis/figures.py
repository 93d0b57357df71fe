"""Figures of a run: training curves, confusion matrix, test predictions, attention maps, and
an image cut into the model's patches.
Training calls `write_run_figures` at the end of each run; `python visualize.py RUN_DIR`
(vitcifar.commands.visualize) draws them again. matplotlib draws
with the Agg backend: no display is needed.

Every figure has a fixed size in inches at DPI dots per inch (the confusion matrix grows
with the number of classes), so its PNG size in pixels is known in advance.

Attention maps are attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers"): per block, average the heads, add the identity for the residual connection,
renormalise the rows; multiply the blocks' matrices (last block on the left); the class
token's row, without its entry for itself and renormalised, says how much each patch flowed
into the class token that the classifier reads. A mean-pooling model has no class token and
its classifier reads the mean of all tokens: its map is the mean of all the tokens' rows.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: draw to files, never to a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vitcifar.config.datasets import IMAGE_SIZE  # noqa: E402
from vitcifar.config.settings import patch_grid_side  # noqa: E402
from vitcifar.data.prediction_io import softmax  # noqa: E402
from vitcifar.runs import run_dir  # noqa: E402
from vitcifar.runs.run_dir import (ATTENTION, CONFUSION, CURVES, HISTORY, PATCHES,  # noqa: E402
                                   PREDICTIONS)

DPI = 100
INCHES = {CURVES: (15, 4.5), PREDICTIONS: (16, 7.5), ATTENTION: (13, 7.5), PATCHES: (12, 6)}
PREDICTION_GRID = (3, 8)       # rows, columns of test images in PREDICTIONS
ATTENTION_IMAGES = 6           # test images in ATTENTION
PREDICT_BATCH = 256


def confusion_inches(num_classes: int) -> tuple:
    """CONFUSION's size: CIFAR-100's 100 rows need a larger figure to stay legible."""
    return (15, 6.5) if num_classes <= 20 else (20, 14)


# --- attention rollout: pure numpy ------------------------------------------------------------

def attention_rollout(attentions: Sequence[np.ndarray], class_token: bool = True) -> np.ndarray:
    """Per block (first block first), (B, H, T, T) attention weights -> (B, N) rolled-out
    attention over the N patches, in patch order, each row non-negative and summing to 1.

    class_token=True: token 0 is the class token (N = T - 1) and the map is its row.
    class_token=False (mean pooling): all T = N tokens are patches and the map is the mean of
    their rows, as the classifier reads the mean of the tokens; each row is a distribution,
    so their mean is one too. Softmax weights are positive, so every row keeps a positive
    mass on the patches."""
    joint = None
    for weights in attentions:
        mixed = np.asarray(weights, np.float64).mean(axis=1)             # (B, T, T)
        mixed = mixed + np.eye(mixed.shape[-1])                           # residual path
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        joint = mixed if joint is None else mixed @ joint
    if joint is None:
        raise ValueError("attention_rollout needs the weights of at least one block")
    to_patches = joint[:, 0, 1:] if class_token else joint.mean(axis=1)
    return to_patches / to_patches.sum(axis=-1, keepdims=True)


def patches_to_pixels(patch_weights: np.ndarray, patch_size: int, patch_stride: int,
                      image_size: int = IMAGE_SIZE) -> np.ndarray:
    """(B, N) one weight per patch, patches in row-major order -> (B, S, S) one per pixel.

    Each pixel gets the mean weight of the patches that cover it: without overlap that is
    its patch's weight, so the map keeps the patch grid; with overlapping patches (stride <
    size) a pixel lies in up to ceil(size / stride)^2 patches and their mean keeps the map
    on the same scale as the weights. Pixels no patch covers (stride > size) get 0."""
    side = patch_grid_side(image_size, patch_size, patch_stride)
    weights = np.asarray(patch_weights, np.float64)
    if weights.shape[-1] != side * side:
        raise ValueError(f"{weights.shape[-1]} patch weights, but {patch_size}x{patch_size} "
                         f"patches at stride {patch_stride} make {side * side}")
    grid = weights.reshape(-1, side, side)
    total = np.zeros((len(grid), image_size, image_size))
    covering = np.zeros((image_size, image_size))
    for row in range(side):
        for col in range(side):
            rows = slice(row * patch_stride, row * patch_stride + patch_size)
            cols = slice(col * patch_stride, col * patch_stride + patch_size)
            total[:, rows, cols] += grid[:, row, col, None, None]
            covering[rows, cols] += 1
    return np.divide(total, covering, out=np.zeros_like(total), where=covering > 0)


def model_attention_maps(model, images: np.ndarray) -> np.ndarray:
    """(B, S, S, 3) images -> (B, S, S): a VisionTransformer's attention rollout (one weight
    per patch, summing to 1) spread over the pixels by `patches_to_pixels`."""
    from vitcifar.backend.keras_compat import to_numpy
    attentions = [to_numpy(weights) for weights in model.attention_weights(images)]
    rollout = attention_rollout(attentions, class_token=model.pooling == "class_token")
    return patches_to_pixels(rollout, model.patch_size, model.patch_stride, images.shape[1])


# --- figures ----------------------------------------------------------------------------------

def _save(figure, path: str) -> str:
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": that would change the size
    plt.close(figure)
    return path


def plot_training_curves(history: Dict[str, np.ndarray], path: str) -> str:
    """Loss, top-1 (train and validation; the best validation epoch marked) and learning rate
    by epoch (1 = the first)."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, axes = plt.subplots(1, 3, figsize=INCHES[CURVES])
    val_top1 = history.get("val_top1")
    if val_top1 is not None and np.isfinite(val_top1).any():
        best = epochs[int(np.nanargmax(val_top1))]
        axes[1].axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    for axis, metric, title in ((axes[0], "loss", "loss (cross-entropy)"),
                                (axes[1], "top1", "top-1 accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if prefix + metric in history:
                axis.plot(epochs, history[prefix + metric], marker=".", label=label)
        axis.set_title(title)
        axis.legend()
    if "learning_rate" in history:
        axes[2].plot(epochs, history["learning_rate"], marker=".", color="tab:green")
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    return counts


def plot_confusion_matrix(labels: np.ndarray, predicted: np.ndarray,
                          label_names: Sequence[str], path: str) -> str:
    """Row-normalised confusion matrix (each true class's images, by predicted class) and the
    per-class accuracy (its diagonal) as bars; the title gives the overall top-1."""
    num_classes = len(label_names)
    counts = confusion_matrix(labels, predicted, num_classes)
    per_class = counts.sum(axis=1)
    fractions = np.divide(counts, per_class[:, None], out=np.zeros(counts.shape),
                          where=per_class[:, None] > 0)
    accuracy = np.where(per_class > 0, np.diag(fractions), np.nan)
    few = num_classes <= 20
    font = 8 if few else 5

    figure, (matrix_axis, bar_axis) = plt.subplots(
        1, 2, figsize=confusion_inches(num_classes), gridspec_kw={"width_ratios": [3, 2]})
    image = matrix_axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=matrix_axis, fraction=0.046, pad=0.04,
                    label="fraction of the true class")
    ticks = np.arange(num_classes) if few else np.arange(0, num_classes, 10)
    matrix_axis.set_xticks(ticks)
    matrix_axis.set_yticks(ticks)
    if few:
        matrix_axis.set_xticklabels(label_names, rotation=45, ha="right", fontsize=font)
        matrix_axis.set_yticklabels(label_names, fontsize=font)
        for true in range(num_classes):
            for guess in range(num_classes):
                if counts[true, guess]:
                    matrix_axis.text(guess, true, counts[true, guess], ha="center",
                                     va="center", fontsize=font,
                                     color="white" if fractions[true, guess] > 0.5 else "black")
    matrix_axis.set_xlabel("predicted class" if few else "predicted class (index)")
    matrix_axis.set_ylabel("true class" if few else "true class (index)")
    matrix_axis.set_title(f"Test set: {len(labels):,} images, "
                          f"top-1 {np.mean(np.asarray(labels) == predicted):.1%}")

    rows = np.arange(num_classes)
    bar_axis.barh(rows, accuracy, color="tab:blue")
    bar_axis.set_yticks(rows)
    bar_axis.set_yticklabels(label_names, fontsize=font)
    bar_axis.invert_yaxis()
    bar_axis.set_xlim(0, 1)
    bar_axis.set_xlabel("accuracy")
    bar_axis.set_title("per-class accuracy")
    bar_axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_predictions(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                     label_names: Sequence[str], path: str) -> str:
    """Test images (up to PREDICTION_GRID's rows x columns) titled with the predicted class and
    its probability, and the true class; mistakes get red titles and a red frame."""
    rows, columns = PREDICTION_GRID
    figure, axes = plt.subplots(rows, columns, figsize=INCHES[PREDICTIONS])
    correct = 0
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= len(images):
            axis.axis("off")
            continue
        guess, true = int(np.argmax(probabilities[index])), int(labels[index])
        correct += guess == true
        color = "black" if guess == true else "red"
        axis.imshow(images[index], interpolation="nearest")
        axis.set_title(f"{label_names[guess]} {probabilities[index, guess]:.0%}\n"
                       f"{'true' if guess == true else 'WRONG, true'}: {label_names[true]}",
                       fontsize=9, color=color)
        for spine in axis.spines.values():
            spine.set_color(color)
            spine.set_linewidth(1 if guess == true else 3)
    shown = min(len(images), rows * columns)
    figure.suptitle(f"Predicted (probability) and true class of the first {shown} test "
                    f"images: {correct} right, {shown - correct} wrong (red)")
    figure.tight_layout()
    return _save(figure, path)


def plot_attention_maps(images: np.ndarray, maps: np.ndarray, labels: np.ndarray,
                        predicted: np.ndarray, label_names: Sequence[str], path: str,
                        class_token: bool = True) -> str:
    """Per image (a column): the image, its (32, 32) attention map alone, and the map drawn
    over the image. Colours are scaled per map, from its minimum to its maximum.
    class_token=False titles the maps for a mean-pooling model (no class token)."""
    count = len(images)
    figure, axes = plt.subplots(3, count, figsize=INCHES[ATTENTION], squeeze=False)
    for index in range(count):
        true, guess = int(labels[index]), int(predicted[index])
        axes[0, index].set_title(f"true: {label_names[true]}\npredicted: {label_names[guess]}",
                                 fontsize=9, color="black" if true == guess else "red")
        axes[0, index].imshow(images[index], interpolation="nearest")
        axes[1, index].imshow(maps[index], cmap="inferno", interpolation="nearest")
        axes[2, index].imshow(images[index], interpolation="nearest")
        axes[2, index].imshow(maps[index], cmap="inferno", alpha=0.55, interpolation="nearest")
        for axis in axes[:, index]:
            axis.set_xticks([])
            axis.set_yticks([])
    for axis, label in zip(axes[:, 0], ("test image", "attention rollout", "overlaid")):
        axis.set_ylabel(label)
    reader = "the class token" if class_token else "the mean of the tokens"
    figure.suptitle(f"Where {reader} looks: attention rollout over all blocks "
                    "(bright = more attention)")
    figure.tight_layout()
    return _save(figure, path)


def plot_patches(image: np.ndarray, patch_size: int, patch_stride: int, path: str) -> str:
    """One image beside the sequence of patches the model reads, in token order (row by row),
    each patch drawn apart; on the image, the first two patches are outlined, which shows the
    stride (and the overlap when stride < size)."""
    size = image.shape[0]
    side = patch_grid_side(size, patch_size, patch_stride)
    gap = max(1, patch_size // 4)
    tile = patch_size + gap
    mosaic = np.full((side * tile - gap, side * tile - gap, 3), 255, np.uint8)
    for row in range(side):
        for col in range(side):
            top, left = row * patch_stride, col * patch_stride
            mosaic[row * tile:row * tile + patch_size, col * tile:col * tile + patch_size] = \
                image[top:top + patch_size, left:left + patch_size]

    figure, (image_axis, patch_axis) = plt.subplots(1, 2, figsize=INCHES[PATCHES],
                                                    layout="constrained")
    image_axis.imshow(image, interpolation="nearest")
    for number, color in zip(range(min(2, side * side)), ("yellow", "cyan")):
        top, left = divmod(number, side)
        image_axis.add_patch(plt.Rectangle(
            (left * patch_stride - 0.5, top * patch_stride - 0.5), patch_size, patch_size,
            fill=False, edgecolor=color, linewidth=2))
    image_axis.set_title(f"{size}x{size} image; patches 1 and 2 outlined")
    patch_axis.imshow(mosaic, interpolation="nearest")
    if side * side <= 64:
        for number in range(side * side):
            row, col = divmod(number, side)
            patch_axis.text(col * tile, row * tile, str(number + 1), fontsize=7, va="top",
                            color="white", bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5})
    patch_axis.set_title(f"{side * side} patches of {patch_size}x{patch_size}, stride "
                         f"{patch_stride}: tokens 1..{side * side} after the class token")
    for axis in (image_axis, patch_axis):
        axis.set_xticks([])
        axis.set_yticks([])
    return _save(figure, path)


# --- a whole run --------------------------------------------------------------------------------

def write_run_figures(output_dir: str, model, x_test: np.ndarray, y_test: np.ndarray,
                      label_names: Sequence[str], logits: Optional[np.ndarray] = None
                      ) -> List[str]:
    """Writes CURVES (when history.csv has an epoch), CONFUSION, PREDICTIONS and ATTENTION into
    output_dir for this model on the test set; returns the paths written. `logits`: the
    model's (N, classes) logits of x_test when the caller has them, else predicted here
    (numpy, on any backend). Works from whatever the run has: an interrupted run's shorter
    history.csv draws shorter curves."""
    if logits is None:
        logits = model.predict(x_test, batch_size=PREDICT_BATCH, verbose=0)
    probabilities = softmax(np.asarray(logits))
    predicted = probabilities.argmax(axis=1)
    written = []
    history = run_dir.read_history(os.path.join(output_dir, HISTORY))
    if history:
        written.append(plot_training_curves(history, os.path.join(output_dir, CURVES)))
    written.append(plot_confusion_matrix(y_test, predicted, label_names,
                                         os.path.join(output_dir, CONFUSION)))
    shown = PREDICTION_GRID[0] * PREDICTION_GRID[1]
    written.append(plot_predictions(x_test[:shown], y_test[:shown], probabilities[:shown],
                                    label_names, os.path.join(output_dir, PREDICTIONS)))
    images = x_test[:ATTENTION_IMAGES]
    written.append(plot_attention_maps(images, model_attention_maps(model, images),
                                       y_test[:ATTENTION_IMAGES], predicted[:ATTENTION_IMAGES],
                                       label_names, os.path.join(output_dir, ATTENTION),
                                       class_token=model.pooling == "class_token"))
    print(f"Figures: {', '.join(os.path.basename(p) for p in written)} in {output_dir}")
    return written
