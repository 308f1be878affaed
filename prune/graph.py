# AGPL-3.0 License
"""Channel dependency graph, found by running the model once under a TorchFunctionMode.

Every tensor with a channel axis (dim 1) carries a *label* per channel: an element id. Convolutions
create new elements for their output channels; BatchNorm, activations, pooling and upsampling pass
labels through; element-wise add/mul unify the labels of their operands (residuals); cat concatenates
label lists; chunk splits them (and ties the pieces so they stay equal); a depthwise conv passes its
input labels through. Every parameter slice that must go when a channel goes is a *member* of the
element (conv weight rows or input columns, BN vectors, implicit parameters, linear columns).

Unified elements form *channel classes*: removing a class removes all its members. Anything the tracer
does not understand (view, matmul, constant slices, split with fixed sizes, ...) marks the labels it
touches as unprunable and logs the op and the module it ran in: the graph fails closed.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from prune.depgraph import ConvInfo, DependencyGraph, Member, Site

F = torch.nn.functional


_PASS_UNARY = {
    # zero in -> zero out, channels untouched: labels pass through unchanged
    "relu", "relu_", "relu6", "silu", "silu_", "leaky_relu", "leaky_relu_", "hardswish", "hardswish_", "gelu",
    "mish", "elu", "elu_", "tanh", "hardtanh", "hardtanh_", "dropout", "dropout2d", "clone", "contiguous", "detach",
    "float", "half", "double", "bfloat16", "to", "type_as", "cpu", "cuda", "max_pool2d", "avg_pool2d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "max_pool1d", "interpolate", "upsample", "upsample_nearest2d",
    "__neg__", "neg", "abs", "requires_grad_", "max_pool2d_with_indices",
}
# Not zero-preserving: fine only where the op's output is a module's output (masked there).
_SHIFT_UNARY = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "exp", "softplus", "cos"}
_BINARY = {
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "div", "div_", "__truediv__", "__itruediv__",
}
_IGNORE = {
    "size", "dim", "numel", "__len__", "__get__", "__bool__", "__format__", "__repr__", "shape", "is_floating_point",
    "element_size", "stride", "data_ptr", "get_device", "__index__", "__int__", "__float__", "item", "tolist",
    "__eq__", "__ne__", "__hash__", "__setstate__", "__reduce_ex__", "numpy", "__iter__", "is_contiguous",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zeros_like", "ones_like", "empty_like",
}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _flatten(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _flatten(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flatten(y)


class _Tracer(TorchFunctionMode):
    def __init__(self, graph: DependencyGraph, params: dict[int, tuple[str, str]]):
        super().__init__()
        self.g = graph
        self.params = params
        self.labels: dict[int, tuple[torch.Tensor, np.ndarray]] = {}
        self.module_stack: list[str] = []
        self.shifted: dict[int, str] = {}  # tensor id -> op that made masked zeros non-zero
        self.conv_consumers: dict[int, set[str]] = defaultdict(set)

    # --- label bookkeeping
    def get(self, t) -> np.ndarray | None:
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            return None
        rec = self.labels.get(id(t))
        return rec[1] if rec is not None and rec[0] is t else None

    def set(self, t: torch.Tensor, labels: np.ndarray | None) -> None:
        if labels is not None and isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[1] == len(labels):
            self.labels[id(t)] = (t, labels)
            hw = int(np.prod(t.shape[2:])) if t.dim() > 2 else 1
            for e in labels.tolist():
                self.g.act_hw[e] = max(self.g.act_hw[e], hw)

    def where(self) -> str:
        return self.module_stack[-1] if self.module_stack else "<model>"

    def fail(self, func, tensors, reason="") -> None:
        for t in tensors:
            self.g.block(self.get(t), f"unprunable: '{_name(func)}'{reason} in {self.where()}")

    # --- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.handle(func, args, kwargs, out)
        except Exception as e:  # a tracer bug must never break the model; it only blocks pruning there
            self.fail(func, list(_flatten((args, kwargs))), f" (tracer error: {type(e).__name__}: {e})")
        return out

    def handle(self, func, args, kwargs, out) -> None:
        name = _name(func)
        if name in _IGNORE:
            return
        ins = [t for t in _flatten((args, kwargs)) if self.get(t) is not None]
        if name in ("conv2d", "conv_transpose2d"):
            return self.conv(func, args, kwargs, out, transpose=name == "conv_transpose2d")
        if name == "linear":
            return self.linear(args, kwargs, out)
        if name == "batch_norm":
            return self.batch_norm(args, kwargs, out)
        if not ins:
            return
        x = ins[0]
        if name in _PASS_UNARY:
            return self.pass_through(func, args, kwargs, out, x)
        if name in _SHIFT_UNARY:
            self.set(out, self.get(x))
            self.shifted[id(out)] = name
            return
        if name in _BINARY:
            return self.binary(func, args, out)
        if name == "cat":
            return self.cat(func, args, kwargs, out)
        if name == "chunk":
            return self.chunk(func, args, kwargs, out)
        if name == "__getitem__":
            return self.getitem(func, args, out)
        if name in ("view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "expand"):
            return self.reshape(func, x, out)
        if name in ("mean", "sum", "amax", "amin"):
            return self.reduce(func, args, kwargs, out, x)
        self.fail(func, ins)

    # --- op rules
    def conv(self, func, args, kwargs, out, transpose: bool) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)  # same position for both ops
        owner = self.params.get(id(w))
        lab = self.get(x)
        if owner is None:  # a computed weight: nothing to slice
            self.fail(func, [x], " with a non-parameter weight")
            return
        mod, pname = owner
        c_out = out.shape[1]
        c_in = x.shape[1]
        out_dim, in_dim = (1, 0) if transpose else (0, 1)
        kernel = int(np.prod(w.shape[2:]))
        self.g.conv_info[mod] = ConvInfo(
            int(np.prod(out.shape[2:])), int(np.prod(x.shape[2:])), kernel, int(groups), c_out, c_in, "conv")
        depthwise = groups > 1 and groups == c_in == c_out and not transpose
        if depthwise:
            labels = lab if lab is not None else self._persistent(mod, pname, c_out, blocked=True)
        elif groups == 1:
            labels = self._persistent(mod, pname, c_out)
            if lab is not None:
                for p, e in enumerate(lab.tolist()):
                    self.g.attach(e, Member(mod, pname, in_dim, p, "in"))
        elif not transpose:
            # grouped conv: every group must keep the same width, so the k-th input (output) channel of every
            # group is one class; the shared weight column k ties the inputs, the outputs are tied explicitly
            cin_g, cout_g = c_in // groups, c_out // groups
            labels = self._persistent(mod, pname, c_out)
            self.g.unify(labels[cout_g:], np.resize(labels[:cout_g], c_out - cout_g))
            if lab is not None:
                for p, e in enumerate(lab.tolist()):
                    self.g.attach(e, Member(mod, pname, in_dim, p % cin_g, "in"))
        else:
            self.fail(func, [x], f" with groups={groups} (grouped transposed conv)")
            labels = self._persistent(mod, pname, c_out, blocked=True)
        for c, e in enumerate(labels.tolist()):
            self.g.attach(e, Member(mod, pname, out_dim, c, "out"))
            if bias is not None and id(bias) in self.params:
                self.g.attach(e, Member(mod, self.params[id(bias)][1], 0, c, "out"))
        self.set(out, labels)
        if bias is not None:
            self.shifted[id(out)] = "conv bias"  # a removed channel would still output its bias

    def _persistent(self, mod: str, pname: str, n: int, blocked: bool = False) -> np.ndarray:
        """Output elements of a module are created once, so a module called twice shares them."""
        key = (mod, pname)
        if key not in self.g.out_elements or len(self.g.out_elements[key]) != n:
            self.g.out_elements[key] = self.g.new_elements(n)
        labels = self.g.out_elements[key]
        if blocked:
            self.g.block(labels, f"unprunable: outputs of {mod} (grouped conv or unlabeled depthwise input)")
        return labels

    def linear(self, args, kwargs, out) -> None:
        x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        owner = self.params.get(id(w))
        lab = self.get(x)
        if owner is None or x.dim() != 2:
            self.fail(torch.nn.functional.linear, [x], " on a non-2D input or computed weight")
            return
        mod, pname = owner
        self.g.conv_info[mod] = ConvInfo(1, 1, 1, 1, out.shape[1], x.shape[1], "linear")
        if lab is not None:
            for p, e in enumerate(lab.tolist()):
                self.g.attach(e, Member(mod, pname, 1, p, "in"))
        labels = self._persistent(mod, pname, out.shape[1])
        for c, e in enumerate(labels.tolist()):
            self.g.attach(e, Member(mod, pname, 0, c, "out"))
            if bias is not None and id(bias) in self.params:
                self.g.attach(e, Member(mod, self.params[id(bias)][1], 0, c, "out"))
        self.set(out, labels)
        if bias is not None:
            self.shifted[id(out)] = "linear bias"

    def batch_norm(self, args, kwargs, out) -> None:
        x = args[0]
        lab = self.get(x)
        if lab is None:
            return
        names = ("input", "running_mean", "running_var", "weight", "bias")
        tensors = [args[i] if len(args) > i else kwargs.get(names[i]) for i in (1, 2, 3, 4)]
        for t in tensors:
            if t is not None and id(t) in self.params:
                mod, pname = self.params[id(t)]
                self.g.conv_info.setdefault(mod, ConvInfo(int(np.prod(x.shape[2:])), 0, 0, 1, x.shape[1], 0, "bn"))
                for c, e in enumerate(lab.tolist()):
                    self.g.attach(e, Member(mod, pname, 0, c, "out"))
        self.set(out, lab)
        self.shifted[id(out)] = "batch_norm"

    def pass_through(self, func, args, kwargs, out, x) -> None:
        name = _name(func)
        if name == "pad":
            self.fail(func, [x])
            return
        lab = self.get(x)
        if id(x) in self.shifted:
            self.shifted[id(out)] = self.shifted[id(x)]
        for o in _flatten(out):
            if o.dim() >= 2 and o.shape[1] == len(lab):
                self.set(o, lab)

    def binary(self, func, args, out) -> None:
        a, b = (list(args) + [None, None])[:2]
        la, lb = self.get(a), self.get(b)
        name = _name(func)
        if la is not None and lb is not None:
            if len(la) != len(lb) or a.dim() != b.dim():
                self.fail(func, [a, b], " between tensors of different channel counts")
                return
            if name.startswith(("div", "__truediv__", "__itruediv__")):
                self.fail(func, [a, b], " dividing by a channel")
                return
            self.g.unify(la, lb)
            self.set(out, la)
            if id(a) in self.shifted or id(b) in self.shifted:
                self.shifted[id(out)] = "add"
            return
        lab, t, other = (la, a, b) if la is not None else (lb, b, a)
        mult = name.startswith(("mul", "__mul__", "__rmul__", "__imul__"))
        divides_by_other = name.startswith(("div", "__truediv__", "__itruediv__")) and t is a
        if not isinstance(other, torch.Tensor) or other.numel() == 1:
            shifts = not (mult or divides_by_other) and other not in (0, 0.0)
            self.set(out, lab)
            if shifts or id(t) in self.shifted:
                self.shifted[id(out)] = name
            return
        owner = self.params.get(id(other))
        per_channel = other.dim() == t.dim() and other.shape[1] == len(lab) and other.numel() == len(lab)
        if owner is not None and per_channel:  # ImplicitA / ImplicitM style learned offsets or scales
            mod, pname = owner
            for c, e in enumerate(lab.tolist()):
                self.g.attach(e, Member(mod, pname, 1, c, "out"))
            self.set(out, lab)
            if not mult or id(t) in self.shifted:
                self.shifted[id(out)] = name
            return
        if (mult or divides_by_other) and (other.dim() < 2 or other.shape[1] == 1) and other.dim() <= t.dim():
            self.set(out, lab)  # scaling by something channel-independent keeps zeros zero
            if id(t) in self.shifted:
                self.shifted[id(out)] = name
            return
        self.fail(func, [t], " with a tensor that is not a traced channel map")

    def cat(self, func, args, kwargs, out) -> None:
        tensors = list(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        nd = tensors[0].dim()
        dim = dim % nd if nd else dim
        labs = [self.get(t) for t in tensors]
        if dim == 1:
            parts = []
            for t, lab in zip(tensors, labs):
                if lab is None:
                    lab = self.g.new_elements(t.shape[1])
                    self.g.block(lab, f"unprunable: untraced input to cat in {self.where()}")
                parts.append(lab)
            self.set(out, np.concatenate(parts))
            if any(id(t) in self.shifted for t in tensors):
                self.shifted[id(out)] = "cat"
            return
        known = [lab for lab in labs if lab is not None]
        if len(known) == len(tensors) and all(len(k) == len(known[0]) for k in known):
            for k in known[1:]:
                self.g.unify(known[0], k)
            self.set(out, known[0])
            return
        self.fail(func, tensors, f" along dim {dim}")

    def chunk(self, func, args, kwargs, out) -> None:
        x = args[0]
        lab = self.get(x)
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        dim = dim % x.dim()
        pieces = list(out)
        if dim != 1:
            for p in pieces:
                self.set(p, lab)
            return
        sizes = [p.shape[1] for p in pieces]
        if len(set(sizes)) != 1:
            self.fail(func, [x], " into unequal pieces")
            return
        n = sizes[0]
        for k in range(1, len(pieces)):  # equal pieces must stay equal: prune position i in every piece
            self.g.unify(lab[:n], lab[k * n : (k + 1) * n])
        for k, p in enumerate(pieces):
            self.set(p, lab[k * n : (k + 1) * n])

    def getitem(self, func, args, out) -> None:
        x, idx = args[0], args[1]
        lab = self.get(x)
        idx = idx if isinstance(idx, tuple) else (idx,)
        # which index applies to dim 1? Ellipsis first means the trailing indices address the last dims
        if idx and idx[0] is Ellipsis:
            n_tail = len(idx) - 1
            touches = x.dim() - n_tail <= 1 and any(not _full(i) for i in idx[1:][: 2 - (x.dim() - n_tail)])
            ok = not touches and all(i is not None for i in idx)
        else:
            ok = len(idx) >= 1 and _full(idx[0]) and (len(idx) < 2 or _full(idx[1]) or idx[1] is Ellipsis)
            ok = ok and all(i is not None and not isinstance(i, torch.Tensor) for i in idx)
        if ok and isinstance(out, torch.Tensor) and out.dim() == x.dim():
            self.set(out, lab)
            if id(x) in self.shifted:
                self.shifted[id(out)] = self.shifted[id(x)]
        else:
            self.fail(func, [x], " (indexing the channel axis)")

    def reshape(self, func, x, out) -> None:
        lab = self.get(x)
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[0] == x.shape[0] and out.shape[1] == len(lab):
            if int(np.prod(out.shape[2:])) == int(np.prod(x.shape[2:])) and (
                out.dim() == x.dim() or int(np.prod(x.shape[2:])) == 1
            ):
                self.set(out, lab)  # same layout (e.g. flatten of N,C,1,1 to N,C)
                return
        self.fail(func, [x])

    def reduce(self, func, args, kwargs, out, x) -> None:
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        dims = [d % x.dim() for d in dims]
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dims and 0 not in dims and 1 not in dims and (keep or all(d >= 2 for d in dims)):
            self.set(out, self.get(x))
            return
        self.fail(func, [x])


def _full(i) -> bool:
    return isinstance(i, slice) and i.start is None and i.stop is None and i.step is None


def trace(model: nn.Module, example: torch.Tensor) -> DependencyGraph:
    """Run `model(example)` once and build its channel dependency graph."""
    graph = DependencyGraph()
    params: dict[int, tuple[str, str]] = {}
    for mname, m in model.named_modules():
        for pname, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            params[id(p)] = (mname, pname)
    tracer = _Tracer(graph, params)
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def pre(m, _inp):
        tracer.module_stack.append(names.get(m, "?"))

    def post(m, _inp, out):
        name = tracer.module_stack.pop() if tracer.module_stack else names.get(m, "?")
        o = out if isinstance(out, torch.Tensor) else None
        if o is None:
            return
        lab = tracer.get(o)
        if lab is None:
            return
        if id(o) in tracer.shifted:
            graph.sites.append(Site(name, lab))  # masking here zeroes what BN/offset/bias made non-zero
            tracer.shifted.pop(id(o), None)

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            out = model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for t in _flatten(out):
        graph.block(tracer.get(t), "unprunable: channels of the model outputs (detection head outputs)")
    # masked zeros made non-zero by an op whose output is not a module's output cannot be masked: block them
    for tid, opname in tracer.shifted.items():
        rec = tracer.labels.get(tid)
        if rec is not None:
            graph.block(rec[1], f"unprunable: '{opname}' outside a maskable module output")
    graph.sites = _dedupe_sites(graph)
    return graph


def _dedupe_sites(graph: DependencyGraph) -> list[Site]:
    seen, out = set(), []
    for s in graph.sites:
        key = (s.module, tuple(s.labels.tolist()))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
