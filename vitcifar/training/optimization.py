"""The training recipe's optimisation pieces: learning-rate schedule, optimizer, loss, metrics.

Works on both stacks: Keras 3 (tf.keras on TF >= 2.16) and Keras 2.10 (TF 2.10 + DirectML).
Of the project it imports only config (the optimizer names) and devices (the Keras
version), so training.py can use it without cycles.

How training.compile_model calls it, on a built model::

    rate = optimization.learning_rate_schedule(
        "cosine" if config.lr_schedule == "cosine" else "constant", config.learning_rate,
        total_steps=round(config.epochs * steps), warmup_steps=round(config.warmup_epochs * steps),
        floor=config.min_learning_rate)
    optimizer = optimization.build_optimizer(config.optimizer, rate, config.weight_decay,
                                             config.clip_norm, model)
    loss, metrics = optimization.loss_and_metrics(
        one_hot=label_classes(config) is not None, label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics, ...)

- `"constant"` gives a float: the optimizer then holds the rate in a variable,
  and the Bookkeeper's plateau halving (`optimizer.learning_rate = x`) sets it.
- `"cosine"` gives a `WarmupCosine`. Its rate is a pure function of
  `optimizer.iterations`, which checkpoint.npz saves, so a resumed run follows the rates of
  an uninterrupted one as long as it is given the same total/warmup steps. The caller must
  then NOT assign `optimizer.learning_rate` (plateau halving, resume): Keras 3's optimizers
  and Keras 2.10's AdamW raise TypeError, Keras 2.10's legacy Adam silently replaces the
  schedule by that constant.
  `current_learning_rate(optimizer)` reads the rate of the next update, for history.csv.
- Label smoothing needs one-hot labels (Keras 3's SparseCategoricalCrossentropy has no
  label_smoothing): with `label_smoothing > 0` the caller must one-hot every label
  (training, validation and test), i.e. label_classes(config) must return num_classes,
  and pass one_hot=True here.
- checkpoint.npz holds the optimizer's variables keyed by slot and weight path, and which
  exist depends on the settings (Keras 3 keeps a constant rate in a variable, a schedule in
  none): a run resumes only with the same optimizer and lr_schedule (config fields not
  resumable).
- The sample preset (`"adam"`, constant rate, no clipping) builds
  `keras.optimizers.Adam(learning_rate=...)`: the legacy (OptimizerV2) Adam on TF 2.10,
  Keras 3's Adam on TF >= 2.16.
"""
from __future__ import annotations

import math
import re
import types
from typing import Optional, Union

from vitcifar.backend.keras_compat import KERAS_3, keras, register, to_numpy
from vitcifar.config.settings import OPTIMIZERS

if KERAS_3:        # keras.ops: the schedule runs on TensorFlow and torch alike
    ops = keras.ops
else:              # Keras 2 (TF 2.10): keras.ops's names on the TensorFlow functions
    import tensorflow as tf
    ops = types.SimpleNamespace(cast=tf.cast, maximum=tf.maximum, cos=tf.cos, where=tf.where,
                                convert_to_tensor=tf.convert_to_tensor)
LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule

LR_SCHEDULES = ("constant", "cosine")     # a plateau run's rate is a constant one here
# Weights AdamW does not decay, as ends of their path ("vit/block_0/mlp_in/bias"): every
# bias, LayerNorm scale and offset, vit_model's position embedding and class token. Decay
# pulls weights toward 0; for these, 0 is no sensible prior (a LayerNorm gamma of 0 mutes
# its features), and they are few (rank <= 1, or one table/vector).
NO_DECAY_WEIGHTS = ("bias", "gamma", "beta", "position_embedding/embeddings",
                    "class_token/token")


