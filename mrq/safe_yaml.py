"""YAML with bounds: ``yaml.safe_load`` semantics, refused before construction when a document
nests deeper than :data:`MAX_DEPTH`, expands (through aliases and merge keys) to more than
:data:`MAX_NODES` nodes, or holds an integer of more than :data:`MAX_INT_DIGITS` digits.

Plain ``safe_load`` shares aliased nodes, so a "billion laughs" document loads quickly but every
walk over the result (validation, printing, copying) then visits 10^9 nodes; a merge-key bomb
is expanded at construction itself. Deep nesting ends in a RecursionError or a crash in the
composer, and Python refuses to convert integers of more than 4300 digits with a ValueError.
Here the event stream is checked first (iteratively: no recursion on hostile depth), then the
composed node graph is measured with every alias counted as the copy it stands for, and only
then is the document constructed.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_INT_DIGITS = 100

# libyaml's parser, where PyYAML was built with it, for the one pass over hostile text: it keeps
# its nesting on a heap stack and is ~20x faster than the pure-Python scanner, which reads a
# whole 100,000-deep flow collection ahead before it yields the first event
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_INT_LIKE = re.compile(r"[-+]?[0-9][0-9_]*$|[-+]?0[xob][0-9a-fA-F_]+$")


class YamlLimitError(ValueError):
    """The document exceeds a bound. ``problem`` says which; ``line`` is 1-based or None."""

    def __init__(self, problem: str, line: int | None = None):
        self.problem, self.line = problem, line
        super().__init__(problem + (f" (line {line})" if line else ""))


def _line(mark) -> int | None:
    return mark.line + 1 if mark is not None else None


def _check_events(text: str, max_depth: int, max_int_digits: int) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_EVENT_LOADER):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > max_depth:
                raise YamlLimitError(f"nested more than {max_depth} levels deep",
                                     _line(event.start_mark))
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and not event.style \
                and len(event.value) > max_int_digits and _INT_LIKE.match(event.value):
            # plain style (None from PyYAML's parser, '' from libyaml's): what resolves to an int
            raise YamlLimitError(f"an integer of {len(event.value)} digits (at most "
                                 f"{max_int_digits})", _line(event.start_mark))


def _expanded_size(root: yaml.Node, max_nodes: int) -> None:
    """Raise when the tree the node graph stands for (each alias a full copy) is larger than
    ``max_nodes``. Sizes are memoised per node, so this costs one visit per distinct node;
    the recursion is as deep as the nesting, which :func:`_check_events` bounded."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        sizes[key] = max_nodes + 1   # a cycle (a node that contains its own alias) is unbounded
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        total = min(total, max_nodes + 1)
        sizes[key] = total
        if total > max_nodes:
            raise YamlLimitError(f"expands (through aliases) to more than {max_nodes} nodes",
                                 _line(node.start_mark))
        return total

    size(root)


def load_with_node(text: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES,
                   max_int_digits: int = MAX_INT_DIGITS) -> tuple[yaml.Node | None, Any]:
    """(the composed root node, the constructed document) of ``text``, as ``yaml.compose`` and
    ``yaml.safe_load`` give them, or :class:`YamlLimitError`; syntax errors stay
    ``yaml.YAMLError``."""
    _check_events(text, max_depth, max_int_digits)
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _expanded_size(root, max_nodes)
        return root, loader.construct_document(root)
    finally:
        loader.dispose()


def safe_load(text: str, **limits) -> Any:
    """``yaml.safe_load`` with the bounds of :func:`load_with_node`."""
    return load_with_node(text, **limits)[1]
