"""Rewrites of the ONNX graph tf2onnx makes of the ViT (model_export.to_onnx) into the forms
ONNX Runtime runs fast, in standard ONNX ops (opset 17) only, so the file stays portable
(DirectML, Windows ML). tf2onnx writes the same patterns on both stacks (tf2onnx 1.14 from
TF 2.10, 1.17 from TF 2.21), and ONNX Runtime's optimiser fuses none of them:

  Dense on (B, T, K)  Keras's tensordot: Reshape(x, [-1, K]) -> MatMul(W) -> Reshape back to
                      a shape computed per call by Shape -> Cast -> Gather -> Concat -> Cast.
                      ONNX MatMul broadcasts (B, T, K) x (K, N) -> (B, T, N) itself: one
                      MatMul(x, W) (the bias stays an Add, as before).
  layer norm          vit_model._layer_norm: GlobalAveragePool (the mean over the last axis
                      of a rank-3 tensor) -> Sub -> Mul(d, d) -> GlobalAveragePool -> Add(eps)
                      -> Sqrt -> Reciprocal, times (gamma and) the centred x, plus beta: one
                      LayerNormalization (opset 17), one kernel in ORT.
  GELU                Mul(x, 1/sqrt 2) -> Erf -> Add(1) -> Mul(0.5 x, .): the GeluFusion of
                      ORT 1.23 and 1.32 matches Div(x, sqrt 2), not this Mul, so the Mul
                      becomes that Div (ORT then runs Gelu, or BiasGelu with the bias Add).

Each rewrite computes the same values (to float32 rounding) and gives its result the name
the old subgraph's output had; nodes left unused are then removed. Patterns that do not
match exactly are left as they are.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List, Optional

import numpy as np


class _Graph:
    """Lookups over an onnx GraphProto: who makes each tensor, who reads it, constants."""

    def __init__(self, graph):
        from onnx import numpy_helper
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.readers: Dict[str, List] = {}
        for node in graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.ranks = {}
        for info in list(graph.value_info) + list(graph.input) + list(graph.output):
            if info.type.tensor_type.HasField("shape"):
                self.ranks[info.name] = len(info.type.tensor_type.shape.dim)

    def made_by(self, name: str, op_type: str):
        """The node of type `op_type` that makes `name`, else None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def skip_casts(self, name: str) -> str:
        while self.made_by(name, "Cast") is not None:
            name = self.producer[name].input[0]
        return name

    def constant(self, name: str) -> Optional[np.ndarray]:
        return self.constants.get(name)

    def split_constant(self, node):
        """(other input, constant value) of a two-input node with one constant input."""
        for i in (0, 1):
            value = self.constant(node.input[i])
            if value is not None and self.constant(node.input[1 - i]) is None:
                return node.input[1 - i], value
        return None, None


def _dense_matmuls(g: _Graph) -> list:
    """(final Reshape, new MatMul(x, W)) pairs, one per tensordot of x (B, ..., K) with a
    constant W (K, N): the MatMul makes the Reshape's output, (B, ..., N)."""
    found = []
    for back in g.graph.node:                           # Reshape(MatMul(flat, W), shape)
        if back.op_type != "Reshape":
            continue
        matmul = g.made_by(back.input[0], "MatMul")
        if matmul is None:
            continue
        flatten = g.made_by(matmul.input[0], "Reshape")
        weights = g.constant(matmul.input[1])
        if flatten is None or weights is None or weights.ndim != 2:
            continue
        x, (k, n) = flatten.input[0], weights.shape
        to_2d = g.constant(flatten.input[1])
        if to_2d is None or to_2d.tolist() != [-1, k]:
            continue
        # shape = Concat(Gather(Shape(x), [0 .. r-2]), [N]), with Casts anywhere between
        concat = g.made_by(g.skip_casts(back.input[1]), "Concat")
        if concat is None or len(concat.input) != 2:
            continue
        gather = g.made_by(g.skip_casts(concat.input[0]), "Gather")
        last = g.constant(concat.input[1])
        shape = gather is not None and g.made_by(g.skip_casts(gather.input[0]), "Shape")
        if not shape or last is None or last.tolist() != [n] or shape.input[0] != x:
            continue
        leading = g.constant(gather.input[1])               # the axes of x but the last
        if leading is None or leading.tolist() != list(range(g.ranks.get(x, 0) - 1)):
            continue
        found.append((back, _node("MatMul", [x, matmul.input[1]], back.output[0],
                                  back.name + "/MatMul")))
    return found


def _mean_over_last_axis(g: _Graph, name: str) -> Optional[str]:
    """The tensor whose last-axis mean (kept dims) `name` is, else None."""
    node = g.producer.get(name)
    if node is None:
        return None
    if node.op_type == "GlobalAveragePool" and g.ranks.get(node.input[0]) == 3:
        return node.input[0]                 # averages axes 2.. : the last one at rank 3
    if node.op_type == "ReduceMean" and len(node.input) == 1:
        attributes = {a.name: a for a in node.attribute}
        rank = g.ranks.get(node.input[0])
        axes = list(attributes["axes"].ints) if "axes" in attributes else []
        keep = attributes["keepdims"].i if "keepdims" in attributes else 1
        if rank and keep and [a % rank for a in axes] == [rank - 1]:
            return node.input[0]
    return None


