"""Fix every symbolic size of a Dynamo graph to its value for one call.

When a prompt of a new length arrives, Dynamo re-traces the prefill with a symbolic
sequence length. The HoliTom passes work on static shapes (the merged length is a
literal the budget fixes), so the backend specializes such a graph per concrete length
before rewriting it, the way a static recompile would.
"""

from __future__ import annotations

import sympy
import torch
import torch.fx as fx

from .context import RewriteError, propagate_fresh

_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)


def _example(node: fx.Node):
    return node.meta.get("example_value", node.meta.get("val"))


def symbol_bindings(gm: fx.GraphModule, args: list) -> dict[sympy.Symbol, int]:
    """Each free size symbol of the graph's inputs, bound to its value in ``args``."""
    bindings = {}

    def bind(size, value) -> None:
        if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
            bindings[size.node.expr] = int(value)

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, args):
        example = _example(node)
        if isinstance(example, torch.SymInt):
            bind(example, value)
        elif isinstance(example, torch.Tensor) and isinstance(value, torch.Tensor):
            for size, actual in zip(example.shape, value.shape):
                bind(size, actual)
    return bindings


def is_symbolic(gm: fx.GraphModule) -> bool:
    """Whether any graph input has a symbolic size."""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        example = _example(node)
        if isinstance(example, _SYMBOLIC) or (
                isinstance(example, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in example.shape)):
            return True
    return False


def specialize(gm: fx.GraphModule, args: list) -> tuple[fx.GraphModule, list[int]]:
    """A static copy of ``gm`` for ``args``: returns it and the indices of the args it still takes.

    Every node producing a symbolic scalar is replaced by its value; the scalar inputs go away;
    tensor metadata is re-propagated with static fake tensors.
    """
    bindings = symbol_bindings(gm, args)
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    kept = [i for i, node in enumerate(placeholders) if not isinstance(_example(node), _SYMBOLIC)]
    for node in reversed(list(graph.nodes)):
        example = _example(node)
        if not isinstance(example, _SYMBOLIC):
            continue
        value = sympy.sympify(sympy.sympify(example.node.expr).xreplace(bindings))
        if value.free_symbols:
            raise RewriteError(f"cannot specialize {node.name} = {example.node.expr}: unbound symbols")
        concrete = bool(value) if isinstance(example, torch.SymBool) else (
            float(value) if isinstance(example, torch.SymFloat) else int(value))
        for user in list(node.users):
            user.args = fx.map_arg(user.args, lambda a: concrete if a is node else a)
            user.kwargs = fx.map_arg(user.kwargs, lambda a: concrete if a is node else a)
        graph.erase_node(node)
    static = fx.GraphModule(gm, graph)
    tensors = [args[i] for i in kept]
    try:
        propagate_fresh(static, tensors)
    except Exception as err:  # the graph does not hold for these sizes after all
        raise RewriteError(f"specialized graph does not propagate shapes: {type(err).__name__}: {err}") from err
    for node in static.graph.nodes:
        if "val" in node.meta:
            node.meta["example_value"] = node.meta["val"]
    return static, kept
