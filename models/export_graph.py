# AGPL-3.0 License
"""The decode tail of an exported detector's graph: the nodes INT8 quantization must leave in floating point
(engine.quantize). The "output convs" are the convs with no further conv downstream (a DFL's fixed conv, scope
`/dfl/`, counts as decode); the tail is everything downstream of them: sigmoid, grid and anchor arithmetic, DFL
and the final Concat of pixel boxes with 0..1 scores. Works on ONNX and OpenVINO graphs alike.
"""

from __future__ import annotations

CONV_TYPES = {"Conv", "Convolution", "ConvTranspose", "GroupConvolution"}
DECODE_SCOPE = "/dfl/"  # ultralytics' DFL: a fixed conv that is part of the box decode


def decode_tail(nodes: list[tuple[str, str, list[str], list[str]]]) -> list[str]:
    """Names of the nodes downstream of the head's output convs.

    Args:
        nodes: (name, op type, input tensor ids, output tensor ids) in topological order.
    Returns:
        node names, in graph order (empty when the graph has no conv).
    """
    consumers: dict[str, list[int]] = {}
    for i, (_, _, ins, _) in enumerate(nodes):
        for t in ins:
            consumers.setdefault(t, []).append(i)
    succ = [sorted({j for t in outs for j in consumers.get(t, [])}) for (_, _, _, outs) in nodes]

    def is_conv(i: int) -> bool:
        return nodes[i][1] in CONV_TYPES and DECODE_SCOPE not in nodes[i][0]

    conv_below = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        conv_below[i] = any(is_conv(j) or conv_below[j] for j in succ[i])
    tail, stack = set(), [i for i in range(len(nodes)) if is_conv(i) and not conv_below[i]]
    while stack:
        for j in succ[stack.pop()]:
            if j not in tail:
                tail.add(j)
                stack.append(j)
    return [nodes[i][0] for i in sorted(tail)]


def onnx_nodes(proto) -> list[tuple[str, str, list[str], list[str]]]:
    return [(n.name, n.op_type, list(n.input), list(n.output)) for n in proto.graph.node]


def openvino_nodes(model) -> list[tuple[str, str, list[str], list[str]]]:
    """An ov.Model's ops as decode_tail wants them (friendly names, which NNCF's IgnoredScope matches)."""
    out = []
    for op in model.get_ordered_ops():
        ins = [f"{i.get_source_output().get_node().get_name()}:{i.get_source_output().get_index()}"
               for i in op.inputs()]
        outs = [f"{op.get_name()}:{k}" for k in range(op.get_output_size())]
        out.append((op.get_friendly_name(), op.get_type_name(), ins, outs))
    return out