def _layer_norms(g: _Graph) -> list:
    """(last node, (x, D, gamma, beta, epsilon)) per _layer_norm subgraph over the last axis
    of x (..., D); gamma or beta None where tf2onnx folded away ones or zeros. The last node
    is the one whose output the LayerNormalization is to make."""
    found = []
    for reciprocal in g.graph.node:                   # 1 / sqrt(mean(d * d) + eps)
        if reciprocal.op_type != "Reciprocal":
            continue
        sqrt = g.made_by(reciprocal.input[0], "Sqrt")
        add_eps = sqrt is not None and g.made_by(sqrt.input[0], "Add")
        if not add_eps:
            continue
        variance, epsilon = g.split_constant(add_eps)
        square_mean = _mean_over_last_axis(g, variance) if variance else None
        square = square_mean and g.made_by(square_mean, "Mul")
        if not square or square.input[0] != square.input[1] or epsilon.size != 1:
            continue
        sub = g.made_by(square.input[0], "Sub")          # d = x - mean(x)
        if sub is None or _mean_over_last_axis(g, sub.input[1]) != sub.input[0]:
            continue
        x = sub.input[0]
        # times gamma: d * (inv_std * gamma) (grappler's order), d * inv_std * gamma, or
        # no Mul at all when gamma was all ones and folded away; then plus beta, if any
        scale, gamma = reciprocal.output[0], None
        readers = g.readers.get(scale, [])
        if len(readers) == 1 and readers[0].op_type == "Mul" and sub.output[0] not in \
                readers[0].input:
            scale, gamma = g.split_constant(readers[0])
            scale = readers[0].output[0] if scale else None
        times = [n for n in g.readers.get(scale, []) if n.op_type == "Mul"
                 and sorted(n.input) == sorted([sub.output[0], scale])] if scale else []
        if len(times) != 1:
            continue
        last = times[0]
        beta = None
        for op_type in ("Mul", "Add"):
            readers = g.readers.get(last.output[0], [])
            if len(readers) != 1 or readers[0].op_type != op_type:
                continue
            _, value = g.split_constant(readers[0])
            if value is None or value.ndim > 1 or (op_type == "Mul" and gamma is not None):
                continue
            if op_type == "Mul":
                gamma = value
            else:
                beta = value
            last = readers[0]
        width = _last_dim(g, x)
        if width is None or any(v is not None and v.size not in (1, width)
                                for v in (gamma, beta)):
            continue
        found.append((last, (x, width, gamma, beta, float(epsilon.reshape(())))))
    return found


def _last_dim(g: _Graph, x: str) -> Optional[int]:
    """The static size of the last axis of `x` (D), from shape inference, else None."""
    for info in g.graph.value_info:
        if info.name == x:
            dim = info.type.tensor_type.shape.dim[-1]
            return dim.dim_value if dim.HasField("dim_value") else None
    return None


def _gelu_divisions(g: _Graph) -> list:
    """(Mul, (x, output, name)) per Mul(x, 1/sqrt 2) feeding an Erf, to be Div(x, sqrt 2)."""
    found = []
    for erf in g.graph.node:
        if erf.op_type != "Erf":
            continue
        mul = g.made_by(erf.input[0], "Mul")
        x, factor = g.split_constant(mul) if mul is not None else (None, None)
        if factor is None or factor.size != 1 or \
                not math.isclose(float(factor.reshape(())), 1 / math.sqrt(2), rel_tol=1e-6):
            continue
        found.append((mul, (x, mul.output[0], mul.name)))
    return found


def _node(op_type, inputs, output, name, **attributes):
    from onnx import helper
    return helper.make_node(op_type, inputs, [output], name=name, **attributes)


def fuse(model):
    """`model` (onnx ModelProto from tf2onnx), shape-inferred and rewritten as the module
    docstring says."""
    import onnx
    from onnx import numpy_helper

    # data_prop: onnx 1.12 (the DirectML stack) infers a Reshape's output rank from a shape
    # computed by Shape -> Gather -> Concat only with it; the ranks decide what matches
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    replacements = {}                 # first output of an old node -> the nodes replacing it
    new_initializers = []

    g = _Graph(graph)
    for old, new in _dense_matmuls(g):
        replacements[old.output[0]] = [new]
    for old, (x, width, gamma, beta, epsilon) in _layer_norms(g):
        name = old.name + "/LayerNorm"
        inputs = [x]
        for part, value, default in (("scale", gamma, 1.0), ("bias", beta, 0.0)):
            value = np.full([width], default, np.float32) if value is None else \
                np.broadcast_to(value, [width]).astype(np.float32)
            new_initializers.append(numpy_helper.from_array(value, f"{name}/{part}"))
            inputs.append(f"{name}/{part}")
        replacements[old.output[0]] = [_node("LayerNormalization", inputs, old.output[0], name,
                                       axis=-1, epsilon=epsilon)]
    for old, (x, output, name) in _gelu_divisions(g):
        root2 = numpy_helper.from_array(np.array(math.sqrt(2), np.float32), name + "/sqrt2")
        new_initializers.append(root2)
        replacements[old.output[0]] = [_node("Div", [x, root2.name], output, name)]

    nodes = []
    for node in graph.node:
        nodes.extend(replacements.get(node.output[0], [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers)
    _remove_unused(graph)
    del graph.value_info[:]                    # stale for removed tensors; ORT infers its own
    return model


def _remove_unused(graph) -> None:
    """Drops nodes none of whose outputs is read (repeatedly), then unread initializers."""
    wanted = {o.name for o in graph.output}
    while True:
        read = wanted | {name for node in graph.node for name in node.input}
        kept = [node for node in graph.node if any(out in read for out in node.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    read = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def op_counts(model) -> Counter:
    return Counter(node.op_type for node in model.graph.node)
