"""Control flow: If, Loop, Scan (opset 8 and 9+), and the Optional ops.

Bodies are compiled halfsim Graphs run with ctx.run_graph, which binds feeds to the body's
inputs and leaves enclosing scopes visible. Optional values are represented as the contained
value itself (array or list) and an empty optional as None. All are registered as data
movement: their outputs are values that body nodes already produced (and rounded)."""
from __future__ import annotations

import numpy as np

from ..errors import ExecutionError, ModelError
from .registry import op


def _scalar_bool(x, what: str) -> bool:
    a = np.asarray(x)
    if a.size != 1:
        raise ExecutionError(f"{what} must hold one element, got shape {list(a.shape)}")
    return bool(a.reshape(-1)[0])


def _feed(graph, values) -> dict:
    """Bind values to a body's inputs by position."""
    names = [vi.name for vi in graph.inputs]
    if len(names) != len(values):
        raise ExecutionError(f"body graph {graph.name!r} has {len(names)} inputs, {len(values)} values were given")
    return dict(zip(names, values))


def _stack(frames: list, graph, out_index: int, axis: int = 0) -> np.ndarray:
    if frames:
        return np.stack(frames, axis=axis)
    # No iteration ran: shape [0, per-iteration shape] when the body declares it statically.
    vi = graph.outputs[out_index]
    dt = vi.dtype or np.dtype(np.float32)
    if vi.shape is not None and all(isinstance(d, int) for d in vi.shape):
        shape = list(vi.shape)
        shape.insert(axis if axis >= 0 else len(shape) + 1 + axis, 0)
        return np.zeros(shape, dtype=dt)
    return np.zeros((0,), dtype=dt)


# ------------------------------------------------------------------ If ----------------------


@op("If", since=1, data_movement=True)
def if_(ctx, cond, *, then_branch, else_branch):
    branch = then_branch if _scalar_bool(cond, "If condition") else else_branch
    return tuple(ctx.run_graph(branch, {}))


# ------------------------------------------------------------------ Loop --------------------


@op("Loop", since=1, data_movement=True)
def loop(ctx, M=None, cond=None, *v_initial, body):
    n_carried = len(v_initial)
    n_out = len(body.outputs)
    if n_out < 1 + n_carried:
        raise ModelError(f"Loop body has {n_out} outputs, needs at least {1 + n_carried}")
    if len(body.inputs) != 2 + n_carried:
        raise ModelError(f"Loop body has {len(body.inputs)} inputs, expected {2 + n_carried}")
    n_scan = n_out - 1 - n_carried
    trip = None
    if M is not None:
        m = np.asarray(M)
        if m.size != 1:
            raise ExecutionError(f"Loop trip count must hold one element, got shape {list(m.shape)}")
        trip = int(m.reshape(-1)[0])
    if trip is None and cond is None:
        raise ExecutionError("Loop with neither a trip count nor a condition would never end")
    keep_going = True if cond is None else _scalar_bool(cond, "Loop condition")
    carried = list(v_initial)
    scans: list[list] = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (trip is None or i < trip):
        feeds = _feed(body, [np.array(i, dtype=np.int64), np.array(keep_going)] + carried)
        outs = ctx.run_graph(body, feeds)
        if cond is not None:  # without a cond input the body's cond output is ignored
            keep_going = _scalar_bool(outs[0], "Loop body condition")
        carried = list(outs[1:1 + n_carried])
        for k in range(n_scan):
            scans[k].append(outs[1 + n_carried + k])
        i += 1
    return tuple(carried + [_stack(scans[k], body, 1 + n_carried + k) for k in range(n_scan)])


# ------------------------------------------------------------------ Scan --------------------


def _norm_axis(a: int, rank: int, what: str) -> int:
    if not -rank <= a < rank:
        raise ExecutionError(f"Scan {what} {a} out of range for rank {rank}")
    return a % rank