@register
class WarmupCosine(LearningRateSchedule):
    """Linear warmup to `peak`, then cosine decay to `floor`, by optimizer step (from 0):

        rate(step) = peak * (step + 1) / warmup_steps            for step < warmup_steps
        rate(step) = floor + (peak - floor) * 0.5 * (1 + cos(pi * (step - warmup_steps)
                         / max(1, total_steps - warmup_steps)))  for warmup <= step < total
        rate(step) = floor                                       for step >= total_steps

    So the first update uses peak / warmup_steps, the last warmup update and the first
    cosine update both use peak, and the rate nears floor at the last step. A run extended
    past total_steps (e.g. resumed with a larger --epochs but the original total_steps)
    continues at floor; recomputing total_steps from the larger --epochs instead would
    stretch the remaining cosine, making the rates jump. warmup_steps 0: no warmup.

    Computed in float32 ops from `step` alone (a pure function: no state but the two step
    counts), so it runs inside compiled train steps on every stack (Keras 2.10 has no
    CosineDecay warmup): keras.ops on Keras 3 (TensorFlow or torch), TF ops on Keras 2.

    Settable steps: `warmup_steps` and `total_steps` are non-trainable int64 variables
    (keras.Variable on Keras 3, tf.Variable on Keras 2),
    so `set_steps(total_steps, warmup_steps)` changes them after construction, e.g. once a
    time-budget planner has measured the throughput, and a train step that has already been
    traced reads the new values (no retracing). They are no optimizer variables, so they are
    not in checkpoint.npz: a resumed run must set the same values again. get_config returns
    their current values.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, floor: float = 0.0,
                 name: str = "warmup_cosine"):
        super().__init__()
        if not peak > 0:
            raise ValueError(f"peak learning rate must be positive, got {peak}")
        if not 0 <= floor <= peak:
            raise ValueError(f"floor learning rate must be in [0, peak={peak}], got {floor}")
        _check_steps(total_steps, warmup_steps)
        self.peak = float(peak)
        self.floor = float(floor)
        self.name = name
        variable = keras.Variable if KERAS_3 else tf.Variable
        self.warmup_steps = variable(int(warmup_steps), dtype="int64", trainable=False,
                                     name=f"{name}_warmup_steps")
        self.total_steps = variable(int(total_steps), dtype="int64", trainable=False,
                                    name=f"{name}_total_steps")

    def set_steps(self, total_steps: int, warmup_steps: int) -> None:
        _check_steps(total_steps, warmup_steps)
        self.total_steps.assign(int(total_steps))
        self.warmup_steps.assign(int(warmup_steps))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.cast(self.warmup_steps, "float32")
        total = ops.cast(self.total_steps, "float32")
        peak = ops.convert_to_tensor(self.peak, "float32")
        floor = ops.convert_to_tensor(self.floor, "float32")
        # Both branches are evaluated by where(); the max() keeps warmup 0 finite.
        warming = peak * (step + 1.0) / ops.maximum(warmup, 1.0)
        progress = (step - warmup) / ops.maximum(total - warmup, 1.0)             # 0 .. 1
        cosine = floor + (peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warmup, warming, ops.where(step < total, cosine, floor))

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": int(to_numpy(self.warmup_steps)),
                "total_steps": int(to_numpy(self.total_steps)), "floor": self.floor,
                "name": self.name}


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if not (int(total_steps) == total_steps and int(warmup_steps) == warmup_steps
            and 0 <= warmup_steps <= total_steps and total_steps >= 1):
        raise ValueError(f"need whole steps 0 <= warmup_steps ({warmup_steps}) <= total_steps "
                         f"({total_steps}), total_steps >= 1")


def learning_rate_schedule(kind: str, peak: float, total_steps: int, warmup_steps: int,
                           floor: float) -> Union[float, WarmupCosine]:
    """"constant": the float `peak` (steps and floor unused: the Bookkeeper halves the rate
    on plateaus, down to its own minimum). "cosine": WarmupCosine(peak, warmup_steps,
    total_steps, floor). Raises ValueError for other kinds or inconsistent steps."""
    if kind == "constant":
        if not peak > 0:
            raise ValueError(f"learning rate must be positive, got {peak}")
        return float(peak)
    if kind == "cosine":
        return WarmupCosine(peak, warmup_steps, total_steps, floor)
    raise ValueError(f"unknown learning-rate schedule {kind!r}; use one of {LR_SCHEDULES}")


def weight_path(variable) -> str:
    """"vit/block_0/mlp_in/bias" on both stacks (Keras 3's variable.path; Keras 2's
    variable.name without its ":0")."""
    path = getattr(variable, "path", None)
    return path if isinstance(path, str) else variable.name.split(":")[0]


def no_decay_variables(model) -> list:
    """The trainable variables of `model` that AdamW must not decay (NO_DECAY_WEIGHTS)."""
    def excluded(path):
        return any(path == end or path.endswith("/" + end) for end in NO_DECAY_WEIGHTS)
    return [v for v in model.trainable_variables if excluded(weight_path(v))]


def build_optimizer(name: str, learning_rate: Union[float, LearningRateSchedule],
                    weight_decay: float = 0.0, clip_norm: Optional[float] = None, model=None):
    """"adam": keras.optimizers.Adam (the legacy OptimizerV2 Adam on TF 2.10); weight_decay must
    be 0. "adamw": Adam with decoupled weight decay, w -= rate * weight_decay * w at every
    step before the Adam update (rate: that step's scheduled rate), on every trainable
    weight of the (built) `model` but no_decay_variables(model). clip_norm None or 0: no clipping; else gradients are
    scaled so that their global norm is at most clip_norm (global_clipnorm).

    Keras 3: keras.optimizers.AdamW. Its exclude_from_weight_decay(var_names=...) matches
    the names by re.search against variable.name, which in Keras 3 is only the last part
    ("bias", "embeddings"), so the variables are passed themselves (var_list, keyed by id).
    Keras 2.10: tf.keras.optimizers.experimental.AdamW with jit_compile=False (it turns XLA on
    by itself when a GPU is visible, and DirectML has no XLA). Its var_list test is
    `variable in list`, which compares tf.Variables with `==`, element-wise, and fails for
    broadcastable shapes, so there the exact full names are passed as anchored patterns.
    Both update with plain assign ops, not the ResourceApplyAdamW kernel DirectML lacks.
    """
    if clip_norm is not None and clip_norm < 0:
        raise ValueError(f"clip_norm must be 0 (off) or positive, got {clip_norm}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be 0 or positive, got {weight_decay}")
    clipping = {"global_clipnorm": float(clip_norm)} if clip_norm else {}
    if name == "adam":
        if weight_decay:
            raise ValueError("weight decay needs the adamw optimizer (adam has none)")
        return keras.optimizers.Adam(learning_rate=learning_rate, **clipping)
    if name != "adamw":
        raise ValueError(f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")
    if model is None or not model.built:
        raise ValueError("adamw needs the built model, to know which weights not to decay")
    excluded = no_decay_variables(model)
    if KERAS_3:
        optimizer = keras.optimizers.AdamW(learning_rate=learning_rate,
                                           weight_decay=weight_decay, **clipping)
        optimizer.exclude_from_weight_decay(var_list=excluded)
        return optimizer
    optimizer = keras.optimizers.experimental.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, jit_compile=False, **clipping)
    names = {v.name for v in excluded}
    excluded_ids = {id(v) for v in excluded}      # not `v in excluded`: that is v == w
    clashing = names & {v.name for v in model.trainable_variables
                        if id(v) not in excluded_ids}
    if clashing:       # a name match would then also spare a weight that is to decay
        raise ValueError(f"weights share the names {sorted(clashing)}; AdamW on Keras 2 "
                         "tells excluded weights apart by name")
    optimizer.exclude_from_weight_decay(
        var_names=[f"^{re.escape(name)}$" for name in sorted(names)])
    return optimizer


def current_learning_rate(optimizer) -> float:
    """The rate the optimizer's next update uses (a schedule's value at
    optimizer.iterations), on both stacks, with or without a mixed-precision wrapper."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    # Keras 3 and Keras 2's experimental optimizers keep the schedule or rate variable in
    # _learning_rate (Keras 2.10's public learning_rate is the LAST update's rate then);
    # Keras 2's legacy optimizers return the schedule itself from learning_rate.
    rate = getattr(optimizer, "_learning_rate", None)
    if rate is None:
        rate = optimizer.learning_rate
    if isinstance(rate, LearningRateSchedule):
        rate = rate(optimizer.iterations)
    return float(to_numpy(rate))


def loss_and_metrics(one_hot: bool, label_smoothing: float = 0.0):
    """(loss, [top1, top5]) on logits: the categorical forms for one-hot (or soft, mixup)
    labels, the sparse forms for class indices. label_smoothing eps > 0 trains on
    (1 - eps) * y + eps / K, K classes; it needs one_hot=True (Keras 3's sparse loss has no
    label smoothing), so the caller must one-hot all labels then. Metrics are unaffected."""
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if not one_hot:
        if label_smoothing:
            raise ValueError("label smoothing needs one-hot labels: pass one_hot=True and "
                             "one-hot the labels")
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                [keras.metrics.SparseCategoricalAccuracy(name="top1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])
    return (keras.losses.CategoricalCrossentropy(from_logits=True,
                                                 label_smoothing=label_smoothing),
            [keras.metrics.CategoricalAccuracy(name="top1"),
             keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")])
