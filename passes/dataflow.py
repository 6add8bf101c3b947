"""One networkx view of an FX graph: the dataflow questions the passes ask, answered by reachability.

An edge runs from each node to every node that reads it. The passes ask: what does this tensor
descend from (the pixel input? the token ids?), which decoder-layer stack reads the sequence,
which encoder stack feeds the features. The view is built once per pass (``PassManager``
refreshes it after each rewrite); nothing walks the FX graph by hand for these questions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import networkx as nx
import torch
import torch.fx as fx

from .context import is_weight, tensor_of
from .module_stack import layer_slot

EMBEDDING_TARGETS = (torch.nn.functional.embedding, torch.embedding, "embedding")
ROTARY_TARGETS = (torch.cos, torch.sin, "cos", "sin")
#: Where positions enter a model: rotary tables, or a position-embedding lookup.
ENCODING_TARGETS = ROTARY_TARGETS + EMBEDDING_TARGETS
_INDEX_STEPS = 3  # ops allowed between the token ids and their embedding lookup (a clamp, a clone, a view)


def is_integer(node: fx.Node) -> bool:
    value = tensor_of(node)
    return value is not None and not value.is_floating_point() and value.dtype != torch.bool


def is_floating(node: fx.Node) -> bool:
    value = tensor_of(node)
    return value is not None and value.is_floating_point()


@dataclass(frozen=True)
class LayerStacks:
    """Which numbered layer each node was traced in, split into the language model's decoder stack
    (the one reading the embedded token ids) and every other stack (the vision encoder's)."""

    decoder: dict[fx.Node, int]
    vision: dict[fx.Node, int]

    @property
    def depth(self) -> int:
        return max(self.decoder.values(), default=-1) + 1


class DataflowView:
    """A ``networkx.DiGraph`` of one FX graph (node -> its readers), with the queries the passes share."""

    def __init__(self, graph: fx.Graph, vision_classes: frozenset[type] = frozenset()):
        self.graph = graph
        self.vision_classes = vision_classes
        self._ancestors: dict[fx.Node, frozenset[fx.Node]] = {}
        self._descendants: dict[fx.Node, frozenset[fx.Node]] = {}
        self.order = {node: index for index, node in enumerate(graph.nodes)}
        self.digraph = nx.DiGraph()
        self.digraph.add_nodes_from(graph.nodes)
        self.digraph.add_edges_from((source, node) for node in graph.nodes for source in node.all_input_nodes)
        # a scalar a specialization folded into a literal (``passes.specialize``) still feeds its readers
        self.digraph.add_edges_from((source, node) for node in graph.nodes
                                    for source in node.meta.get("holitom_scalar_sources", ()) if source in self.order)

    def ancestors(self, node: fx.Node) -> frozenset[fx.Node]:
        if node not in self._ancestors:
            self._ancestors[node] = frozenset(nx.ancestors(self.digraph, node))
        return self._ancestors[node]

    def descendants(self, node: fx.Node) -> frozenset[fx.Node]:
        if node not in self._descendants:
            self._descendants[node] = frozenset(nx.descendants(self.digraph, node))
        return self._descendants[node]

    def nearest_above(self, node: fx.Node, steps: int) -> list[fx.Node]:
        """``node`` and its ancestors at most ``steps`` edges up, nearest first (then latest in the graph)."""
        distance = nx.single_source_shortest_path_length(self.digraph.reverse(copy=False), node, cutoff=steps)
        return sorted(distance, key=lambda n: (distance[n], -self.order[n]))

    @functools.cached_property
    def outputs(self) -> list[fx.Node]:
        """The nodes the graph returns (what Dynamo's residual code stores back: cache tensors, results)."""
        return [n for n in self.graph.nodes if any(user.op == "output" for user in n.users)]

    def reaches(self, source: fx.Node, target: fx.Node) -> bool:
        return source is target or source in self.ancestors(target)

    def inputs_of(self, node: fx.Node) -> list[fx.Node]:
        """The graph inputs (not weights) ``node`` descends from, in graph order."""
        return sorted((a for a in self.ancestors(node) if a.op == "placeholder" and not is_weight(a)),
                      key=self.order.get)

    @functools.cached_property
    def token_ids(self) -> frozenset[fx.Node]:
        """Integer graph inputs looked up in an embedding table within a few steps: the prompt's token ids
        (and learned absolute positions, which belong to the language model as well)."""
        found = set()
        for lookup in (n for n in self.graph.nodes if n.target in EMBEDDING_TARGETS):
            indices = lookup.args[0] if lookup.target is torch.nn.functional.embedding else lookup.args[1]
            if isinstance(indices, fx.Node):
                found |= {n for n in self.nearest_above(indices, _INDEX_STEPS)
                          if n.op == "placeholder" and not is_weight(n) and is_integer(n)}
        return frozenset(found)

    @functools.cached_property
    def one_new_token(self) -> bool:
        """Every token-ids input holds one token per row: a decode step."""
        lengths = [tensor_of(ids).shape[-1] for ids in self.token_ids if tensor_of(ids) is not None]
        return bool(lengths) and all(length == 1 for length in lengths)

    def encoding_path(self, sources: list[fx.Node]) -> tuple[set[fx.Node], list[fx.Node]]:
        """(the nodes on the way from ``sources`` (positions made with ``arange``) into a position encoding,
        sources included; the encodings they reach, in graph order)."""
        below = set(sources).union(*(self.descendants(s) for s in sources))
        sinks = sorted((n for n in below if n.target in ENCODING_TARGETS), key=self.order.get)
        return below & set().union(*(self.ancestors(s) for s in sinks)), sinks

    @functools.cached_property
    def layers(self) -> LayerStacks:
        """Decoder and vision layers by dataflow: of the stacks of numbered layers (any container name) whose
        nodes read the embedded token ids, the last (a Q-Former reading ids of its own feeds the decoder, never
        the other way) is the decoder; the others are encoders. A graph without token ids (an encoder
        compiled on its own) has only encoder stacks, unless ``layer_slot`` marks a stack as the language
        model's by its path (a frame resumed inside the decoder)."""
        slots = {node: layer_slot(node, self.vision_classes) for node in self.graph.nodes}
        text = set().union(*(self.descendants(ids) for ids in self.token_ids)) if self.token_ids else set()
        by_stack: dict[str, list[fx.Node]] = {}
        for node, slot in slots.items():
            if slot is not None:
                by_stack.setdefault(slot.stack, []).append(node)
        reading = [stack for stack, nodes in by_stack.items()
                   if (any(n in text for n in nodes) if text else not any(slots[n].vision_path for n in nodes))]
        last = max(reading, key=lambda stack: max(self.order[n] for n in by_stack[stack]), default=None)
        decoder, vision = {}, {}
        for stack, nodes in by_stack.items():
            (decoder if stack == last else vision).update((n, slots[n].index) for n in nodes)
        return LayerStacks(decoder, vision)
