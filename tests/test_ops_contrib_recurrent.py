"""com.microsoft DynamicQuantizeLSTM against ONNX Runtime. Its per-step uint8 quantization of
the hidden state turns any float difference into flipped roundings (errors ~1e-3), so the
default tolerances of check_op demand ORT's numerics bit for bit in practice."""

import numpy as np
import pytest

import halfsim
from halfsim.errors import HalfsimError
from halfsim.kernels import u8s8
from halfsim.ops import contrib_recurrent as cr
from opcheck import check_op, feeds_of, make_model, run_ort

MS = "com.microsoft"


def _inputs(rng, T=6, B=3, I=5, H=8, nd=1, *, wdt=np.int8, per_col=False, bias=True, lens=None, init=True,
            peep=False, x_scale=1.0):
    def q(shape):
        if wdt == np.int8:
            return rng.integers(-128, 128, shape).astype(np.int8)
        return rng.integers(0, 256, shape).astype(np.uint8)

    sshape = (nd, 4 * H) if per_col else (nd,)

    def zp():
        if wdt == np.int8:
            return np.zeros(sshape, np.int8)
        return np.full(sshape, rng.integers(100, 156), np.uint8)  # per-column zero points are one value

    def scales():
        return (rng.uniform(0.5, 1.5, sshape) * 0.1 / 127).astype(np.float32)

    f = lambda *s, k=0.5: (rng.standard_normal(s) * k).astype(np.float32)  # noqa: E731
    return [f(T, B, I, k=x_scale), q((nd, I, 4 * H)), q((nd, H, 4 * H)),
            f(nd, 8 * H, k=0.3) if bias else None,
            None if lens is None else np.asarray(lens, np.int32),
            f(nd, B, H) if init else None, f(nd, B, H) if init else None,
            f(nd, 3 * H, k=0.3) if peep else None,
            scales(), zp(), scales(), zp()]


def _check(ins, **attrs):
    H = ins[2].shape[1]
    return check_op("DynamicQuantizeLSTM", ins, dict(hidden_size=H, **attrs), n_outputs=3, domain=MS,
                    initializers=(1, 2))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("wdt", [np.int8, np.uint8])
@pytest.mark.parametrize("per_col", [False, True])
def test_directions_dtypes_scales(direction, wdt, per_col):
    rng = np.random.default_rng(hash((direction, wdt.__name__, per_col)) % 2**32)
    nd = 2 if direction == "bidirectional" else 1
    _check(_inputs(rng, nd=nd, wdt=wdt, per_col=per_col), direction=direction)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_sequence_lens(direction):
    rng = np.random.default_rng(7)
    nd = 2 if direction == "bidirectional" else 1
    # max length < T: only X[:5] sets the input scale; a zero length row too.
    _check(_inputs(rng, T=7, B=4, nd=nd, lens=[5, 2, 0, 3]), direction=direction)
    _check(_inputs(rng, T=7, B=3, nd=nd, lens=[7, 1, 4], wdt=np.uint8), direction=direction)


def test_peepholes_coupled_gate_clip_no_state():
    rng = np.random.default_rng(11)
    _check(_inputs(rng, nd=2, peep=True), direction="bidirectional")
    _check(_inputs(rng, peep=True, init=False, bias=False), input_forget=1)
    _check(_inputs(rng, x_scale=3.0), clip=0.7)


def test_other_activations():
    rng = np.random.default_rng(12)
    _check(_inputs(rng), activations=["HardSigmoid", "Tanh", "Relu"], activation_alpha=[0.3],
           activation_beta=[0.4])


def test_saturating_products():
    """Inputs at the ends of the ranges: every u8·s8 pair of products can exceed int16 (where
    this host's ORT saturates them) and larger hidden sizes cross float32's exact range."""
    rng = np.random.default_rng(13)
    ins = _inputs(rng, T=12, B=2, I=64, H=96, nd=2, x_scale=4.0)
    ins[1] = np.where(rng.random(ins[1].shape) < 0.5, -128, 127).astype(np.int8)
    _check(ins, direction="bidirectional")


