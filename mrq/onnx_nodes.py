"""What every ONNX import module reads off a node: its attributes, and the name errors give it."""
from __future__ import annotations

import onnx


def node_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def node_where(node: onnx.NodeProto) -> str:
    """The node's name, or its first output where the exporter left the name empty."""
    return node.name or node.output[0]
