"""A model compiled for training and evaluation: the optimizer, schedule, loss and metrics a
TrainConfig asks for, the test-set figures from one pass of predictions, and a float32 copy for the chief's evaluation."""
from __future__ import annotations

from typing import Optional

import numpy as np

import vit_model
from vitcifar.backend.keras_compat import keras
from vitcifar.config.settings import TrainConfig
from vitcifar.data import input_pipeline
from vitcifar.training import distribution, optimization, precision


def compile_model(model, config: TrainConfig, jit_compile: bool = False,
                  steps_per_execution: int = 1, steps_per_epoch: int = 1
                  ) -> Optional[optimization.WarmupCosine]:
    """The config's optimizer (Adam or AdamW, its schedule, clipping) and cross-entropy on
    logits (label-smoothed if asked) with metrics top1/top5: the categorical forms for
    one-hot (soft) labels, the sparse forms for class indices, as
    input_pipeline.label_classes says. Returns the cosine schedule (None for a plateau
    run's constant rate), whose steps the caller may fix (WarmupCosine.set_steps)."""
    cosine = config.lr_schedule == "cosine"
    rate = optimization.learning_rate_schedule(
        "cosine" if cosine else "constant", config.learning_rate,
        total_steps=max(1, round(config.epochs * steps_per_epoch)),
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        floor=config.min_learning_rate)
    loss, metrics = optimization.loss_and_metrics(
        one_hot=input_pipeline.label_classes(config) is not None,
        label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimization.build_optimizer(config.optimizer, rate,
                                                         config.weight_decay,
                                                         config.clip_norm, model),
                  loss=loss, metrics=metrics, jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    return rate if cosine else None


def test_logits(model, x_test: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, classes) float32 logits of the test images: one pass, which the test figures
    and the figures share (ending.finish)."""
    return np.asarray(model.predict(x_test, batch_size=batch_size, verbose=0), np.float32)


def test_metrics(config: TrainConfig, logits: np.ndarray, y_test: np.ndarray) -> dict:
    """{test_top1, test_top5, test_loss} of `logits` for the class indices y_test, by the
    loss and metrics compile_model trains with (label smoothing included): what
    results.json records and evaluate.py recomputes."""
    one_hot = input_pipeline.label_classes(config)
    loss, (top1, top5) = optimization.loss_and_metrics(one_hot=one_hot is not None,
                                                       label_smoothing=config.label_smoothing)
    # encode_labels' encoding, in numpy: these run on whatever backend Keras runs
    labels = y_test if one_hot is None else np.eye(one_hot, dtype=np.float32)[y_test]
    for metric in (top1, top5):
        metric.update_state(labels, logits)
    return {"test_top1": float(top1.result()), "test_top5": float(top5.result()),
            "test_loss": float(loss(labels, logits))}


def evaluate_test(model, config: TrainConfig, x_test, y_test, batch_size: int) -> dict:
    """test_metrics of the model's test_logits."""
    return test_metrics(config, test_logits(model, x_test, batch_size), y_test)


def local_model(plan: "distribution.Plan", config: TrainConfig, model):
    """A model for the chief's test evaluation and figures: `model` itself on one worker in
    float32; else a float32 copy outside the strategy (built, compiled, given its weights),
    whose predictions need no other worker (they can exit or have died), and whose test
    figures are those evaluate.py and predict.py compute: they run in float32."""
    if plan.workers == 1 and keras.mixed_precision.global_policy().name == precision.FLOAT32:
        return model
    with precision.policy(precision.FLOAT32):
        copy = vit_model.build_model(config)
        compile_model(copy, config)
    copy.set_weights(model.get_weights())
    return copy
