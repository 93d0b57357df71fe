"""Which ops a compiled Keras model's train and test steps run, and which of them the
DirectML plugin has no kernel for (TensorFlow would then run them on the CPU, silently).

    op_dtypes = step_op_dtypes(model, train_data, test_data)   # {op type: {signature}}
    missing_kernels(op_dtypes, directml_gpu_kernels())         # [] when all have kernels

A signature names the op's type attributes, e.g. "T=float32" (MatMul) or
"DstT=float32 SrcT=uint8" (Cast), "" for an op without any: TensorFlow picks a kernel by
exactly these attributes (a kernel's constraints name attributes, never inputs), so they
decide whether a device kernel exists; inputs and outputs of fixed type have no say.

The graph walked is the step as traced, before Grappler's rewrites and before If/While are
lowered to Switch/Merge/Enter/Exit (the plugin registers those for every dtype). No op is
skipped: the ops that do no arithmetic (Placeholder, Const, NoOp, Identity, _Arg,
PartitionedCall, While, ...) are registered for DEVICE_DEFAULT, and missing_kernels counts
a DEVICE_DEFAULT kernel as a kernel, as TensorFlow's kernel lookup does for a device type
without one of its own (most are int32 kernels that keep their tensors in host memory).
Imports TensorFlow only.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set

import tensorflow as tf
from tensorflow.python.framework import kernels, op_def_registry

# {op type: [one dict per kernel: {attr name: allowed dtype names}]}; a kernel whose dict
# is empty accepts every dtype.
Kernels = Dict[str, List[Dict[str, frozenset]]]


def _concrete_step(step_function, iterator):
    """The concrete function of a Keras train/test function for this iterator. Keras 2.10's
    is a tf.function of the iterator; Keras 3.15's is a Python wrapper (it turns an empty
    Optional into StopIteration, which a traced graph cannot) around such a tf.function,
    held in its closure. Raises TypeError when there is none (run_eagerly=True)."""
    if hasattr(step_function, "get_concrete_function"):
        return step_function.get_concrete_function(iterator)
    inner = [cell.cell_contents for cell in (getattr(step_function, "__closure__", None) or ())
             if hasattr(cell.cell_contents, "get_concrete_function")]
    if len(inner) != 1:
        raise TypeError(f"cannot find the tf.function in {step_function!r} (run_eagerly=True? "
                        f"an unknown Keras version?); found {len(inner)} candidates")
    return inner[0].get_concrete_function(iterator)


def _node_signature(node) -> str:
    """The node's type attributes as "A=x B=[y,z]" (sorted; list attributes as their distinct
    dtypes), the op's default for an attribute the node leaves out."""
    op_def = op_def_registry.get(node.op)
    if op_def is None:      # an op this process does not know: no attrs, so no kernel fits
        return ""
    parts = []
    for attr in op_def.attr:
        if attr.type not in ("type", "list(type)"):
            continue
        value = node.attr[attr.name] if attr.name in node.attr else attr.default_value
        if attr.type == "type":
            parts.append(f"{attr.name}={tf.dtypes.as_dtype(value.type).name}")
        else:
            names = sorted({tf.dtypes.as_dtype(t).name for t in value.list.type})
            parts.append(f"{attr.name}=[{','.join(names)}]")
    return " ".join(sorted(parts))


def _function_names(node) -> Iterable[str]:
    """Names of the library functions a node calls (f, body, cond, then_branch, branches...)."""
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        for func in value.list.func:
            yield func.name


