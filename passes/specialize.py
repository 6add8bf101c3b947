"""Fix every symbolic size of a Dynamo graph to its value for one call.

When a prompt of a new length arrives, Dynamo re-traces the prefill with a symbolic
sequence length; a model that splices its video at a split point read with ``.item()``
(``torch.cat`` around one placeholder) has data-dependent sizes from the start. The HoliTom passes work on static shapes (the merged length is a
literal the budget fixes), so the backend specializes such a graph per concrete length
before rewriting it, the way a static recompile would.
"""

from __future__ import annotations

import sympy
import torch
import torch.fx as fx

from .context import RewriteError, is_weight, propagate_fresh
from .dataflow import DataflowView

_SYMBOLIC = (torch.SymInt, torch.SymFloat, torch.SymBool)


def _example(node: fx.Node):
    return node.meta.get("example_value", node.meta.get("val"))


def _bind(bindings: dict[sympy.Symbol, int], example, value) -> None:
    """Bind each bare size symbol of ``example`` (a SymInt, or a tensor's sizes) to its value in ``value``."""
    pairs = [(example, value)] if isinstance(example, torch.SymInt) else (
        list(zip(example.shape, value.shape)) if isinstance(example, torch.Tensor) and isinstance(value, torch.Tensor)
        else [])
    for size, actual in pairs:
        if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
            bindings[size.node.expr] = int(actual)


def symbol_bindings(gm: fx.GraphModule, args: list) -> dict[sympy.Symbol, int]:
    """Each free size symbol of the graph's inputs, bound to its value in ``args``."""
    bindings: dict[sympy.Symbol, int] = {}
    for node, value in zip([n for n in gm.graph.nodes if n.op == "placeholder"], args):
        _bind(bindings, _example(node), value)
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


def scalar_reads(gm: fx.GraphModule) -> list[fx.Node]:
    """The graph's data-dependent scalar reads (``.item()``) that something reads: a split point read off
    the token ids (one a specialization folded away is left unread)."""
    return [n for n in gm.graph.nodes if n.users and _is_scalar_read(n)]


def _is_scalar_read(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "item") or \
        node.target is torch.ops.aten._local_scalar_dense.default


class ScalarProbe:
    """The part of a graph that derives its scalar reads, run on a call's inputs: the key of a variant
    specialized for those values (a host read; the rewritten variant no longer makes the model's own)."""

    def __init__(self, gm: fx.GraphModule):
        reads = scalar_reads(gm)
        needed = set(reads)
        for node in reversed(list(gm.graph.nodes)):
            if node in needed:
                needed.update(node.all_input_nodes)
        graph = fx.Graph()
        copies: dict[fx.Node, fx.Node] = {}
        for node in gm.graph.nodes:
            if node.op == "placeholder" or node in needed:
                copies[node] = graph.node_copy(node, lambda a: copies[a])
        graph.output(tuple(copies[n] for n in reads))
        self.module = fx.GraphModule(gm, graph)

    def __call__(self, args: list) -> tuple:
        with torch.no_grad():
            return tuple(int(v) for v in self.module(*args))


def read_bindings(gm: fx.GraphModule, args: list) -> dict[sympy.Symbol, int]:
    """Each data-dependent size symbol that derives from the graph's scalar reads (``u0 = x.item()``, the
    size of a slice at it), bound to its value for ``args``: the graph runs once on copies of them. Other
    data-dependent sizes (an MoE's routing) stay unbound: a specialization would bake them in."""
    view = DataflowView(gm.graph)
    derived = set().union(*({read} | view.descendants(read) for read in scalar_reads(gm)))
    bindings: dict[sympy.Symbol, int] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node in derived:
                _bind(bindings, _example(node), result)
            return result

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    copies = [x.clone() if isinstance(x, torch.Tensor) and not is_weight(node) else x
              for node, x in zip(placeholders, args)]
    with torch.no_grad():
        Recorder(gm).run(*copies)
    return bindings


def specialize(gm: fx.GraphModule, args: list, bind_reads: bool = False) -> tuple[fx.GraphModule, list[int]]:
    """A static copy of ``gm`` for ``args``: returns it and the indices of the args it still takes.

    Every node producing a symbolic scalar is replaced by its value (``bind_reads``: the values that follow
    from the graph's scalar reads too, ``read_bindings``); the scalar inputs go away;
    tensor metadata is re-propagated with static fake tensors. A scalar read (``.item()``) stays
    in the graph, unread: the nodes its value reached name it in ``meta["holitom_scalar_sources"]``,
    so dataflow still sees where a split point came from (``passes.dataflow``).
    """
    bindings = symbol_bindings(gm, args)
    if bind_reads:  # a split point: the sizes that follow from it are this copy's too
        bindings.update(read_bindings(gm, args))
    graph = fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    kept = [i for i, node in enumerate(placeholders) if not isinstance(_example(node), _SYMBOLIC)]
    reads = set(scalar_reads(fx.GraphModule(gm, graph)))
    folded_reads = {n for n in graph.nodes if _is_scalar_read(n)} - reads
    sources: dict[fx.Node, set[fx.Node]] = {}
    for node in graph.nodes:  # which reads each symbolic scalar derives from
        if isinstance(_example(node), _SYMBOLIC):
            sources[node] = set().union(*(sources.get(a, set()) for a in node.all_input_nodes)) | (
                {node} if node in reads else set())
    for node in reversed(list(graph.nodes)):
        example = _example(node)
        if not isinstance(example, _SYMBOLIC) or (node in folded_reads and not node.users):
            continue
        value = sympy.sympify(sympy.sympify(example.node.expr).xreplace(bindings))
        if value.free_symbols:
            raise RewriteError(f"cannot specialize {node.name} = {example.node.expr}: unbound symbols")
        concrete = bool(value) if isinstance(example, torch.SymBool) else (
            float(value) if isinstance(example, torch.SymFloat) else int(value))
        for user in list(node.users):
            user.args = fx.map_arg(user.args, lambda a: concrete if a is node else a)
            user.kwargs = fx.map_arg(user.kwargs, lambda a: concrete if a is node else a)
            if sources[node]:
                user.meta["holitom_scalar_sources"] = user.meta.get("holitom_scalar_sources", set()) | sources[node]
        if node not in reads:
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
