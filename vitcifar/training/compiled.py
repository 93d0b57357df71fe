"""A model compiled for training and evaluation: the optimizer, schedule, loss and metrics a
TrainConfig asks for, the test-set figures, and a float32 copy for the chief's evaluation."""
from __future__ import annotations

from typing import Optional

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


def evaluate_test(model, config: TrainConfig, x_test, y_test, batch_size: int) -> dict:
    """{test_top1, test_top5, test_loss} of a model compiled by compile_model, on test images
    and class indices: what results.json records and evaluate.py recomputes."""
    test = model.evaluate(input_pipeline.eval_dataset(x_test, y_test, batch_size,
                                                      input_pipeline.label_classes(config)),
                          return_dict=True, verbose=0)
    return {"test_top1": float(test["top1"]), "test_top5": float(test["top5"]),
            "test_loss": float(test["loss"])}


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