def test_without_Y_output_steps_in_Y_h():
    """With Y not an output ORT keeps a finished row's last h (not 0) in the buffer whose range
    sets the next step's scale, so Y_h differs from the model with Y; both must match."""
    rng = np.random.default_rng(14)
    ins = _inputs(rng, T=8, B=3, H=6, lens=[8, 2, 5], init=False)
    ins[0][:, 1] *= 8  # the row that finishes first has the widest h; the others stay small
    ins[0][:, [0, 2]] *= 0.1
    m_all = make_model("DynamicQuantizeLSTM", ins, dict(hidden_size=6), n_outputs=3, domain=MS)
    m_noy = make_model("DynamicQuantizeLSTM", ins, dict(hidden_size=6), n_outputs=3, domain=MS)
    m_noy.graph.node[0].output[0] = ""
    del m_noy.graph.output[0]
    feeds = feeds_of(m_all, ins)
    want_all, want_noy = run_ort(m_all, feeds), run_ort(m_noy, feeds)
    assert not np.array_equal(want_all[1], want_noy[0])  # the case tells the two apart
    got_all, got_noy = halfsim.load(m_all).run(feeds), halfsim.load(m_noy).run(feeds)
    for got, want, names in ((got_all, want_all, ["out0", "out1", "out2"]), (got_noy, want_noy, ["out1", "out2"])):
        for n, w in zip(names, want):
            np.testing.assert_allclose(got[n], w, rtol=1e-5, atol=1e-6, err_msg=n)


def test_bad_per_column_zero_point():
    rng = np.random.default_rng(15)
    ins = _inputs(rng, per_col=True)
    ins[9] = ins[9].copy()
    ins[9][0, 3] = 1  # int8 weights need zero points of 0
    m = make_model("DynamicQuantizeLSTM", ins, dict(hidden_size=8), n_outputs=3, domain=MS, initializers=(1, 2))
    feeds = feeds_of(m, ins)
    with pytest.raises(Exception):
        run_ort(m, feeds)
    with pytest.raises(HalfsimError):
        halfsim.load(m).run(feeds)


# ---------------------------------------------------------------- kernels, no ORT -----------


def test_u8s8_pairs_saturate():
    a = np.array([[255, 255, 1]], np.uint8)
    b = np.array([[127], [127], [-128]], np.int8)
    # 255*127 + 255*127 = 64770 -> 32767; then 1 * -128 alone.
    assert u8s8._u8s8_pairs(a, b)[0, 0] == 32767 - 128


def test_mlas_activations_match_ort():
    """Sigmoid/Tanh ops in ORT run the same MLAS kernels as its LSTM gates: bit for bit."""
    rng = np.random.default_rng(17)
    x = np.concatenate([rng.standard_normal(4000) * 4, rng.uniform(-30, 30, 1000),
                        rng.standard_normal(500) * 1e-4]).astype(np.float32)
    for name, key in (("Sigmoid", "sigmoid"), ("Tanh", "tanh")):
        want = run_ort(make_model(name, [x]), {"in0": x})[0]
        got = cr._EXACT[key](x, 0, 0)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=name)


def test_bit_exact_at_model_scale():
    """ddddocr-like layer (bidirectional, int8, per-tensor scales): ORT's output bit for bit.
    Thousands of per-step uint8 roundings make this sensitive to any 1-ulp difference in the
    gates (MLAS's sigmoid/tanh, fma, the order of float32 operations)."""
    rng = np.random.default_rng(18)
    ins = _inputs(rng, T=24, B=1, I=96, H=128, nd=2, x_scale=2.0)
    # weights, scales and zero points constant as in real models: prepared once per model,
    # the two directions on two threads
    m = make_model("DynamicQuantizeLSTM", ins, dict(hidden_size=128, direction="bidirectional"), n_outputs=3,
                   domain=MS, initializers=(1, 2, 8, 9, 10, 11))
    feeds = feeds_of(m, ins)
    hm = halfsim.load(m)
    for _ in range(2):  # the prepared weights serve every run
        got = hm.run(feeds)
        for k, w in zip(["out0", "out1", "out2"], run_ort(m, feeds)):
            np.testing.assert_array_equal(got[k], w)


