"""Mixed precision per layer: which format each layer and tensor of a graph has under a profile
with ``layers:`` overrides (docs/profiles.md), resolved once per graph.

:class:`LayerFormats` is the one resolution every consumer uses (the re-quantization passes,
:func:`mrq.pipeline.profile_violations`, ``mrq check``/``compare``). A *layer* is a conv or
gemm node with weights; its profile is :meth:`mrq.hw_profile.HwProfile.for_layer`. Every other
node belongs to the layer upstream of it (the layer of its inputs' producers; a node
fed only by graph inputs belongs to the layer downstream; with several producers, the one last
in graph order wins, so a residual Add belongs to its main branch). A tensor has the format of the layer
of the node that **produces** it: where an 8-bit layer feeds a 4-bit one, the tensor between them
holds 8-bit codes, and the 4-bit layer reads them as they are (its weights are 4-bit, its output
is 4-bit). Graph inputs take the format of the layer that reads them (the host quantizes the
image for the first layer). Weights and biases belong to their layer.
"""
from __future__ import annotations

from dataclasses import dataclass

from mrq.errors import HwProfileError
from mrq.ir import Graph

__all__ = ["LayerFormats", "layer_kind", "mac_layers"]


def layer_kind(graph: Graph, node) -> str:
    """``DepthwiseConv`` (a conv with one input channel per group, group > 1), ``Conv`` or
    ``Gemm``."""
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        w = graph.tensors[node.inputs[1]]
        per_group = w.shape[1] if w.shape is not None and len(w.shape) > 1 else None
        return "DepthwiseConv" if group > 1 and per_group == 1 else "Conv"
    return node.op


def mac_layers(graph: Graph) -> list:
    """The conv/gemm nodes with weights, in graph order (the layers ``layers:`` selects)."""
    return [n for n in graph.nodes if n.op in ("Conv", "Gemm") and not n.attrs.get("integer_output")
            and len(n.inputs) > 1 and graph.tensors[n.inputs[1]].data is not None]


@dataclass
class LayerFormats:
    """Per-layer profiles of one graph (see the module docstring for the rules)."""

    profile: object                 # mrq.hw_profile.HwProfile (with its layers)
    layer_profile: dict             # layer node name -> that layer's HwProfile
    node_layer: dict                # any node name -> its layer's node name (absent: none)
    kinds: dict                     # layer node name -> layer_kind
    matched: dict                   # layers entry index -> [layer names it selects]
    tensor_node: dict               # tensor name -> the node whose layer governs it

    @classmethod
    def of(cls, graph: Graph, profile, check: bool = True) -> LayerFormats:
        """Resolve ``profile`` on ``graph``. ``check``: an entry of ``layers`` that selects no
        layer of the graph is an error (a typo would otherwise silently change nothing)."""
        layers = mac_layers(graph)
        kinds = {n.name: layer_kind(graph, n) for n in layers}
        layer_profile, matched = {}, {e.index: [] for e in profile.layers}
        for i, node in enumerate(layers):
            positions = {pos for pos, at in (("first", 0), ("last", len(layers) - 1)) if i == at}
            layer_profile[node.name] = profile.for_layer(kinds[node.name], node.name, positions)
            for entry in profile.layers:
                if entry.matches(kinds[node.name], node.name, positions):
                    matched[entry.index].append(node.name)
        producer, first_consumer = {}, {}
        for node in graph.nodes:
            for name in node.outputs:
                producer.setdefault(name, node)
            for name in node.inputs:
                first_consumer.setdefault(name, node.name)
        tensor_node = {**first_consumer, **{name: n.name for name, n in producer.items()}}
        out = cls(profile, layer_profile, _node_layers(graph, set(layer_profile), producer),
                  kinds, matched, tensor_node)
        if check:
            out.check()
        return out

    def check(self) -> None:
        for entry in self.profile.layers:
            if not self.matched[entry.index]:
                kinds = sorted(set(self.kinds.values()))
                raise HwProfileError(
                    self.profile.source or self.profile.name, f"layers[{entry.index}]",
                    f"selects no layer of the model ({entry.selector()}); its "
                    f"{len(self.kinds)} conv/gemm layers are of kinds {', '.join(kinds) or 'none'}, "
                    f"e.g. {', '.join(list(self.kinds)[:3]) or 'none'}")

    @property
    def mixed(self) -> bool:
        return bool(self.profile.layers)

    def for_node(self, node_name: str):
        """The profile of the layer node ``node_name`` belongs to (the profile itself when it
        belongs to none)."""
        layer = self.node_layer.get(node_name)
        return self.layer_profile[layer] if layer is not None else self.profile

    def for_tensor(self, name: str):
        """The profile whose formats govern tensor ``name``: its producer's layer; a graph input
        (or a weight, a bias) the layer of its first consumer."""
        node = self.tensor_node.get(name)
        return self.profile if node is None else self.for_node(node)

    def rows(self) -> list:
        """One row per layer: (node, kind, weight bits, activation bits of its output)."""
        return [(name, self.kinds[name], p.weights.bits, p.activations.bits)
                for name, p in self.layer_profile.items()]


def _node_layers(graph: Graph, layer_names: set, producer: dict) -> dict:
    out = {}
    order = {node.name: i for i, node in enumerate(graph.nodes)}
    for node in graph.nodes:
        if node.name in layer_names:
            out[node.name] = node.name
            continue
        # the nearest producer in graph order: a residual Add belongs to its main branch
        upstream = [p for p in (producer.get(name) for name in node.inputs)
                    if p is not None and p.name in out]
        if upstream:
            out[node.name] = out[max(upstream, key=lambda p: order[p.name]).name]
    # nodes fed only by graph inputs (and constants): the layer downstream of them
    consumers: dict = {}
    for node in graph.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node.name)
    for node in reversed(graph.nodes):
        if node.name in out:
            continue
        downstream = [out[c] for name in node.outputs for c in consumers.get(name, ()) if c in out]
        if downstream:
            out[node.name] = downstream[0]
    return out


def precision_table(formats: LayerFormats) -> str:
    """Which layer runs at which precision, one line each (``mrq check``)."""
    rows = formats.rows()
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"precision per layer ({formats.profile.name}):",
             f"  {'layer':<{width}} {'kind':<14} {'weights':>7} {'output':>7}"]
    lines += [f"  {name:<{width}} {kind:<14} {w:>5} b {a:>5} b" for name, kind, w, a in rows]
    return "\n".join(lines)