def graph_op_dtypes(graph_def) -> Dict[str, Set[str]]:
    """{op type: {signature}} of a GraphDef's nodes and of every function its nodes call,
    directly or through other functions (control-flow bodies, nested tf.functions)."""
    library = {f.signature.name: f for f in graph_def.library.function}
    ops: Dict[str, Set[str]] = {}
    pending, seen = [list(graph_def.node)], set()
    while pending:
        for node in pending.pop():
            if op_def_registry.get(node.op) is None and node.op in library:
                names = [node.op]                    # a function called as an op
            else:
                ops.setdefault(node.op, set()).add(_node_signature(node))
                names = list(_function_names(node))
            for name in names:
                if name in seen:
                    continue
                if name not in library:
                    raise KeyError(f"function {name} called by {node.name} is not in the "
                                   "graph's library")
                seen.add(name)
                pending.append(list(library[name].node_def))
    return ops


def step_op_dtypes(model, train_data: tf.data.Dataset,
                   test_data: Optional[tf.data.Dataset] = None) -> Dict[str, Set[str]]:
    """{op type: {signature}} of a compiled model's train step (traced for batches like
    train_data's) and test step (test_data's, else train_data's), as model.fit and
    model.evaluate run them: model.make_train_function / make_test_function, with the
    model's steps_per_execution and jit_compile. Only traces: no step runs and no weight
    changes (tracing may create the optimizer's slot variables). The datasets' own ops run
    in tf.data on the CPU and are not included."""
    model.make_train_function()
    model.make_test_function()
    test_data = train_data if test_data is None else test_data
    ops: Dict[str, Set[str]] = {}
    for function, data in ((model.train_function, train_data),
                           (model.test_function, test_data)):
        graph_def = _concrete_step(function, iter(data)).graph.as_graph_def()
        for op, signatures in graph_op_dtypes(graph_def).items():
            ops.setdefault(op, set()).update(signatures)
    return ops


def registered_kernels(device_type: str) -> Kernels:
    """The kernels TensorFlow has registered for a device type ("GPU", "DEFAULT", "CPU"),
    with their dtype constraints. Labelled kernels are left out: TensorFlow picks them only
    for nodes that ask for the label (_kernel attr)."""
    found: Kernels = {}
    for kernel in kernels.get_all_registered_kernels().kernel:
        if kernel.device_type != device_type or kernel.label:
            continue
        found.setdefault(kernel.op, []).append(
            {c.name: frozenset(tf.dtypes.as_dtype(t).name for t in c.allowed_values.list.type)
             for c in kernel.constraint})
    return found


def directml_gpu_kernels() -> Kernels:
    """The "GPU" kernels: the DirectML plugin's on the DirectML stack (tensorflow-cpu has no
    GPU kernels of its own; the plugin registers them even when it finds no adapter). On a
    CUDA build these would be CUDA's."""
    return registered_kernels("GPU")


def _parse_signature(signature: str) -> Dict[str, List[str]]:
    attrs = {}
    for part in signature.split():
        name, value = part.split("=", 1)
        attrs[name] = value[1:-1].split(",") if value.startswith("[") else [value]
        attrs[name] = [t for t in attrs[name] if t]
    return attrs


def _accepts(constraints: Dict[str, frozenset], attrs: Dict[str, List[str]]) -> bool:
    """TensorFlow's rule: every constrained attribute present, and each of its dtypes (all
    elements, for a list) allowed."""
    return all(name in attrs and all(t in allowed for t in attrs[name])
               for name, allowed in constraints.items())


def missing_kernels(op_dtypes: Dict[str, Set[str]], gpu_kernels: Kernels,
                    default_kernels: Optional[Kernels] = None) -> List[str]:
    """Sorted "Op(signature)" for each op and signature that no GPU kernel and no
    DEVICE_DEFAULT kernel (default_kernels, by default the registered ones) accepts: what
    TensorFlow would place on the CPU."""
    if default_kernels is None:
        default_kernels = registered_kernels("DEFAULT")
    missing = []
    for op, signatures in op_dtypes.items():
        candidates = gpu_kernels.get(op, []) + default_kernels.get(op, [])
        for signature in signatures:
            attrs = _parse_signature(signature)
            if not any(_accepts(constraints, attrs) for constraints in candidates):
                missing.append(f"{op}({signature})")
    return sorted(missing)
