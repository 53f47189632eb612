"""Small ONNX graph utilities shared by the writers and the lowering (numpy and onnx only)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name."""
    g = model.graph
    values = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def constant_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every initializer and Constant-node output, by name, without converting any data."""
    g = model.graph
    ranks = {i.name: len(i.dims) for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            ranks[n.output[0]] = len(t.dims) if t is not None else 0
    return ranks


def toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Topological order (producers first), keeping the given order wherever it is already valid."""
    produced_by = {o: idx for idx, n in enumerate(nodes) for o in n.output}
    order, state = [], [0] * len(nodes)   # 0 new, 1 on the stack, 2 placed
    for i in range(len(nodes)):
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if state[j] == 2 or (state[j] == 1 and not expanded):
                continue
            if expanded:
                state[j] = 2
                order.append(nodes[j])
                continue
            state[j] = 1
            stack.append((j, True))
            for name in reversed(nodes[j].input):
                k = produced_by.get(name)
                if k is not None and state[k] == 0:
                    stack.append((k, False))
    return order
