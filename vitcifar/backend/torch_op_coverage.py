"""The aten ops of a torch step against torch-directml's kernels: which would DirectML run,
and which would it send to the CPU (its `dml_cpu_fallback`, which copies every tensor to the
CPU and back).

`trace` runs a step on the CPU under a TorchDispatchMode and keeps one call of every aten op
it dispatches (ops that decompose above the dispatcher, CompositeImplicitAutograd, arrive as
what they decompose into). `resolve` then reads, for each op, the kernel torch's dispatcher
holds for the PrivateUse1 key (torch_directml's device) in
`torch._C._dispatch_dump_table(op)`, and follows what is not a kernel of its own:

    its own kernel (torch_directml/csrc)      DirectML runs it
    dml_cpu_fallback                           the CPU runs it: a fallback
    a structured op's functional or in-place   its `.out` overload's kernel does the work
      form (CompositeExplicitAutogradNonFunctional; one without `.out`, such as
      new_empty_strided, or whose `.out` is a composite, such as select_backward, is
      followed as a composite)
    CompositeExplicitAutograd (views, _to_copy, sum, stack, _foreach_* ...)
                                               the ops its kernel calls, found by running
                                               that kernel alone on the recorded call
                                               (_foreach_* call their per-tensor op)
    CompositeImplicitAutograd                  the ops it decomposes into, likewise

torch_directml must be imported between `trace` and `resolve`, and the step must have run
its backward passes before the import: with torch_directml imported and no DirectML adapter,
autograd's start-up (and device_count()) abort the process. Its Linux wheel ships
libd3d12.so beside itself, so the process must start with that folder on LD_LIBRARY_PATH
(`library_folder`). Imports torch only inside functions.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable, Dict, List, Optional, Tuple

FALLBACK = "dml_cpu_fallback"
OWN_KERNEL = "torch_directml"
STRUCTURED = "CompositeExplicitAutogradNonFunctional"
COMPOSITE_EXPLICIT = "RegisterCompositeExplicitAutograd.cpp"
COMPOSITE_IMPLICIT = "CompositeImplicitAutograd"


def library_folder() -> Optional[str]:
    """torch_directml's folder (it holds libd3d12.so on Linux), found without importing it;
    None where the package is not installed."""
    spec = importlib.util.find_spec("torch_directml")
    return os.path.dirname(spec.origin) if spec and spec.origin else None


def trace(step: Callable[[], object]) -> Dict[str, tuple]:
    """{op name ("aten::mm", "aten::add.Tensor"): (op, args, kwargs) of its first call} of
    every aten op `step()` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    calls: Dict[str, tuple] = {}

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.setdefault(func.name(), (func, args, kwargs or {}))
            try:
                return func(*args, **(kwargs or {}))
            except RuntimeError:   # inside a composite run alone, a wrapped number can come
                #                    as a Python scalar: the packet picks the Scalar overload
                return func.overloadpacket(*args, **(kwargs or {}))

    with Recorder():
        step()
    return calls


def privateuse1_kernel(name: str) -> str:
    """The PrivateUse1 line of the op's dispatch table ("" if none)."""
    import torch

    table = torch._C._dispatch_dump_table(name)
    return next((line for line in table.splitlines() if line.startswith("PrivateUse1:")), "")


def out_overload(name: str) -> Optional[str]:
    """The `.out` overload that does a structured op's work: the overload of the same base
    name (in-place `mul_` -> `mul`) with out= arguments whose other arguments are the op's
    ("aten::add.Tensor" -> "aten::add.out", "aten::lerp.Scalar" -> "aten::lerp.Scalar_out")."""
    import torch

    base, _, overload = name.split("::")[1].partition(".")
    op = getattr(getattr(torch.ops.aten, base), overload or "default")
    wanted = [(a.name, str(a.type)) for a in op._schema.arguments]
    packet = getattr(torch.ops.aten, base.rstrip("_"))
    for candidate in packet.overloads():
        schema = getattr(packet, candidate)._schema
        if any(a.is_out for a in schema.arguments) and \
                [(a.name, str(a.type)) for a in schema.arguments if not a.is_out] == wanted:
            return f"aten::{base.rstrip('_')}.{candidate}"
    return None


def composite_calls(call: tuple, key_name: str) -> Dict[str, tuple]:
    """The ops the op's composite kernel (`key_name`: CompositeExplicitAutograd, its
    NonFunctional variant, or CompositeImplicitAutograd) calls, run alone on the recorded call."""
    import torch

    func, args, kwargs = call
    keys = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key_name))
    args, kwargs = _detached(args), _detached(kwargs)    # in-place ops on weights (leaves
    with torch.no_grad():                                # that require grad) run here too
        return trace(lambda: func.redispatch(keys, *args, **kwargs))


def _detached(value):
    """`value` with every tensor in it (lists, tuples, dicts) a detached copy."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(item) for item in value)
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    return value


def resolve(calls: Dict[str, tuple]) -> Dict[str, str]:
    """{op: how DirectML runs it}, composites followed to the ops they call (each listed
    too): "kernel", "kernel of aten::X.out", "composite", "FALLBACK ..." or "NO KERNEL".
    Call with torch_directml imported."""
    verdicts: Dict[str, str] = {}
    pending: List[Tuple[str, tuple]] = list(calls.items())
    while pending:
        name, call = pending.pop()
        if name in verdicts:
            continue
        line = privateuse1_kernel(name)
        if OWN_KERNEL in line and FALLBACK not in line:
            verdicts[name] = "kernel"
        elif FALLBACK in line:
            verdicts[name] = f"FALLBACK ({FALLBACK})"
        elif STRUCTURED in line:
            out = out_overload(name)
            out_line = privateuse1_kernel(out) if out else ""
            if OWN_KERNEL in out_line and FALLBACK not in out_line:
                verdicts[name] = f"kernel of {out}"
            elif FALLBACK in out_line:
                verdicts[name] = f"FALLBACK (its {out} is {FALLBACK})"
            else:        # no .out (new_empty_strided), or a composite one (select_backward)
                verdicts[name] = "composite"
                pending.extend(composite_calls(call, STRUCTURED).items())
        elif COMPOSITE_EXPLICIT in line or COMPOSITE_IMPLICIT in line or "math kernel" in line:
            verdicts[name] = "composite"
            key = ("CompositeExplicitAutograd" if COMPOSITE_EXPLICIT in line
                   else "CompositeImplicitAutograd")
            pending.extend(composite_calls(call, key).items())
        else:
            verdicts[name] = "NO KERNEL"
    return verdicts


def on_cpu(verdicts: Dict[str, str]) -> Dict[str, str]:
    """The ops of `resolve`'s verdicts that DirectML would not run itself."""
    return {name: how for name, how in verdicts.items()
            if how.startswith(("FALLBACK", "NO KERNEL"))}