@pytest.mark.parametrize("case", ["int8", "uint8", "peep", "coupled_nobias", "lens_no_Y"])
def test_fused_loop_equals_general_path(case, monkeypatch):
    """The numba time loop (plain fp32, default activations) against the numpy step it
    replaces, bit for bit, with the loop switched off (as for a non-finite h)."""
    rng = np.random.default_rng(19)
    kw = dict(T=7, B=3, I=10, H=9, nd=2)  # odd H: the unpaired last product
    attrs = dict(hidden_size=9, direction="bidirectional")
    kw.update({"int8": {}, "uint8": dict(wdt=np.uint8), "peep": dict(peep=True), "coupled_nobias": dict(bias=False),
               "lens_no_Y": dict(lens=[7, 3, 0], init=False)}[case])
    if case == "coupled_nobias":
        attrs["input_forget"] = 1
    ins = _inputs(rng, **kw)
    m = make_model("DynamicQuantizeLSTM", ins, attrs, n_outputs=3, domain=MS, initializers=(1, 2))
    if case == "lens_no_Y":
        m.graph.node[0].output[0] = ""
        del m.graph.output[0]
    feeds = feeds_of(m, ins)
    calls = []
    real = cr._recur_nb
    monkeypatch.setattr(cr, "_recur_nb", lambda *a: calls.append(1) or real(*a))
    fused = halfsim.load(m).run(feeds)
    assert calls  # the loop ran
    monkeypatch.setattr(cr, "_recur_nb", lambda *a: False)
    general = halfsim.load(m).run(feeds)
    for k in general:
        np.testing.assert_array_equal(fused[k].view(np.uint32), general[k].view(np.uint32), err_msg=k)


def test_non_finite_hidden_state_falls_back():
    rng = np.random.default_rng(20)
    ins = _inputs(rng, T=4, B=2, H=6)
    ins[5][0, 1, 2] = np.nan  # initial h
    m = make_model("DynamicQuantizeLSTM", ins, dict(hidden_size=6), n_outputs=3, domain=MS, initializers=(1, 2))
    got = halfsim.load(m).run(feeds_of(m, ins))
    assert np.isfinite(got["out0"][:, 0, 0]).all()  # the batch row without NaN stays finite


@pytest.mark.skipif(not u8s8._PACKED, reason="the vpmaddubsw kernel runs on AVX2 hosts without VNNI only")
@pytest.mark.parametrize("m,k,n", [(1, 512, 2048), (3, 7, 21), (2, 1, 5), (4, 33, 16)])
def test_packed_u8s8_kernel_equals_the_pair_loop(m, k, n):
    # Odd K (last row pairs with zeros), N off the 16-lane grid, and rows/weights at the
    # extremes so that pairs saturate both ways; the scalar pair loop is the oracle, itself
    # checked against ORT's LSTM above.
    rng = np.random.default_rng(k * n)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    a[0, :2], b[:2, 0] = 255, 127
    if k >= 2:
        b[:2, -1] = -128
    want = u8s8._u8s8_pairs(a, b)
    got = u8s8._u8s8_pairs(a, b, u8s8._pack_pairs(b))
    np.testing.assert_array_equal(got, want)
    # and against the definition in int64 numpy: saturated adjacent pairs, then a plain sum
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    pad = k % 2
    ap = np.pad(a64, ((0, 0), (0, pad))).reshape(m, -1, 2)
    bp = np.pad(b64, ((0, pad), (0, 0))).reshape(-1, 2, n)
    pairs = ap[:, :, 0, None] * bp[None, :, 0, :] + ap[:, :, 1, None] * bp[None, :, 1, :]
    if k >= 2:  # both saturations exercised
        assert (pairs > 32767).any() and (pairs < -32768).any()
    np.testing.assert_array_equal(got, np.clip(pairs, -32768, 32767).sum(axis=1))


@pytest.mark.parametrize("special", ["all_nan", "one_nan", "one_inf", "all_neg_inf"])
def test_nan_and_inf_input_as_ort(special):
    # ORT's biased gate clamp turns a NaN pre-activation into +FLT_MAX (the gate saturates), and
    # an inf in X makes the input scale inf: ORT's outputs stay finite where numpy's would be NaN.
    rng = np.random.default_rng(30)
    ins = _inputs(rng, T=4, B=2, H=6)
    x = ins[0].reshape(-1)
    if special == "all_nan":
        x[:] = np.nan
    elif special == "one_nan":
        x[3] = np.nan
    elif special == "one_inf":
        x[3] = np.inf
    else:
        x[:] = -np.inf
    _check(ins)
