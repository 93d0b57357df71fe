"""optimization.py: schedule values, AdamW's decay and exclusions, resume, ops, losses."""
import math

import numpy as np
import pytest
import tensorflow as tf

from vit_model import VisionTransformer
from vitcifar.backend.keras_compat import KERAS_3
from vitcifar.runs import checkpoint
from vitcifar.runs.checkpoint import RunState
from vitcifar.training import optimization
from vitcifar.training.optimization import WarmupCosine, build_optimizer, learning_rate_schedule

keras = tf.keras
DIRECTML_MISSING_KERNELS = {"Einsum", "ImageProjectiveTransformV3", "ResourceApplyAdamW",
                            "StatelessRandomUniformFullIntV2"}


def tiny_vit(seed=0):
    """8x8 patches -> 16 + 1 tokens of width 16, one block; built for 32x32x3 images."""
    keras.utils.set_random_seed(seed)
    model = VisionTransformer(num_classes=10, patch_size=8, patch_stride=8, num_layers=1,
                              embedding_dim=16, num_heads=2, mlp_hidden_dim=32,
                              head_units=(16,), dropout=0.0, name="vit")
    model(tf.zeros((1, 32, 32, 3), tf.uint8))
    return model


def one_weight():
    """(model, its one weight): a Dense(1) kernel of shape (1, 1), zeros, no bias."""
    model = keras.Sequential([keras.Input((1,)),
                              keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    return model, model.trainable_variables[0]


def reference_rate(step, peak, warmup, total, floor):
    """WarmupCosine's documented formula, in float64."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if step < total:
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor


# --- the schedule -------------------------------------------------------------------------

def test_constant_schedule_is_the_plain_rate():
    rate = learning_rate_schedule("constant", 1e-3, total_steps=100, warmup_steps=10,
                                  floor=1e-6)
    assert isinstance(rate, float) and rate == 1e-3


@pytest.mark.parametrize("step, expected", [
    (0, 1e-3 * 1 / 10),                   # first update: peak / warmup_steps
    (4, 1e-3 * 5 / 10),                   # mid warmup
    (9, 1e-3),                            # last warmup step reaches the peak
    (10, 1e-3),                           # first cosine step: cos(0) = 1
    (60, 1e-5 + (1e-3 - 1e-5) * 0.5),     # half way through the 100 cosine steps: cos(pi/2)
    (109, 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 99 / 100))),  # last step
    (110, 1e-5),                          # total_steps and beyond: the floor
    (5000, 1e-5),
])
def test_cosine_schedule_at_hand_computed_steps(step, expected):
    schedule = learning_rate_schedule("cosine", 1e-3, total_steps=110, warmup_steps=10,
                                      floor=1e-5)
    assert isinstance(schedule, WarmupCosine)
    value = schedule(tf.constant(step, tf.int64))
    assert value.dtype == tf.float32
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(expected, reference_rate(step, 1e-3, 10, 110, 1e-5), rtol=1e-12)


def test_no_warmup_starts_at_the_peak_and_steps_can_be_set_after_tracing():
    schedule = WarmupCosine(peak=0.1, warmup_steps=0, total_steps=4, floor=0.0)
    rate = tf.function(schedule)            # traced once, reads the step variables
    step = tf.constant(2, tf.int64)
    np.testing.assert_allclose([float(rate(tf.constant(s, tf.int64))) for s in range(5)],
                               [0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 4)), 0.05,
                                0.1 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0], atol=1e-7)
    schedule.set_steps(total_steps=20, warmup_steps=4)
    np.testing.assert_allclose(float(rate(step)), 0.1 * 3 / 4, rtol=1e-6)
    assert schedule.get_config()["total_steps"] == 20
    assert schedule.get_config()["warmup_steps"] == 4
    with pytest.raises(ValueError):
        schedule.set_steps(total_steps=3, warmup_steps=4)


def test_schedule_config_round_trip():
    schedule = WarmupCosine(peak=3e-3, warmup_steps=7, total_steps=50, floor=1e-5)
    schedule.set_steps(total_steps=60, warmup_steps=5)
    config = schedule.get_config()
    assert config == {"peak": 3e-3, "warmup_steps": 5, "total_steps": 60, "floor": 1e-5,
                      "name": "warmup_cosine"}
    for copy in (WarmupCosine.from_config(config),
                 keras.optimizers.schedules.deserialize(
                     keras.optimizers.schedules.serialize(schedule))):
        assert isinstance(copy, WarmupCosine) and copy.get_config() == config
        for step in (0, 4, 5, 30, 59, 60, 70):
            assert float(copy(step)) == float(schedule(step))


@pytest.mark.parametrize("kind, peak, floor, total, warmup", [
    ("linear", 1e-3, 0.0, 10, 1), ("cosine", 0.0, 0.0, 10, 1), ("cosine", 1e-3, 2e-3, 10, 1),
    ("cosine", 1e-3, 0.0, 10, 11), ("cosine", 1e-3, 0.0, 0, 0), ("constant", -1.0, 0, 1, 0)])
def test_bad_schedule_arguments_are_refused(kind, peak, floor, total, warmup):
    with pytest.raises(ValueError):
        learning_rate_schedule(kind, peak, total_steps=total, warmup_steps=warmup, floor=floor)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_optimizer_steps_follow_the_schedule_by_iterations(name):
    """Adam with a constant gradient 1 moves a weight by lr_t * m_hat / (sqrt(v_hat) + eps)
    = lr_t (to 3e-6: eps 1e-7 against sqrt(v_hat) >= 0.03), so each step's move is the
    rate the optimizer applied at that iteration."""
    peak, warmup, total, floor = 1e-2, 3, 8, 1e-3
    schedule = WarmupCosine(peak, warmup, total, floor)
    model, weight = one_weight()
    optimizer = build_optimizer(name, schedule, 0.0, None, model)
    moves, reported = [], []
    for _ in range(11):
        reported.append(optimization.current_learning_rate(optimizer))
        before = float(weight.numpy()[0, 0])
        optimizer.apply_gradients([(tf.ones([1, 1]), weight)])
        moves.append(before - float(weight.numpy()[0, 0]))
    expected = [reference_rate(step, peak, warmup, total, floor) for step in range(11)]
    np.testing.assert_allclose(moves, expected, rtol=1e-4)
    np.testing.assert_allclose(reported, expected, rtol=1e-6)
    assert int(optimizer.iterations) == 11
    if KERAS_3:                 # Keras 3's own learning_rate is the next update's rate too
        np.testing.assert_allclose(float(optimizer.learning_rate),
                                   reference_rate(11, peak, warmup, total, floor), rtol=1e-6)


# --- the optimizers -----------------------------------------------------------------------

def test_sample_adam_is_todays_optimizer():
    optimizer = build_optimizer("adam", 1e-3, 0.0, 0, None)
    assert type(optimizer) is type(keras.optimizers.Adam(learning_rate=1e-3))
    if tf.__version__.startswith("2.10."):
        # the legacy OptimizerV2 Adam, not the experimental one; tf-keras (Keras 2 on
        # current TF, the multi-worker stack) has only the new optimizers
        assert "optimizer_v2" in type(optimizer).__module__
    assert optimizer.get_config().get("global_clipnorm") is None
    assert optimization.current_learning_rate(optimizer) == pytest.approx(1e-3)


def test_clip_norm_sets_global_clipping_and_bad_settings_are_refused():
    model = tiny_vit()
    for name in ("adam", "adamw"):
        assert build_optimizer(name, 1e-3, 0.0, 1.5, model).global_clipnorm == 1.5
        assert build_optimizer(name, 1e-3, 0.0, None, model).global_clipnorm is None
    with pytest.raises(ValueError):
        build_optimizer("adam", 1e-3, 0.05, None, model)       # adam has no weight decay
    with pytest.raises(ValueError):
        build_optimizer("sgd", 1e-3, 0.0, None, model)
    with pytest.raises(ValueError):
        build_optimizer("adamw", 1e-3, 0.05, -1.0, model)


def test_global_clipping_bounds_the_first_step():
    """Gradient (3, 4), global norm 5, clipped to 1: (0.6, 0.8). Adam's first step is
    lr * g / (|g| + eps) whatever the scale, so clipping shows in the moments instead."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    weight = model.trainable_variables[0]                                   # (2, 1)
    optimizer = build_optimizer("adam", 1e-3, 0.0, 1.0, model)
    optimizer.apply_gradients([(tf.constant([[3.0], [4.0]]), weight)])
    moments = [np.asarray(v)[:, 0] for v in checkpoint.optimizer_variables(optimizer)
               if np.asarray(v).shape == (2, 1)]
    first_moment = moments[0]                                   # (1 - beta_1) * clipped g
    np.testing.assert_allclose(first_moment, [0.1 * 0.6, 0.1 * 0.8], rtol=1e-5)


def test_adamw_decays_kernels_by_lr_wd_w_and_spares_the_excluded_weights():
    model = tiny_vit()
    lr, wd = 0.1, 0.5
    optimizer = build_optimizer("adamw", lr, wd, None, model)
    excluded = {optimization.weight_path(v) for v in optimization.no_decay_variables(model)}
    print("not decayed:", sorted(excluded))
    expected_excluded = {"vit/class_token/token", "vit/position_embedding/embeddings"}
    expected_excluded |= {optimization.weight_path(v) for v in model.trainable_variables
                          if optimization.weight_path(v).rsplit("/", 1)[1]
                          in ("bias", "gamma", "beta")}
    assert excluded == expected_excluded and len(excluded) == 15   # 7 Dense, 3 LayerNorm, 2
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    # Zero gradients: Adam's part moves nothing (m = v = 0), only the decay acts.
    optimizer.apply_gradients(zip([tf.zeros_like(v) for v in variables], variables))
    decayed = 0
    for variable, old in zip(variables, before):
        new = variable.numpy()
        if optimization.weight_path(variable) in excluded:
            np.testing.assert_array_equal(new, old)
        else:
            np.testing.assert_allclose(new, old - old * np.float32(wd) * np.float32(lr),
                                       rtol=1e-6)
            assert not np.allclose(new, old)
            decayed += 1
    assert decayed == 7                                 # the 7 Dense kernels


def forbidden_ops_of(function, *args):
    graph_def = function.get_concrete_function(*args).graph.as_graph_def()
    ops = {node.op for node in graph_def.node}
    for library_function in graph_def.library.function:      # nested tf.functions
        ops |= {node.op for node in library_function.node_def}
    return ops


@pytest.mark.parametrize("name, rate", [("adamw", "cosine"), ("adam", "constant")])
def test_train_step_uses_no_op_directml_lacks(name, rate):
    model = tiny_vit()
    schedule = learning_rate_schedule(rate, 1e-3, total_steps=100, warmup_steps=10, floor=0)
    optimizer = build_optimizer(name, schedule, 0.05 if name == "adamw" else 0.0, 1.0, model)
    if not KERAS_3 and name == "adamw":
        assert optimizer.jit_compile is False
    loss_fn, metrics = optimization.loss_and_metrics(one_hot=True, label_smoothing=0.1)
    checkpoint.build_optimizer_slots(optimizer, model)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        for metric in metrics:
            metric.update_state(labels, logits)
        return loss

    ops = forbidden_ops_of(train_step, tf.TensorSpec((2, 32, 32, 3), tf.uint8),
                           tf.TensorSpec((2, 10), tf.float32))
    print(name, "train step op types:", sorted(ops))
    assert not ops & DIRECTML_MISSING_KERNELS
    assert not {"XlaLaunch", "_XlaCompile", "_XlaRun"} & ops


# --- resume: optimizer state through checkpoint.npz ---------------------------------------

@pytest.mark.parametrize("name, rate", [("adamw", "cosine"), ("adamw", "constant"),
                                        ("adam", "cosine")])
def test_resumed_optimizer_takes_the_uninterrupted_next_step(tmp_path, name, rate):
    rng = np.random.default_rng(3)
    images = tf.constant(rng.integers(0, 256, (4, 32, 32, 3)), tf.uint8)
    labels = tf.constant(np.eye(10, dtype=np.float32)[[1, 2, 3, 4]])
    loss_fn, _ = optimization.loss_and_metrics(one_hot=True)

    def setup(seed):
        model = tiny_vit(seed)
        schedule = learning_rate_schedule(rate, 1e-2, total_steps=6, warmup_steps=2,
                                          floor=1e-4)
        return model, build_optimizer(name, schedule, 0.1 if name == "adamw" else 0.0,
                                      1.0, model)

    def step(model, optimizer):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    model, optimizer = setup(seed=0)
    for _ in range(3):
        step(model, optimizer)
    path = str(tmp_path / "checkpoint.npz")
    checkpoint.save_checkpoint(path, model, optimizer, RunState(epochs_done=1))
    saved = checkpoint.optimizer_variables(optimizer)
    # iterations (the schedule's step and Adam's bias correction) and m, v per weight
    assert any(v is optimizer.iterations for v in saved)
    assert len(saved) >= 1 + 2 * len(model.trainable_variables)
    step(model, optimizer)                                       # the uninterrupted 4th step

    fresh, fresh_optimizer = setup(seed=1)                       # other initial weights
    checkpoint.load_checkpoint(path, fresh, fresh_optimizer)
    assert int(fresh_optimizer.iterations) == 3
    np.testing.assert_allclose(optimization.current_learning_rate(fresh_optimizer),
                               optimization.current_learning_rate(optimizer) if rate ==
                               "constant" else reference_rate(3, 1e-2, 2, 6, 1e-4), rtol=1e-6)
    step(fresh, fresh_optimizer)
    for resumed, uninterrupted in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(resumed, uninterrupted)


# --- loss and metrics ---------------------------------------------------------------------

def numpy_smoothed_loss(labels, logits, eps):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    targets = (1 - eps) * labels + eps / labels.shape[1]
    return float(np.mean(-(targets * log_softmax).sum(axis=1)))


LOGITS = np.random.default_rng(7).normal(0, 2, (4, 10)).astype(np.float32)
CLASSES = np.array([3, 0, 9, 3])


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_equals_hand_computed(eps):
    one_hot = np.eye(10, dtype=np.float32)[CLASSES]
    loss, _ = optimization.loss_and_metrics(one_hot=True, label_smoothing=eps)
    np.testing.assert_allclose(float(loss(one_hot, LOGITS)),
                               numpy_smoothed_loss(one_hot, LOGITS, eps), rtol=1e-5)


def test_label_smoothing_on_soft_mixup_labels():
    eye = np.eye(10, dtype=np.float32)
    lam = np.array([[0.7], [0.2], [1.0], [0.55]], np.float32)
    soft = lam * eye[CLASSES] + (1 - lam) * eye[[5, 1, 2, 3]]
    loss, _ = optimization.loss_and_metrics(one_hot=True, label_smoothing=0.1)
    expected = numpy_smoothed_loss(soft, LOGITS, 0.1)
    assert expected != pytest.approx(numpy_smoothed_loss(soft, LOGITS, 0.0))
    np.testing.assert_allclose(float(loss(soft, LOGITS)), expected, rtol=1e-5)


def test_sparse_and_one_hot_forms_agree_and_smoothing_needs_one_hot():
    sparse_loss, sparse_metrics = optimization.loss_and_metrics(one_hot=False)
    dense_loss, dense_metrics = optimization.loss_and_metrics(one_hot=True)
    one_hot = np.eye(10, dtype=np.float32)[CLASSES]
    np.testing.assert_allclose(float(sparse_loss(CLASSES, LOGITS)),
                               float(dense_loss(one_hot, LOGITS)), rtol=1e-6)
    ranks = (-LOGITS).argsort(axis=1)
    top1 = np.mean(ranks[:, 0] == CLASSES)
    top5 = np.mean([c in row[:5] for c, row in zip(CLASSES, ranks)])
    for metrics, labels in ((sparse_metrics, CLASSES), (dense_metrics, one_hot)):
        assert [m.name for m in metrics] == ["top1", "top5"]
        for metric, expected in zip(metrics, (top1, top5)):
            metric.update_state(labels, LOGITS)
            assert float(metric.result()) == pytest.approx(expected)
    with pytest.raises(ValueError):
        optimization.loss_and_metrics(one_hot=False, label_smoothing=0.1)


@pytest.mark.slow
def test_adamw_with_schedule_under_mixed_precision_fits_and_round_trips(tmp_path):
    """model.compile wraps the optimizer in a LossScaleOptimizer under mixed_float16 (both
    stacks): the schedule, the rate read-out and the checkpoint go through its inner one."""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8)]
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        models = []
        for seed in (0, 1):
            model = tiny_vit(seed)
            schedule = learning_rate_schedule("cosine", 1e-3, total_steps=10, warmup_steps=3,
                                              floor=1e-5)
            loss, metrics = optimization.loss_and_metrics(one_hot=True, label_smoothing=0.1)
            model.compile(optimizer=build_optimizer("adamw", schedule, 0.05, 1.0, model),
                          loss=loss, metrics=metrics)
            models.append(model)
        trained, fresh = models
        trained.fit(images, labels, batch_size=4, epochs=2, verbose=0)
        inner = trained.optimizer.inner_optimizer
        # A step with an overflowing loss scale is skipped and not counted by the inner one.
        steps = int(inner.iterations)
        assert 1 <= steps <= 4
        assert optimization.current_learning_rate(trained.optimizer) == pytest.approx(
            reference_rate(steps, 1e-3, 3, 10, 1e-5), rel=1e-6)
        path = str(tmp_path / "checkpoint.npz")
        checkpoint.save_checkpoint(path, trained, trained.optimizer, RunState())
        checkpoint.load_checkpoint(path, fresh, fresh.optimizer)
        assert int(fresh.optimizer.inner_optimizer.iterations) == steps
        for a, b in zip(checkpoint.optimizer_variables(fresh.optimizer),
                        checkpoint.optimizer_variables(trained.optimizer)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(fresh.get_weights(), trained.get_weights()):
            np.testing.assert_array_equal(a, b)
    finally:
        keras.mixed_precision.set_global_policy("float32")
