"""DirectML through torch is held to its kernels: every aten op of every preset's torch train
and test step has a torch-directml kernel (its own, or by the `.out` kernel or the composite
it resolves to), none lands on its CPU fallback (vitcifar/backend/torch_op_coverage.py).

The steps are traced on the CPU in a child process started with torch_directml's folder on
LD_LIBRARY_PATH (its Linux wheel ships libd3d12.so there), torch_directml imported only
after the steps ran (without an adapter, autograd then aborts the process). Skipped where
torch-directml is not installed; CI runs it in the torch-directml environment.
"""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, app_environment
from vitcifar.backend import torch_op_coverage

FOLDER = torch_op_coverage.library_folder()
pytestmark = pytest.mark.skipif(FOLDER is None, reason="torch-directml is not installed "
                                                       "(requirements-torch-directml.txt)")
BATCH = 4           # images per traced step: the ops, not their sizes, are checked
# vit_model.py written for TensorFlow alone imports it at its top (before issue 27's port to
# keras.ops, branch torch-model); its torch steps are checked once it runs on torch.
MODEL_ON_TORCH = "\nimport tensorflow as tf\n" not in open(
    os.path.join(ROOT, "vit_model.py"), encoding="utf-8").read()


def in_child(*cases):
    """{case: {op: verdict} of the ops DirectML would not run} of child_main(cases)."""
    env = app_environment({"KERAS_BACKEND": "torch", "KERAS_TORCH_DEVICE": "cpu",
                           "LD_LIBRARY_PATH": os.pathsep.join(
                               filter(None, [FOLDER, os.environ.get("LD_LIBRARY_PATH")]))})
    code = ("import sys; sys.path[:0] = ['tests', '.']; import test_torch_directml_ops as t; "
            f"t.child_main({list(cases)!r})")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=1200)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def sdpa_step():
    import torch
    q, k, v = (torch.randn(2, 4, 5, 8, requires_grad=True) for _ in range(3))
    torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()


def matmul_softmax_step():
    import torch
    q, k, v = (torch.randn(2, 4, 5, 8, requires_grad=True) for _ in range(3))
    (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).sum().backward()


def torch_adam_step():
    import torch
    weight = torch.nn.Parameter(torch.randn(3, 3))
    optimizer = torch.optim.Adam([weight], foreach=False)
    (weight ** 2).sum().backward()
    optimizer.step()


def preset_steps(name, stand_in=False):
    """The train and test step of preset `name` at BATCH images, as model.fit and
    model.evaluate run them (its model, optimizer, loss and metrics compiled by the app);
    `stand_in`: tests/stand_in_model.py's linear model in place of the ViT, for the ops of
    the optimizer, schedule, loss and metrics alone."""
    import numpy as np
    import stand_in_model

    import vit_model
    from vitcifar.config.presets import PRESETS
    from vitcifar.config.views import override
    from vitcifar.data import input_pipeline
    from vitcifar.training.compiled import compile_model

    config = override(PRESETS[name], batch_size=BATCH).validate()
    model = (stand_in_model if stand_in else vit_model).build_model(config)
    compile_model(model, config)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, config.num_classes, BATCH)
    if input_pipeline.label_classes(config) is not None:
        labels = np.eye(config.num_classes, dtype=np.float32)[labels]
    model.train_on_batch(images, labels)          # builds the optimizer: not a step's ops
    model.test_on_batch(images, labels)
    return (lambda: model.train_on_batch(images, labels),
            lambda: model.test_on_batch(images, labels))


def child_main(cases):
    """Traces each case's steps, then imports torch_directml and prints {case: ops on the
    CPU} as JSON (the last line)."""
    traced = {}
    for case in cases:
        if case.startswith(("preset:", "compiled:")):
            train, test = preset_steps(case.split(":")[1], case.startswith("compiled:"))
            traced[case + ":train"] = torch_op_coverage.trace(train)
            traced[case + ":test"] = torch_op_coverage.trace(test)
        else:
            traced[case] = torch_op_coverage.trace(globals()[case])
    import torch_directml  # noqa: F401  (registers its kernels; after every backward pass)
    print(json.dumps({case: torch_op_coverage.on_cpu(torch_op_coverage.resolve(calls))
                      for case, calls in traced.items()}))


@pytest.mark.slow
def test_the_check_finds_the_known_fallbacks_and_passes_matmul_softmax():
    """SDPA and torch's own Adam (lerp.Scalar_out: microsoft/DirectML#604) land on the CPU
    fallback; attention written as matmul + softmax does not. (Traced on the CPU, SDPA
    arrives as its CPU kernel, _scaled_dot_product_flash_attention_for_cpu, which
    torch-directml sends to the CPU as it does _fused_sdp_choice on its own device.)"""
    found = in_child("sdpa_step", "matmul_softmax_step", "torch_adam_step")
    assert any("scaled_dot_product" in op or "sdp" in op for op in found["sdpa_step"]), found
    assert found["matmul_softmax_step"] == {}
    assert any("lerp" in op for op in found["torch_adam_step"]), found["torch_adam_step"]


@pytest.mark.slow
def test_the_apps_optimizers_schedules_losses_and_metrics_have_kernels():
    """Keras's own Adam and AdamW on torch (no lerp: they update with sub, mul, add, sqrt,
    div and the _foreach_ forms of those), the warmup-cosine schedule, global clipping,
    label smoothing and top-1/top-5, as each preset compiles them, on a linear model."""
    from vitcifar.config.presets import PRESETS
    found = in_child(*(f"compiled:{name}" for name in sorted(PRESETS)))
    assert {case: ops for case, ops in found.items() if ops} == {}


@pytest.mark.slow
@pytest.mark.skipif(not MODEL_ON_TORCH, reason="vit_model.py runs on TensorFlow only (the "
                                               "keras.ops port is issue 27's other half)")
def test_no_op_of_any_presets_train_or_test_step_falls_back_to_the_cpu():
    from vitcifar.config.presets import PRESETS
    found = in_child(*(f"preset:{name}" for name in sorted(PRESETS)))
    assert {case: ops for case, ops in found.items() if ops} == {}
