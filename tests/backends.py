"""What the model's tests need to run on every Keras the model runs on (Keras 2.10, Keras 3
on TensorFlow, Keras 3 on PyTorch): tensors, numpy values and gradients, in each backend's
own way. The model's numerics themselves go through kernels.ops."""
import importlib.util
import os
import subprocess
import sys

import numpy as np

from vitcifar.backend.keras_compat import BACKEND, KERAS_3
from vitcifar.ops.kernels import ops, standardize_dtype

TORCH = BACKEND == "torch"
# Keras 3 with PyTorch installed: this Python can also run the model on the other backend.
OTHER_BACKEND = ({"torch": "tensorflow", "tensorflow": "torch"}[BACKEND]
                 if KERAS_3 and importlib.util.find_spec("torch") else None)


def numpy(x) -> np.ndarray:
    """A backend tensor (or variable), gradients attached or not, as a numpy array."""
    return ops.convert_to_numpy(x)


def tensor(x, dtype=None):
    """A numpy array as a backend tensor of its own dtype (Keras 3 on PyTorch would make
    float64 float32), then cast to `dtype` ("float32", "bfloat16", ...) if given."""
    x = ops.convert_to_tensor(x, x.dtype.name) if isinstance(x, np.ndarray) else \
        ops.convert_to_tensor(x)
    return x if dtype is None else ops.cast(x, dtype)


def dtype_name(x) -> str:
    """"float32", "bfloat16", ...: the dtype of a tensor or variable, on any backend."""
    return standardize_dtype(x.dtype)


def value_and_gradients(fn, inputs=(), variables=(), upstream=None):
    """(fn(*inputs), [d output / d source for each input, then each Keras variable]) with
    `upstream` the output's gradient (ones when None, for a scalar output). Inputs are
    tensors or arrays; TensorFlow's GradientTape or torch.autograd."""
    if TORCH:
        import torch
        inputs = [tensor(x).detach().clone().requires_grad_(True) for x in inputs]
        out = fn(*inputs)
        sources = inputs + [v.value for v in variables]
        grads = torch.autograd.grad(out, sources, grad_outputs=None if upstream is None
                                    else tensor(upstream, dtype_name(out)), allow_unused=True)
        return out, list(grads)
    import tensorflow as tf
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = fn(*inputs)
    grads = tape.gradient(out, inputs + list(variables), output_gradients=None
                          if upstream is None else tf.cast(upstream, out.dtype))
    return out, [None if g is None else tf.convert_to_tensor(g) for g in grads]


def run_python(python, code, *args, backend=None, timeout=300):
    """`python -c code args` from the repository's root, KERAS_BACKEND=backend if given."""
    from helpers import ROOT, app_environment
    env = app_environment({"KERAS_BACKEND": backend} if backend else None)
    return subprocess.run([python, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


OTHERS = ("other_backend", "other_stack", "other_stack_torch")


def other_python(kind):
    """(python, backend) of another Keras this machine may run the model on, or (None, why
    not): "other_backend" this Python's other Keras 3 backend, "other_stack"
    OTHER_STACK_PYTHON's TensorFlow (the other stack, as tests/test_cross_stack.py) and
    "other_stack_torch" its PyTorch."""
    if kind == "other_backend":
        return ((sys.executable, OTHER_BACKEND) if OTHER_BACKEND else
                (None, "this Python has no second Keras 3 backend (Keras 2, or no torch)"))
    other = os.environ.get("OTHER_STACK_PYTHON")
    if not other:
        return None, "OTHER_STACK_PYTHON is not set"
    if kind == "other_stack":
        return other, "tensorflow"
    has_torch = run_python(other, "import torch, keras; assert keras.__version__ >= '3'")
    return (other, "torch") if has_torch.returncode == 0 else \
        (None, "OTHER_STACK_PYTHON has no Keras 3 with torch")