def _scan_core(ctx, body, states, scans, in_axes, in_dirs, out_axes, out_dirs):
    """One Scan over unbatched tensors. Returns final states and stacked scan outputs."""
    n_state = len(states)
    lengths = {x.shape[ax] for x, ax in zip(scans, in_axes)}
    if len(lengths) > 1:
        raise ExecutionError(f"Scan inputs disagree on the sequence length: {sorted(lengths)}")
    L = lengths.pop() if lengths else 0
    n_scan_out = len(body.outputs) - n_state
    if n_scan_out < 0:
        raise ModelError(f"Scan body has {len(body.outputs)} outputs, needs at least {n_state}")
    frames: list[list] = [[] for _ in range(n_scan_out)]
    states = list(states)
    for t in range(L):
        slices = []
        for x, ax, d in zip(scans, in_axes, in_dirs):
            slices.append(np.take(x, L - 1 - t if d else t, axis=ax))
        outs = ctx.run_graph(body, _feed(body, states + slices))
        states = list(outs[:n_state])
        for k in range(n_scan_out):
            frames[k].append(outs[n_state + k])
    results = []
    for k in range(n_scan_out):
        fr = frames[k][::-1] if out_dirs[k] else frames[k]
        if fr:
            ax = _norm_axis(out_axes[k], fr[0].ndim + 1, "scan_output_axes")
            results.append(np.stack(fr, axis=ax))
        else:
            results.append(_stack([], body, n_state + k, out_axes[k]))
    return states, results


@op("Scan", since=9, data_movement=True)
def scan9(ctx, *inputs, body, num_scan_inputs, scan_input_axes=None, scan_input_directions=None,
          scan_output_axes=None, scan_output_directions=None):
    m = int(num_scan_inputs)
    if not 0 < m <= len(inputs):
        raise ModelError(f"Scan num_scan_inputs={m} does not fit {len(inputs)} inputs")
    n_state = len(inputs) - m
    states, scans = list(inputs[:n_state]), list(inputs[n_state:])
    n_scan_out = len(body.outputs) - n_state
    in_axes = [_norm_axis(a, x.ndim, "scan_input_axes") for a, x in zip(scan_input_axes or [0] * m, scans)]
    in_dirs = list(scan_input_directions or [0] * m)
    out_axes = list(scan_output_axes or [0] * n_scan_out)
    out_dirs = list(scan_output_directions or [0] * n_scan_out)
    if len(in_axes) != m or len(in_dirs) != m or len(out_axes) != n_scan_out or len(out_dirs) != n_scan_out:
        raise ModelError("Scan axes/directions attributes do not match the number of scan inputs/outputs")
    states, results = _scan_core(ctx, body, states, scans, in_axes, in_dirs, out_axes, out_dirs)
    return tuple(states + results)


@op("Scan", since=8, data_movement=True)
def scan8(ctx, sequence_lens, *inputs, body, num_scan_inputs, directions=None):
    # Opset 8: every input has a leading batch dimension; scan axis is 1; sequence_lens
    # (optional) gives each batch row's length, and scan outputs are zero-padded beyond it.
    m = int(num_scan_inputs)
    n_state = len(inputs) - m
    if m <= 0 or n_state < 0:
        raise ModelError(f"Scan num_scan_inputs={m} does not fit {len(inputs)} inputs")
    dirs = list(directions or [0] * m)
    if len(dirs) != m:
        raise ModelError("Scan directions attribute does not match num_scan_inputs")
    batch = inputs[0].shape[0]
    L = inputs[n_state].shape[1]
    lens = [L] * batch if sequence_lens is None else [int(v) for v in np.asarray(sequence_lens).reshape(-1)]
    if len(lens) != batch or any(not 0 <= v <= L for v in lens):
        raise ExecutionError(f"Scan sequence_lens must hold {batch} values in [0, {L}]")
    n_scan_out = len(body.outputs) - n_state
    finals: list[list] = [[] for _ in range(n_state)]
    outs: list[list] = [[] for _ in range(n_scan_out)]
    for b in range(batch):
        scans = [x[b, :lens[b]] for x in inputs[n_state:]]
        st, res = _scan_core(ctx, body, [x[b] for x in inputs[:n_state]], scans, [0] * m, dirs,
                             [0] * n_scan_out, [0] * n_scan_out)
        for k in range(n_state):
            finals[k].append(st[k])
        for k in range(n_scan_out):
            r = res[k]
            if lens[b] < L:
                pad = np.zeros((L - lens[b],) + r.shape[1:], dtype=r.dtype)
                r = np.concatenate([r, pad]) if r.size or lens[b] else pad
            outs[k].append(r)
    return tuple([np.stack(f) for f in finals] + [np.stack(o) for o in outs])


# ------------------------------------------------------------------ Optional ----------------


@op("Optional", since=15, data_movement=True)
def optional(ctx, x=None, *, type=None):
    if x is None and type is None:
        raise ModelError("Optional without an input needs the 'type' attribute")
    return (x,)


@op("OptionalHasElement", since=15, data_movement=True)
def optional_has_element(ctx, x=None):
    return np.array(x is not None)


@op("OptionalGetElement", since=15, data_movement=True)
def optional_get_element(ctx, x=None):
    if x is None:
        raise ExecutionError("OptionalGetElement on an empty optional")
    return (x,)
