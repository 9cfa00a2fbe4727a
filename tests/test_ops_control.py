"""If, Loop, Scan, Optional and sequence ops: small multi-node models compared with ORT."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper

import halfsim
from halfsim.errors import HalfsimError
from opcheck import assert_same, run_ort

RNG = np.random.default_rng(7)
F, I64, BOOL = TP.FLOAT, TP.INT64, TP.BOOL
mk = helper.make_node


def vi(name, elem=F, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def seq_vi(name, elem=F):
    return helper.make_tensor_sequence_value_info(name, elem, None)


def graph(nodes, inputs, outputs, name="body", inits=()):
    return helper.make_graph(nodes, name, inputs, outputs, list(inits))


def model(nodes, inputs, outputs, opset=17, inits=()):
    m = helper.make_model(graph(nodes, inputs, outputs, "main", inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def c(name, value):
    return mk("Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(value), name))


def compare(m, feeds, rtol=1e-6, atol=1e-6):
    want = run_ort(m, feeds)
    got = halfsim.load(m).run(feeds)
    names = [o.name for o in m.graph.output]
    for n, w in zip(names, want):
        g = got[n]
        if isinstance(w, list):
            assert isinstance(g, list), f"{n}: expected a sequence"
            assert len(g) == len(w), f"{n}: length {len(g)} != ORT {len(w)}"
            for k, (gi, wi) in enumerate(zip(g, w)):
                assert_same(gi, wi, rtol, atol, what=f"{n}[{k}]")
        elif w is None:
            assert g is None, f"{n}: expected an empty optional"
        else:
            assert_same(g, w, rtol, atol, what=n)
    return got


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ If ----------------------


def _if_model(opset=17):
    # Branches read outer-scope x, y and return different shapes.
    then_g = graph([mk("Add", ["x", "y"], ["t_out"])], [], [vi("t_out")], "then")
    else_g = graph([mk("Concat", ["x", "y"], ["e_out"], axis=0), mk("Neg", ["e_out"], ["e_neg"])],
                   [], [vi("e_neg")], "else")
    nodes = [mk("Mul", ["x0", "two"], ["x"]),
             mk("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
             mk("Sub", ["r", "one"], ["out"])]
    inits = [onnx.numpy_helper.from_array(np.float32(2), "two"), onnx.numpy_helper.from_array(np.float32(1), "one")]
    return model(nodes, [vi("cond", BOOL, []), vi("x0", F, [2, 3]), vi("y", F, [2, 3])], [vi("out")],
                 opset, inits)


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("opset", [11, 13, 16, 19, 21])
def test_if_outer_scope_and_shapes(cond, opset):
    m = _if_model(opset)
    got = compare(m, {"cond": np.array(cond), "x0": f32(2, 3), "y": f32(2, 3)})
    assert got["out"].shape == ((2, 3) if cond else (4, 3))


def test_if_branch_returns_outer_tensor_and_outer_used_later():
    # The then-branch returns the outer tensor itself; x is still needed after the If, and
    # y is read only inside a branch (its last use): neither may be freed too early.
    # ORT rejects a branch output that is an outer-scope name, so its oracle model has an
    # Identity there instead.
    def build(direct):
        then_g = graph([] if direct else [mk("Identity", ["x"], ["xi"])], [], [vi("x" if direct else "xi")], "then")
        else_g = graph([mk("Mul", ["x", "y"], ["p"])], [], [vi("p")], "else")
        nodes = [mk("Relu", ["x_in"], ["x"]), mk("Abs", ["y_in"], ["y"]),
                 mk("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
                 mk("Add", ["r", "x"], ["out"])]
        return model(nodes, [vi("cond", BOOL, [1]), vi("x_in", F, [4]), vi("y_in", F, [4])], [vi("out")])
    for cnd in (True, False):
        feeds = {"cond": np.array([cnd]), "x_in": f32(4), "y_in": f32(4)}
        want = run_ort(build(False), feeds)[0]
        assert_same(halfsim.load(build(True)).run(feeds)["out"], want, what="out")


def test_if_multiple_outputs_silero_like_state():
    # silero-vad style: state carried through If nodes that pick a fresh or updated state.
    then_g = graph([mk("Tanh", ["state"], ["s1"]), mk("Add", ["s1", "x"], ["o1"])], [], [vi("s1"), vi("o1")],
                   "then")
    else_g = graph([mk("Mul", ["state", "x"], ["s2"]), mk("Sigmoid", ["s2"], ["o2"])], [], [vi("s2"), vi("o2")],
                   "else")
    then_b = graph([mk("Identity", ["ns"], ["s3"]), mk("Sub", ["ns", "out1"], ["o3"])], [], [vi("s3"), vi("o3")],
                   "then_b")
    else_b = graph([mk("Neg", ["ns"], ["s4"]), mk("Identity", ["out1"], ["o4"])], [], [vi("s4"), vi("o4")],
                   "else_b")
    nodes = [mk("If", ["c1"], ["ns", "out1"], then_branch=then_g, else_branch=else_g),
             mk("If", ["c2"], ["final_state", "out2"], then_branch=then_b, else_branch=else_b)]
    m = model(nodes, [vi("c1", BOOL, []), vi("c2", BOOL, []), vi("state", F, [2, 8]), vi("x", F, [2, 8])],
              [vi("final_state"), vi("out2")], opset=16)
    for c1 in (True, False):
        for c2 in (True, False):
            compare(m, {"c1": np.array(c1), "c2": np.array(c2), "state": f32(2, 8), "x": f32(2, 8)})


def test_if_with_sequence_output():
    then_g = graph([mk("SequenceConstruct", ["x", "x"], ["s"])], [], [seq_vi("s")], "then")
    else_g = graph([mk("SplitToSequence", ["x"], ["s2"], axis=0)], [], [seq_vi("s2")], "else")
    nodes = [mk("If", ["cond"], ["seq"], then_branch=then_g, else_branch=else_g),
             mk("ConcatFromSequence", ["seq"], ["out"], axis=0)]
    m = model(nodes, [vi("cond", BOOL, []), vi("x", F, [3, 2])], [vi("out")], opset=16)
    for cnd in (True, False):
        compare(m, {"cond": np.array(cnd), "x": f32(3, 2)})


# ------------------------------------------------------------------ Loop --------------------


def _loop_body(with_scan=True, stop_at=None):
    """acc += x (outer scope) * (i+1); cond_out = acc_sum < limit (outer) if stop_at else cond."""
    nodes = [mk("Cast", ["i"], ["i_f"], to=F), c("one_f", np.float32(1)), mk("Add", ["i_f", "one_f"], ["i1"]),
             mk("Mul", ["x", "i1"], ["xi"]), mk("Add", ["acc", "xi"], ["acc_out"])]
    if stop_at:
        nodes += [mk("ReduceSum", ["acc_out"], ["tot"], keepdims=0), mk("Less", ["tot", "limit"], ["cond_out"])]
    else:
        nodes += [mk("Identity", ["cond"], ["cond_out"])]
    outs = [vi("cond_out", BOOL, []), vi("acc_out")]
    if with_scan:
        nodes += [mk("Mul", ["acc_out", "i1"], ["scan_out"])]
        outs.append(vi("scan_out"))
    return graph(nodes, [vi("i", I64, []), vi("cond", BOOL, []), vi("acc", F, None)], outs)


@pytest.mark.parametrize("opset", [11, 13, 16, 19])
@pytest.mark.parametrize("trip", [0, 1, 4])
def test_loop_trip_count_only(opset, trip):
    body = _loop_body()
    nodes = [mk("Loop", ["M", "", "acc0"], ["acc_final", "scans"], body=body)]
    m = model(nodes, [vi("M", I64, []), vi("acc0", F, [2, 3]), vi("x", F, [2, 3])],
              [vi("acc_final"), vi("scans")], opset)
    got = compare(m, {"M": np.array(trip, np.int64), "acc0": f32(2, 3), "x": f32(2, 3)})
    assert got["scans"].shape[0] == trip


def test_loop_condition_only():
    body = _loop_body(stop_at=True)
    nodes = [mk("Loop", ["", "c0", "acc0"], ["acc_final", "scans"], body=body)]
    m = model(nodes, [vi("c0", BOOL, []), vi("acc0", F, [3]), vi("x", F, [3]), vi("limit", F, [])],
              [vi("acc_final"), vi("scans")], 13)
    x = np.abs(f32(3)) + 0.5
    for c0 in (True, False):
        got = compare(m, {"c0": np.array(c0), "acc0": np.zeros(3, np.float32), "x": x,
                          "limit": np.array(20, np.float32)})
    assert got["scans"].shape[0] == 0


@pytest.mark.parametrize("trip", [2, 50])
def test_loop_trip_count_and_condition(trip):
    # Either the trip count (2) or the condition (at 50 trips) ends the loop.
    body = _loop_body(stop_at=True)
    nodes = [mk("Loop", ["M", "c0", "acc0"], ["acc_final", "scans"], body=body)]
    m = model(nodes, [vi("M", I64, []), vi("c0", BOOL, []), vi("acc0", F, [3]), vi("x", F, [3]),
                      vi("limit", F, [])], [vi("acc_final"), vi("scans")], 16)
    got = compare(m, {"M": np.array(trip, np.int64), "c0": np.array(True), "acc0": np.zeros(3, np.float32),
                      "x": np.ones(3, np.float32), "limit": np.array(30, np.float32)})
    assert 0 < got["scans"].shape[0] < 50


def test_loop_multiple_carried_and_scan_outputs_pass_through():
    # Carried values returned straight from body inputs and from the outer scope.
    body = graph([mk("Identity", ["cond"], ["cond_out"]), mk("Add", ["a", "b"], ["a_out"]), mk("Identity", ["w"], ["w_id"]),
                  mk("Unsqueeze", ["a_out", "ax0"], ["scan2"])],
                 [vi("i", I64, []), vi("cond", BOOL, []), vi("a", F, None), vi("b", F, None)],
                 [vi("cond_out", BOOL, []), vi("a_out"), vi("b"), vi("a"), vi("w_id"), vi("scan2")])
    nodes = [c("ax0", np.array([0], np.int64)),
             mk("Loop", ["M", "", "a0", "b0"], ["a_f", "b_f", "s_a", "s_w", "s_2"], body=body)]
    m = model(nodes, [vi("M", I64, [1]), vi("a0", F, [2]), vi("b0", F, [2]), vi("w", F, [2, 2])],
              [vi("a_f"), vi("b_f"), vi("s_a"), vi("s_w"), vi("s_2")], 13)
    compare(m, {"M": np.array([3], np.int64), "a0": f32(2), "b0": f32(2), "w": f32(2, 2)})


def test_loop_with_sequence_carried():
    body = graph([mk("Identity", ["cond"], ["cond_out"]), mk("Cast", ["i"], ["i_f"], to=F),
                  mk("Mul", ["x", "i_f"], ["xi"]), mk("SequenceInsert", ["seq", "xi"], ["seq_out"])],
                 [vi("i", I64, []), vi("cond", BOOL, []), seq_vi("seq")],
                 [vi("cond_out", BOOL, []), seq_vi("seq_out")])
    nodes = [mk("SequenceEmpty", [], ["s0"], dtype=F), mk("Loop", ["M", "", "s0"], ["s_final"], body=body),
             mk("ConcatFromSequence", ["s_final"], ["stacked"], axis=0, new_axis=1),
             mk("SequenceLength", ["s_final"], ["n"])]
    m = model(nodes, [vi("M", I64, []), vi("x", F, [2])],
              [vi("n", I64, []), seq_vi("s_final"), vi("stacked")], 13)  # ORT mis-types n listed after stacked
    compare(m, {"M": np.array(4, np.int64), "x": f32(2)})


def test_nested_loop_inside_if_reads_two_scopes_up():
    # If -> Loop -> body reading x from the main graph and k from the If branch.
    inner = graph([mk("Identity", ["cond"], ["cond_out"]), mk("Mul", ["x", "k"], ["xk"]),
                   mk("Add", ["acc", "xk"], ["acc_out"])],
                  [vi("i", I64, []), vi("cond", BOOL, []), vi("acc", F, None)],
                  [vi("cond_out", BOOL, []), vi("acc_out"), vi("xk")])
    then_g = graph([c("k", np.float32(3)), mk("Loop", ["M", "", "acc0"], ["r", "rs"], body=inner),
                    mk("Identity", ["rs"], ["rsum"])],
                   [], [vi("r"), vi("rsum")], "then")
    else_g = graph([mk("Identity", ["acc0"], ["r2"]), mk("Unsqueeze", ["x", "ax"], ["r3"])], [],
                   [vi("r2"), vi("r3")], "else")
    nodes = [mk("Abs", ["x_in"], ["x"]), c("ax", np.array([0], np.int64)),
             mk("If", ["cond"], ["out", "outs"], then_branch=then_g, else_branch=else_g)]
    m = model(nodes, [vi("cond", BOOL, []), vi("M", I64, []), vi("acc0", F, [4]), vi("x_in", F, [4])],
              [vi("out"), vi("outs")], 13)
    for cnd in (True, False):
        compare(m, {"cond": np.array(cnd), "M": np.array(3, np.int64), "acc0": f32(4), "x_in": f32(4)})


def test_if_inside_loop_body():
    # Odd iterations add x, even ones subtract: the If reads the body's loop-carried value.
    then_g = graph([mk("Add", ["acc", "x"], ["t"])], [], [vi("t")], "then")
    else_g = graph([mk("Sub", ["acc", "x"], ["e"])], [], [vi("e")], "else")
    body = graph([mk("Identity", ["cond"], ["cond_out"]), c("two", np.int64(2)), mk("Mod", ["i", "two"], ["r"]),
                  c("zero", np.int64(0)), mk("Equal", ["r", "zero"], ["even"]),
                  mk("If", ["even"], ["acc_out"], then_branch=then_g, else_branch=else_g)],
                 [vi("i", I64, []), vi("cond", BOOL, []), vi("acc", F, None)],
                 [vi("cond_out", BOOL, []), vi("acc_out"), vi("acc_out")])
    m = model([mk("Loop", ["M", "c0", "a0"], ["a", "hist"], body=body)],
              [vi("M", I64, []), vi("c0", BOOL, []), vi("a0", F, [3]), vi("x", F, [3])], [vi("a"), vi("hist")], 16)
    compare(m, {"M": np.array(5, np.int64), "c0": np.array(True), "a0": f32(3), "x": f32(3)})


def test_loop_trip_and_cond_omitted_is_error():
    body = _loop_body(with_scan=False)
    m = model([mk("Loop", ["", "", "acc0"], ["acc_final"], body=body)], [vi("acc0", F, [2]), vi("x", F, [2])],
              [vi("acc_final")], 13)
    with pytest.raises(HalfsimError, match="never end"):
        halfsim.load(m).run({"acc0": f32(2), "x": f32(2)})


# ------------------------------------------------------------------ Scan --------------------


def _scan_body():
    # state s += x_t * w (w outer scope); scan outputs: s_new and x_t + y_t.
    return graph([mk("Mul", ["xt", "w"], ["xw"]), mk("Add", ["s", "xw"], ["s_out"]),
                  mk("Add", ["xt", "yt"], ["sum_out"]), mk("Identity", ["s_out"], ["s_scan"])],
                 [vi("s", F, None), vi("xt", F, None), vi("yt", F, None)],
                 [vi("s_out"), vi("s_scan"), vi("sum_out")])


@pytest.mark.parametrize("opset", [9, 11, 16, 19])
def test_scan_basic(opset):
    m = model([mk("Scan", ["s0", "x", "y"], ["s_f", "s_all", "sums"], body=_scan_body(), num_scan_inputs=2)],
              [vi("s0", F, [3]), vi("x", F, [5, 3]), vi("y", F, [5, 3]), vi("w", F, [3])],
              [vi("s_f"), vi("s_all"), vi("sums")], opset)
    compare(m, {"s0": f32(3), "x": f32(5, 3), "y": f32(5, 3), "w": f32(3)})


@pytest.mark.parametrize("in_axes,in_dirs,out_axes,out_dirs", [
    ([1, 0], [0, 0], [0, 0], [0, 0]),
    ([1, 0], [1, 0], [1, 0], [0, 1]),
    ([0, 1], [0, 1], [-1, 1], [1, 1]),
    ([-1, 0], [1, 1], [0, -2], [1, 0]),
])
def test_scan_axes_and_directions(in_axes, in_dirs, out_axes, out_dirs):
    # x scans along in_axes[0] of a [3, 4] or [4, 3] tensor; y along in_axes[1].
    xs = [4, 3] if in_axes[0] == 0 else [3, 4]
    ys = [4, 3] if in_axes[1] == 0 else [3, 4]
    body = graph([mk("Mul", ["xt", "w"], ["xw"]), mk("Add", ["s", "xw"], ["s_out"]),
                  mk("Mul", ["xt", "yt"], ["p"]), mk("Identity", ["s_out"], ["s_scan"])],
                 [vi("s", F, None), vi("xt", F, None), vi("yt", F, None)],
                 [vi("s_out"), vi("s_scan"), vi("p")])
    m = model([mk("Scan", ["s0", "x", "y"], ["s_f", "s_all", "prods"], body=body, num_scan_inputs=2,
                  scan_input_axes=in_axes, scan_input_directions=in_dirs, scan_output_axes=out_axes,
                  scan_output_directions=out_dirs)],
              [vi("s0", F, [3]), vi("x", F, xs), vi("y", F, ys), vi("w", F, [3])],
              [vi("s_f"), vi("s_all"), vi("prods")], 16)
    compare(m, {"s0": f32(3), "x": f32(*xs), "y": f32(*ys), "w": f32(3)})


@pytest.mark.parametrize("lens", [None, [5, 2, 1]])
@pytest.mark.parametrize("dirs", [[0, 0], [1, 0], [1, 1]])
def test_scan_opset8_batched(lens, dirs):
    body = _scan_body()
    ins = ["" if lens is None else "lens", "s0", "x", "y"]
    m = model([mk("Scan", ins, ["s_f", "s_all", "sums"], body=body, num_scan_inputs=2, directions=dirs)],
              [vi("lens", I64, [3]), vi("s0", F, [3, 3]), vi("x", F, [3, 5, 3]), vi("y", F, [3, 5, 3]),
               vi("w", F, [3])] if lens is not None else
              [vi("s0", F, [3, 3]), vi("x", F, [3, 5, 3]), vi("y", F, [3, 5, 3]), vi("w", F, [3])],
              [vi("s_f"), vi("s_all"), vi("sums")], 8)
    feeds = {"s0": f32(3, 3), "x": f32(3, 5, 3), "y": f32(3, 5, 3), "w": f32(3)}
    if lens is not None:
        feeds["lens"] = np.array(lens, np.int64)
    compare(m, feeds)


# ------------------------------------------------------------------ Optional ----------------


def test_optional_ops():
    nodes = [mk("Optional", ["x"], ["ox"]), mk("Optional", [], ["oe"], type=helper.make_tensor_type_proto(F, None)),
             mk("OptionalHasElement", ["ox"], ["hx"]), mk("OptionalHasElement", ["oe"], ["he"]),
             mk("OptionalGetElement", ["ox"], ["gx"]), mk("Relu", ["gx"], ["out"])]
    m = model(nodes, [vi("x", F, [3])], [vi("hx", BOOL, []), vi("he", BOOL, []), vi("out")], 18)
    compare(m, {"x": f32(3)})
    # Opset 18: OptionalHasElement with the input omitted is false; GetElement of a tensor passes it.
    m2 = model([mk("OptionalHasElement", [""], ["h"]), mk("OptionalGetElement", ["x"], ["g"])],
               [vi("x", F, [3])], [vi("h", BOOL, []), vi("g")], 18)
    compare(m2, {"x": f32(3)})


def test_optional_get_element_of_empty_is_error():
    nodes = [mk("Optional", [], ["oe"], type=helper.make_tensor_type_proto(F, None)),
             mk("OptionalGetElement", ["oe"], ["g"])]
    m = model(nodes, [vi("x", F, [3])], [vi("g")], 18)
    with pytest.raises(HalfsimError, match="empty optional"):
        halfsim.load(m).run({"x": f32(3)})


# ------------------------------------------------------------------ sequences ---------------


def test_sequence_ops_chain():
    nodes = [mk("SequenceConstruct", ["a", "b", "c"], ["s"]),
             mk("SequenceInsert", ["s", "d"], ["s1"]),             # at the end
             mk("SequenceInsert", ["s1", "a", "p1"], ["s2"]),      # at position 1
             mk("SequenceInsert", ["s2", "b", "pm1"], ["s3"]),     # at position -1
             mk("SequenceAt", ["s3", "pm2"], ["at_m2"]),
             mk("SequenceAt", ["s3", "p0"], ["at_0"]),
             mk("SequenceErase", ["s3"], ["e1"]),                  # last
             mk("SequenceErase", ["e1", "p1"], ["e2"]),
             mk("SequenceErase", ["e2", "pm2"], ["e3"]),
             mk("SequenceLength", ["e3"], ["n"]),
             mk("ConcatFromSequence", ["e3"], ["cat0"], axis=0),
             mk("ConcatFromSequence", ["e3"], ["cat1"], axis=-1),
             mk("ConcatFromSequence", ["e3"], ["stk"], axis=-1, new_axis=1),
             mk("ConcatFromSequence", ["e3"], ["stk0"], axis=0, new_axis=1)]
    ins = [vi(n, F, [2, 3]) for n in "abcd"]
    scal = {"p0": 0, "p1": 1, "pm1": -1, "pm2": -2}
    nodes = [c(k, np.int64(v)) for k, v in scal.items()] + nodes
    outs = [seq_vi("s3"), vi("at_m2"), vi("at_0"), seq_vi("e3"), vi("n", I64, []), vi("cat0"), vi("cat1"),
            vi("stk"), vi("stk0")]
    m = model(nodes, ins, outs, 17)
    compare(m, {n: f32(2, 3) for n in "abcd"})


@pytest.mark.parametrize("split,axis,keepdims", [
    (None, 0, 1), (None, 1, 0), (None, -1, 1), (np.int64(2), 1, 1), (np.int64(3), 1, 1), (np.int64(1), 1, 0),
    (np.array([1, 3, 1], np.int64), 1, 1), (np.array([2, 0, 2], np.int64), 0, 0),
])
def test_split_to_sequence(split, axis, keepdims):
    ins = [vi("x", F, [4, 5])]
    node_in = ["x"]
    nodes = []
    if split is not None:
        nodes.append(c("sp", split))
        node_in.append("sp")
    nodes += [mk("SplitToSequence", node_in, ["s"], axis=axis, keepdims=keepdims),
              mk("SequenceLength", ["s"], ["n"])]
    m = model(nodes, ins, [seq_vi("s"), vi("n", I64, [])], 13)
    compare(m, {"x": f32(4, 5)})


def test_sequence_empty_then_insert_and_int_dtype():
    nodes = [mk("SequenceEmpty", [], ["s0"], dtype=I64), mk("SequenceInsert", ["s0", "k"], ["s1"]),
             mk("SequenceInsert", ["s1", "k", "z"], ["s2"]), c("z", np.int64(0)),
             mk("ConcatFromSequence", ["s2"], ["cat"], axis=0), mk("SequenceEmpty", [], ["empty"])]
    m = model(nodes, [vi("k", I64, [2])], [vi("cat", I64, None), seq_vi("empty")], 13)
    compare(m, {"k": np.array([3, 4], np.int64)})


def test_sequence_map():
    body = graph([mk("Mul", ["e", "w"], ["o"]), mk("Shape", ["e"], ["sh"])],
                 [vi("e", F, None), vi("w", F, None)], [vi("o"), vi("sh", I64, None)])
    nodes = [mk("SplitToSequence", ["x"], ["s"], axis=0, keepdims=0),
             mk("SequenceMap", ["s", "w"], ["s_o", "s_sh"], body=body)]
    m = model(nodes, [vi("x", F, [3, 4]), vi("w", F, [4])], [seq_vi("s_o"), seq_vi("s_sh", I64)], 17)
    compare(m, {"x": f32(3, 4), "w": f32(4)})


def test_sequence_at_out_of_range_is_error():
    nodes = [mk("SequenceConstruct", ["a"], ["s"]), c("p", np.int64(3)), mk("SequenceAt", ["s", "p"], ["o"])]
    m = model(nodes, [vi("a", F, [2])], [vi("o")], 13)
    with pytest.raises(HalfsimError, match="out of range"):
        halfsim.load(m).run({"a": f32(2)})


# ------------------------------------------------------------------ interpreter -------------


def test_downstream_rerun_follows_subgraph_reads():
    # A node whose output is read only inside an If branch and a Loop body: a cone re-run from
    # it must recompute both control-flow nodes.
    then_g = graph([mk("Add", ["a", "b"], ["t"])], [], [vi("t")], "then")
    else_g = graph([mk("Mul", ["a", "b"], ["e"])], [], [vi("e")], "else")
    body = graph([mk("Identity", ["cond"], ["cond_out"]), mk("Add", ["acc", "a"], ["acc_out"])],
                 [vi("i", I64, []), vi("cond", BOOL, []), vi("acc", F, None)],
                 [vi("cond_out", BOOL, []), vi("acc_out")])
    nodes = [mk("Relu", ["x"], ["a"], name="relu"), mk("Abs", ["y"], ["b"], name="abs"),
             mk("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g, name="if"),
             mk("Loop", ["M", "", "b"], ["l"], body=body, name="loop"),
             mk("Neg", ["r"], ["out"], name="neg")]
    m = model(nodes, [vi("cond", BOOL, []), vi("M", I64, []), vi("x", F, [4]), vi("y", F, [4])],
              [vi("out"), vi("l")], 13)
    hm = halfsim.load(m)
    feeds = {"cond": np.array(True), "M": np.array(3, np.int64), "x": f32(4), "y": f32(4)}
    base = hm.run(feeds, keep_trace=True)

    def hook(node, outs):
        if node.label == "relu":
            return [outs[0] + 10]
        return None

    full = hm.run(feeds, hook=hook)
    cone = hm.run(feeds, hook=hook, reuse=base.trace, dirty=["relu"])
    assert not np.allclose(full["out"], base["out"]) and not np.allclose(full["l"], base["l"])
    for k in ("out", "l"):
        np.testing.assert_array_equal(cone[k], full[k])


def test_outer_tensor_freed_only_after_last_subgraph_reader():
    # w is read by two If nodes' branches; freeing it after the first would break the second.
    g1 = graph([mk("Mul", ["x", "w"], ["p"])], [], [vi("p")], "g1")
    g2 = graph([mk("Add", ["x", "w"], ["q"])], [], [vi("q")], "g2")
    h1 = graph([mk("Sub", ["r1", "w"], ["s"])], [], [vi("s")], "h1")
    h2 = graph([mk("Identity", ["r1"], ["u"])], [], [vi("u")], "h2")
    nodes = [mk("Abs", ["w_in"], ["w"]), mk("If", ["c1"], ["r1"], then_branch=g1, else_branch=g2),
             mk("If", ["c2"], ["r2"], then_branch=h1, else_branch=h2)]
    m = model(nodes, [vi("c1", BOOL, []), vi("c2", BOOL, []), vi("x", F, [3]), vi("w_in", F, [3])], [vi("r2")])
    for c1 in (True, False):
        compare(m, {"c1": np.array(c1), "c2": np.array(True), "x": f32(3), "w_in": f32(3)})


def test_sequence_graph_input_and_output():
    nodes = [mk("SequenceInsert", ["s", "x"], ["s1"]), mk("ConcatFromSequence", ["s1"], ["cat"], axis=0)]
    m = model(nodes, [seq_vi("s"), vi("x", F, [2])], [seq_vi("s1"), vi("cat")], 13)
    compare(m, {"s": [f32(2), f32(3)], "x": f32(2)})


def test_if_branch_folds_outer_weights_and_tolerates_a_dead_branch():
    """Body nodes that read only the enclosing graph's weights are folded once per model in
    fp32 schedules (silero's branches concatenate their LSTM weights); a constant node that
    cannot run (here a bad Reshape) in a branch never taken does not break loading."""
    w1, w2 = RNG.standard_normal((3, 4)).astype(np.float32), RNG.standard_normal((2, 4)).astype(np.float32)
    then_g = graph([mk("Concat", ["w1", "w2"], ["wc"], axis=0), mk("MatMul", ["x", "wc"], ["yt"], name="mm")],
                   [], [vi("yt")], "then")
    bad_shape = onnx.numpy_helper.from_array(np.array([7, 7], np.int64), "bad")
    else_g = graph([mk("Reshape", ["w1", "bad"], ["yr"]), mk("Add", ["yr", "x"], ["ye"])], [], [vi("ye")],
                   "else", inits=[bad_shape])
    m = model([mk("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
              [vi("cond", BOOL, []), vi("x", F, [2, 5])], [vi("y")],
              inits=[onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")])
    hm = halfsim.load(m)
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    for _ in range(2):
        got = hm.run({"cond": np.array(True), "x": x})["y"]
        np.testing.assert_allclose(got, x @ np.concatenate([w1, w2]), rtol=1e-6, atol=1e-6)
    assert any("wc" in fg.folded for fg in hm._fast.values())
    with pytest.raises(HalfsimError, match="Reshape"):
        hm.run({"cond": np.array(False), "x": x})


def test_if_condition_error_and_branch_choice_match_the_general_path():
    # fp32 schedules run If without the op's context (interpreter._run_if): the branch pick,
    # values and the condition's one-element error are the node-by-node path's.
    m = halfsim.load(_if_model())
    x0, y = f32(2, 3), f32(2, 3)
    for cond in (np.array(True), np.array([False]), np.array([[1]], dtype=bool), np.array(False)):
        feeds = {"cond": cond.reshape(()), "x0": x0, "y": y}
        np.testing.assert_array_equal(m.run(feeds)["out"], m.run(feeds, observe="all")["out"])
    g = _if_model()
    g.graph.input[0].type.tensor_type.ClearField("shape")  # any shape, so a 2-element condition gets in
    m2 = halfsim.load(g)
    feeds = {"cond": np.array([True, False]), "x0": x0, "y": y}
    with pytest.raises(halfsim.HalfsimError) as fast:
        m2.run(feeds)
    with pytest.raises(halfsim.HalfsimError) as general:
        m2.run(feeds, observe="all")
    assert str(fast.value) == str(general.value) and "one element" in str(fast.value)
