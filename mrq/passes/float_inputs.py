"""float_inputs: an integer graph input whose grid the profile rejects becomes a float input
followed by a Quantize onto a new grid.

Integer inputs (TFLite models take int8 codes) fix the meaning of the caller's codes; re-gridding
them in place would silently change what the codes mean. Instead the re-quantized model takes the
real values (``scale * (code - zero_point)`` of the old grid) and quantizes them itself, like an
ONNX Runtime QDQ model does. The report says so.
"""
from __future__ import annotations

from mrq.grids import describe
from mrq.ir import Graph, Node, Tensor


def float_inputs(graph: Graph, ctx) -> Graph:
    from mrq.mixed_precision import LayerFormats
    formats = LayerFormats.of(graph, ctx.profile)   # an input has the format of its reader
    for i, name in enumerate(list(graph.inputs)):
        t = graph.tensors[name]
        qp = t.qparams
        if qp is None or t.dtype == "float32":
            continue
        if not formats.for_tensor(name).check_tensor("activations", qp.dtype, qp.scale, qp.zero_point, qp.axis,
                                                     code_range=(qp.qmin, qp.qmax)):
            continue
        codes_name = graph.unique_name(name + "_codes")
        for node in graph.nodes:
            node.inputs = [codes_name if n == name else n for n in node.inputs]
        graph.tensors[codes_name] = Tensor(codes_name, t.shape, t.dtype, qp)
        graph.tensors[name] = Tensor(name, t.shape, "float32")
        graph.nodes.insert(0, Node("Quantize", graph.unique_name("quantize_" + name), [name], [codes_name]))
        ctx.renamed[codes_name] = name
        # codes made for the old grid must not be read on the new one (mrq.pipeline refuses them)
        graph.meta.setdefault("regridded_inputs", {})[name] = describe(qp)
        ctx.report.change(name, "activations", describe(qp), "float32 (quantized inside the model)", True,
                          "float_inputs", f"the model now takes real values scale*(code-zero_point) of the old "
                                          f"grid instead of {qp.dtype} codes")
    return graph
