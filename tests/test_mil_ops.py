"""MIL op semantics: one ML program built with coremltools' MIL Builder holds every op under test
(one coremltools conversion per precision keeps this fast), saved as .mlpackage, loaded by
halfsim and compared output by output with torch.nn.functional / numpy written from the MIL
op definitions (pads, masks, gate orders and modes spelled out by hand here)."""
import numpy as np
import pytest

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")
F = torch.nn.functional

import halfsim  # noqa: E402
from halfsim.backends import coreml  # noqa: E402
from halfsim.backends.coreml_ops import quiet_import  # noqa: E402
from halfsim.metrics import max_ulp, rel_l2  # noqa: E402

RNG = np.random.default_rng(7)
X = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
W = {k: RNG.standard_normal(s).astype(np.float32) for k, s in {
    "conv": (6, 4, 3, 3), "conv_b": (6,), "conv_g": (6, 2, 3, 3), "conv_e": (5, 4, 2, 2), "convt": (4, 3, 3, 3),
    "mean": (4,), "gamma": (4,), "beta": (4,), "ln_g": (8, 8), "ln_b": (8, 8), "lin": (5, 64), "lin_b": (5,),
}.items()}
VAR = RNG.uniform(0.5, 2.0, 4).astype(np.float32)
IDX = RNG.integers(0, 4, (1, 2, 8, 8)).astype(np.int32)


def _ct():
    return quiet_import("coremltools")


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _reference() -> dict:
    """Expected outputs, from torch/numpy with the MIL definitions applied by hand."""
    x = _t(X)
    r = {}
    r["bn"] = F.batch_norm(x, _t(W["mean"]), _t(VAR), _t(W["gamma"]), _t(W["beta"]), eps=1e-3)
    r["inorm"] = F.instance_norm(x, weight=_t(W["gamma"]), bias=_t(W["beta"]), eps=1e-5)
    # custom pad [top, bottom, left, right] = [1, 0, 2, 1]; torch's F.pad takes (left, right, top, bottom)
    r["conv_custom"] = F.conv2d(F.pad(x, (2, 1, 1, 0)), _t(W["conv"]), _t(W["conv_b"]), stride=(2, 1), dilation=(1, 2))
    r["conv_same"] = F.conv2d(x, _t(W["conv"]), padding="same", dilation=2)
    r["conv_groups"] = F.conv2d(x, _t(W["conv_g"]), groups=2)
    # even kernel 2, stride 1: one pixel of padding, after (same) or before (same_lower)
    r["conv_same_even"] = F.conv2d(F.pad(x, (0, 1, 0, 1)), _t(W["conv_e"]))
    r["conv_same_lower"] = F.conv2d(F.pad(x, (1, 0, 1, 0)), _t(W["conv_e"]))
    r["convt"] = F.conv_transpose2d(x, _t(W["convt"]), stride=2, padding=1)
    r["maxpool"] = F.max_pool2d(x, 3, 2, padding=1)
    r["avgpool_excl"] = F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
    r["avgpool_incl"] = F.avg_pool2d(x, 2, 2)
    r["rmean"] = x.mean(dim=(2, 3), keepdim=True)
    r["rmax"] = x.amax(dim=1)
    r["rl2"] = x.square().sum(dim=(1,)).sqrt()
    r["rlse"] = torch.logsumexp(x, dim=3)
    r["argmax"] = x.argmax(dim=1).to(torch.int32)
    r["softmax"] = torch.softmax(x, dim=1)
    r["gelu_exact"] = F.gelu(x)
    r["gelu_tanh"] = F.gelu(x, approximate="tanh")
    r["gelu_sigmoid"] = x * torch.sigmoid(1.702 * x)
    r["ln"] = F.layer_norm(x, (8, 8), _t(W["ln_g"]), _t(W["ln_b"]), eps=1e-5)
    r["slice"] = _t(X[0, 1:4:2, :, ::-1].copy())
    r["gather"] = _t(np.take(X, [3, 0, 2], axis=1))
    r["pad_reflect"] = _t(np.pad(X, [(0, 0), (0, 0), (1, 2), (2, 1)], mode="reflect"))
    r["pad_edge"] = _t(np.pad(X, [(0, 0), (0, 0), (1, 2), (2, 1)], mode="edge"))
    r["pad_const"] = _t(np.pad(X, [(0, 0), (0, 0), (1, 2), (2, 1)], constant_values=0.5))
    r["up_nearest"] = _t(X.repeat(2, axis=2).repeat(2, axis=3))
    src = (np.arange(12) / 1.5).astype(int)  # output pixel i reads floor(i / scale)
    r["up_nearest_frac"] = _t(X[:, :, src][:, :, :, src])
    r["up_bilinear"] = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    r["up_bilinear_ac"] = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    r["split_a"], r["split_b"] = x[:, :2], x[:, 2:]
    r["split_c"], r["split_d"] = x[:, :1], x[:, 1:]
    r["concat"] = torch.cat([x, torch.relu(x)], dim=-1)
    flat = x.reshape(1, 4, 64)
    r["mm_ty"] = flat @ flat.transpose(1, 2)
    r["mm_tx"] = flat.transpose(1, 2) @ flat[:, :, :4].reshape(1, 4, 4)
    r["linear"] = flat @ _t(W["lin"]).T + _t(W["lin_b"])
    r["elementwise"] = torch.maximum((x - 0.5) / 3.0, F.leaky_relu(x, 0.1)) + F.elu(x) * torch.tanh(x)
    r["select"] = torch.where(x > 0, x, 0.1 * x)
    r["clip_silu"] = torch.clamp(F.silu(x), -0.2, 0.7)
    r["rsqrt"] = 1.0 / torch.sqrt(x.abs() + 1.0 + 1e-12)
    r["squeeze"] = x.unsqueeze(0).squeeze(0)
    r["not_equal"] = torch.floor(x) != 0
    r["floor_div"] = torch.floor(x / 0.7)
    r["mod"] = torch.remainder(x, 0.7)  # Python's %: the sign of the divisor
    r["exp2"] = 2.0 ** x
    r["relu6"] = torch.clamp(4 * x, 0, 6)
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4]).reshape(1, 4, 1, 1)
    r["prelu"] = torch.where(x > 0, x, alpha * x)
    r["sigmoid_hard"] = torch.clamp(0.3 * x + 0.4, 0, 1)
    r["thresholded_relu"] = torch.where(x > 0.5, x, torch.zeros_like(x))
    r["linear_activation"] = 1.5 * x + 0.25
    r["scaled_tanh"] = 1.2 * torch.tanh(0.8 * x)
    r["l2_norm"] = x / torch.sqrt(x.square().sum() + 1e-6)  # over the last three axes
    r["flatten2d"] = x.reshape(1, -1)
    r["shape"] = torch.tensor([1, 4, 8, 8], dtype=torch.int32)
    r["stack"] = torch.stack([x, -x], dim=1)
    r["tile"] = x.repeat(1, 1, 1, 2)
    r["gather_along_axis"] = _t(np.take_along_axis(X, IDX, axis=1))
    r["gather_nd"] = _t(X[[0, 0], [1, 3]])
    r["topk_values"], topi = torch.topk(x, 3, dim=-1)
    r["topk_indices"] = topi.to(torch.int32)
    r["cumsum"] = torch.cumsum(x, dim=2)
    r["cumsum_rev_excl"] = torch.flip(torch.cumsum(torch.flip(x, [3]), 3), [3]) - x
    xt = x.permute(0, 3, 2, 1)
    r["einsum"] = torch.einsum("nchw,nwhu->nchu", x, xt)
    r["resize_ac"] = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=True)
    r["resize_half"] = F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)
    r["resize_nearest"] = F.interpolate(x, size=(16, 16), mode="nearest")
    r["argmin"] = x.argmin(dim=2, keepdim=True).to(torch.int32)
    r["rprod"] = x.prod(dim=1)
    r["rsum"] = x.sum(dim=(0, 1))
    r["rl1"] = x.abs().sum(dim=3, keepdim=True)
    r["rmin"] = x.amin(dim=(1, 2, 3))
    r["rlogsum"] = torch.log(x.abs().sum(dim=2))
    r["rsumsq"] = x.square().sum(dim=1)
    r["inverse"] = 1.0 / (x.abs() + 1.0 + 1e-4)
    r["log"] = torch.log(x.abs() + 1.0)
    r["logic"] = ~((x > 0) & (x < 1)) | (x > 2)
    u = 0.9 * torch.tanh(x)  # inside the domains of asin, acos, atanh, tan
    for name in ("acos", "asin", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "erf", "exp", "sigmoid"):
        r[f"u_{name}"] = getattr(torch, name)(u)
    for name in ("ceil", "sign", "round"):
        r[f"u_{name}"] = getattr(torch, name)(3 * x)
    r["u_softplus"], r["u_softsign"] = F.softplus(x), F.softsign(x)
    r["u_sqrt"], r["u_square"] = torch.sqrt(x.abs()), x * x
    pos = x.abs() + 1.0
    r["b_equal"] = torch.floor(x) == 0
    r["b_greater_equal"], r["b_less_equal"] = torch.floor(x) >= 0, torch.floor(x) <= 0
    r["b_xor"] = (x > 0) ^ (x > 1)
    r["b_minimum"], r["b_pow"], r["b_div"] = torch.minimum(x, -x), pos ** 1.3, x / pos
    r["convt_out"] = F.conv_transpose2d(x, _t(W["convt"]), stride=2, output_padding=1)
    # CoreML has no bool outputs: coremltools casts them to fp32.
    return {k: v.numpy().astype(np.float32) if v.dtype == torch.bool else v.numpy() for k, v in r.items()}


def _program():
    mb = quiet_import("coremltools.converters.mil").Builder

    # iOS16: conv pad_type same_lower needs it
    @mb.program(input_specs=[mb.TensorSpec(shape=X.shape)], opset_version=_ct().target.iOS16)
    def prog(x):
        o = []
        o.append(mb.batch_norm(x=x, mean=W["mean"], variance=VAR, gamma=W["gamma"], beta=W["beta"], epsilon=1e-3, name="bn"))
        o.append(mb.instance_norm(x=x, gamma=W["gamma"], beta=W["beta"], epsilon=1e-5, name="inorm"))
        o.append(mb.conv(x=x, weight=W["conv"], bias=W["conv_b"], strides=[2, 1], pad_type="custom", pad=[1, 0, 2, 1],
                         dilations=[1, 2], name="conv_custom"))
        o.append(mb.conv(x=x, weight=W["conv"], pad_type="same", dilations=[2, 2], name="conv_same"))
        o.append(mb.conv(x=x, weight=W["conv_g"], groups=2, name="conv_groups"))
        o.append(mb.conv(x=x, weight=W["conv_e"], pad_type="same", name="conv_same_even"))
        o.append(mb.conv(x=x, weight=W["conv_e"], pad_type="same_lower", name="conv_same_lower"))
        o.append(mb.conv_transpose(x=x, weight=W["convt"], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                                   name="convt"))
        o.append(mb.max_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                             name="maxpool"))
        o.append(mb.avg_pool(x=x, kernel_sizes=[3, 3], strides=[2, 2], pad_type="custom", pad=[1, 1, 1, 1],
                             ceil_mode=True, exclude_padding_from_average=True, name="avgpool_excl"))
        o.append(mb.avg_pool(x=x, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", name="avgpool_incl"))
        o.append(mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True, name="rmean"))
        o.append(mb.reduce_max(x=x, axes=[1], name="rmax"))
        o.append(mb.reduce_l2_norm(x=x, axes=[1], name="rl2"))
        o.append(mb.reduce_log_sum_exp(x=x, axes=[3], name="rlse"))
        o.append(mb.reduce_argmax(x=x, axis=1, name="argmax"))
        o.append(mb.softmax(x=x, axis=1, name="softmax"))
        for mode in ("exact", "tanh", "sigmoid"):
            full = {"exact": "EXACT", "tanh": "TANH_APPROXIMATION", "sigmoid": "SIGMOID_APPROXIMATION"}[mode]
            o.append(mb.gelu(x=x, mode=full, name=f"gelu_{mode}"))
        o.append(mb.layer_norm(x=x, axes=[-2, -1], gamma=W["ln_g"], beta=W["ln_b"], epsilon=1e-5, name="ln"))
        # x[0, 1:4:2, :, ::-1]: squeeze dim 0, masks on dims 2 and 3, a negative stride on dim 3
        o.append(mb.slice_by_index(x=x, begin=[0, 1, 5, 3], end=[1, 4, 0, 0], stride=[1, 2, 1, -1],
                                   begin_mask=[False, False, True, True], end_mask=[False, False, True, True],
                                   squeeze_mask=[True, False, False, False], name="slice"))
        o.append(mb.gather(x=x, indices=np.array([3, 0, 2], np.int32), axis=1, name="gather"))
        for mode, tag in (("reflect", "reflect"), ("replicate", "edge"), ("constant", "const")):
            o.append(mb.pad(x=x, pad=[1, 2, 2, 1], mode=mode, constant_val=0.5, name=f"pad_{tag}"))
        o.append(mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=2, name="up_nearest"))
        o.append(mb.upsample_nearest_neighbor(x=x, scale_factor_height=1.5, scale_factor_width=1.5,
                                              name="up_nearest_frac"))
        o.append(mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2, align_corners=False,
                                      name="up_bilinear"))
        o.append(mb.upsample_bilinear(x=x, scale_factor_height=2, scale_factor_width=2, align_corners=True,
                                      name="up_bilinear_ac"))
        o.extend(mb.split(x=x, num_splits=2, axis=1, name="split_ab"))
        o.extend(mb.split(x=x, split_sizes=[1, 3], axis=1, name="split_cd"))
        o.append(mb.concat(values=[x, mb.relu(x=x)], axis=-1, name="concat"))
        flat = mb.reshape(x=x, shape=[1, 4, 64])
        o.append(mb.matmul(x=flat, y=flat, transpose_y=True, name="mm_ty"))
        small = mb.reshape(x=mb.slice_by_size(x=flat, begin=[0, 0, 0], size=[-1, -1, 4]), shape=[1, 4, 4])
        o.append(mb.matmul(x=flat, y=small, transpose_x=True, name="mm_tx"))
        o.append(mb.linear(x=flat, weight=W["lin"], bias=W["lin_b"], name="linear"))
        a = mb.maximum(x=mb.real_div(x=mb.sub(x=x, y=0.5), y=3.0), y=mb.leaky_relu(x=x, alpha=0.1))
        o.append(mb.add(x=a, y=mb.mul(x=mb.elu(x=x, alpha=1.0), y=mb.tanh(x=x)), name="elementwise"))
        o.append(mb.select(cond=mb.greater(x=x, y=0.0), a=x, b=mb.mul(x=x, y=0.1), name="select"))
        o.append(mb.clip(x=mb.silu(x=x), alpha=-0.2, beta=0.7, name="clip_silu"))
        o.append(mb.rsqrt(x=mb.add(x=mb.abs(x=x), y=1.0), epsilon=1e-12, name="rsqrt"))
        o.append(mb.squeeze(x=mb.expand_dims(x=x, axes=[0]), axes=[0], name="squeeze"))
        o.append(mb.not_equal(x=mb.floor(x=x), y=0.0, name="not_equal"))
        o.append(mb.floor_div(x=x, y=0.7, name="floor_div"))
        o.append(mb.mod(x=x, y=0.7, name="mod"))
        o.append(mb.exp2(x=x, name="exp2"))
        o.append(mb.relu6(x=mb.mul(x=x, y=4.0), name="relu6"))
        o.append(mb.prelu(x=x, alpha=np.array([0.1, 0.2, 0.3, 0.4], np.float32), name="prelu"))
        o.append(mb.sigmoid_hard(x=x, alpha=0.3, beta=0.4, name="sigmoid_hard"))
        o.append(mb.thresholded_relu(x=x, alpha=0.5, name="thresholded_relu"))
        o.append(mb.linear_activation(x=x, alpha=1.5, beta=0.25, name="linear_activation"))
        o.append(mb.scaled_tanh(x=x, alpha=1.2, beta=0.8, name="scaled_tanh"))
        o.append(mb.l2_norm(x=x, epsilon=1e-6, name="l2_norm"))
        o.append(mb.flatten2d(x=x, axis=1, name="flatten2d"))
        o.append(mb.shape(x=x, name="shape"))
        o.append(mb.stack(values=[x, mb.mul(x=x, y=-1.0)], axis=1, name="stack"))
        o.append(mb.tile(x=x, reps=[1, 1, 1, 2], name="tile"))
        o.append(mb.gather_along_axis(x=x, indices=IDX, axis=1, name="gather_along_axis"))
        o.append(mb.gather_nd(x=x, indices=np.array([[0, 1], [0, 3]], np.int32), name="gather_nd"))
        o.extend(mb.topk(x=x, k=3, axis=-1, name="topk"))
        o.append(mb.cumsum(x=x, axis=2, name="cumsum"))
        o.append(mb.cumsum(x=x, axis=3, exclusive=True, reverse=True, name="cumsum_rev_excl"))
        o.append(mb.einsum(values=(x, mb.transpose(x=x, perm=[0, 3, 2, 1])), equation="nchw,nwhu->nchu",
                           name="einsum"))
        o.append(mb.resize_bilinear(x=x, target_size_height=12, target_size_width=12, sampling_mode="ALIGN_CORNERS",
                                    name="resize_ac"))
        o.append(mb.resize_bilinear(x=x, target_size_height=12, target_size_width=12,
                                    sampling_mode="UNALIGN_CORNERS", name="resize_half"))
        o.append(mb.resize_nearest_neighbor(x=x, target_size_height=16, target_size_width=16, name="resize_nearest"))
        o.append(mb.reduce_argmin(x=x, axis=2, keep_dims=True, name="argmin"))
        o.append(mb.reduce_prod(x=x, axes=[1], name="rprod"))
        o.append(mb.reduce_sum(x=x, axes=[0, 1], name="rsum"))
        o.append(mb.reduce_l1_norm(x=x, axes=[3], keep_dims=True, name="rl1"))
        o.append(mb.reduce_min(x=x, axes=[1, 2, 3], name="rmin"))
        o.append(mb.reduce_log_sum(x=mb.abs(x=x), axes=[2], name="rlogsum"))
        o.append(mb.reduce_sum_square(x=x, axes=[1], name="rsumsq"))
        o.append(mb.inverse(x=mb.add(x=mb.abs(x=x), y=1.0), name="inverse"))
        o.append(mb.log(x=mb.add(x=mb.abs(x=x), y=1.0), name="log"))
        inside = mb.logical_and(x=mb.greater(x=x, y=0.0), y=mb.less(x=x, y=1.0))
        o.append(mb.logical_or(x=mb.logical_not(x=inside), y=mb.greater(x=x, y=2.0), name="logic"))
        u = mb.mul(x=mb.tanh(x=x), y=0.9)
        for name in ("acos", "asin", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "erf", "exp", "sigmoid"):
            o.append(getattr(mb, name)(x=u, name=f"u_{name}"))
        for name in ("ceil", "sign", "round"):
            o.append(getattr(mb, name)(x=mb.mul(x=x, y=3.0), name=f"u_{name}"))
        o.append(mb.softplus(x=x, name="u_softplus"))
        o.append(mb.softsign(x=x, name="u_softsign"))
        o.append(mb.sqrt(x=mb.abs(x=x), name="u_sqrt"))
        o.append(mb.square(x=x, name="u_square"))
        pos = mb.add(x=mb.abs(x=x), y=1.0)
        fl = mb.floor(x=x)
        o.append(mb.equal(x=fl, y=0.0, name="b_equal"))
        o.append(mb.greater_equal(x=fl, y=0.0, name="b_greater_equal"))
        o.append(mb.less_equal(x=fl, y=0.0, name="b_less_equal"))
        o.append(mb.logical_xor(x=mb.greater(x=x, y=0.0), y=mb.greater(x=x, y=1.0), name="b_xor"))
        o.append(mb.minimum(x=x, y=mb.mul(x=x, y=-1.0), name="b_minimum"))
        o.append(mb.pow(x=pos, y=1.3, name="b_pow"))
        o.append(mb.real_div(x=x, y=pos, name="b_div"))
        o.append(mb.conv_transpose(x=x, weight=W["convt"], strides=[2, 2], pad_type="valid",
                                   output_shape=[1, 3, 18, 18], name="convt_out"))
        return tuple(o)
    return prog


# Output names of the split ops are generated by the builder: map them to the reference keys.
_SPLITS = {"split_ab": ("split_a", "split_b"), "split_cd": ("split_c", "split_d"),
           "topk": ("topk_values", "topk_indices")}


# Outputs that jump (comparisons, rounding, argmax...): elementwise agreement, not rel L2, at fp16.
STEPS = {"floor_div", "mod", "u_ceil", "u_sign", "u_round", "not_equal", "b_equal", "b_greater_equal",
         "b_less_equal", "b_xor", "logic", "thresholded_relu"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("mil_ops")
    prog = _program()
    paths = {}
    for prec in ("FLOAT32", "FLOAT16"):
        paths[prec] = str(d / f"ops_{prec}.mlpackage")
        coreml.convert(prog, compute_precision=prec, minimum_deployment_target=_ct().target.iOS16).save(paths[prec])
    return paths


def _named(model, out: dict) -> dict:
    """Outputs keyed like the reference (the split outputs get builder names)."""
    res = {}
    for name in model.outputs:
        key = name
        for prefix, keys in _SPLITS.items():
            if name.startswith(prefix):
                key = keys[int(name.rsplit("_", 1)[-1])]
        res[key] = out[name]
    return res


def test_every_op_matches_its_definition_at_fp32(saved):
    model = halfsim.load(saved["FLOAT32"])
    labels = [n.label for n in model.nodes]
    assert len(set(labels)) == len(labels)  # bisect and fault injection address nodes by name
    got = _named(model, model.run({"x": X}))
    ref = _reference()
    assert set(got) == set(ref)
    for k, want in ref.items():
        assert got[k].shape == want.shape, k
        assert got[k].dtype == want.dtype, k
        if want.dtype.kind == "f":
            assert rel_l2(got[k], want) <= 1e-5, (k, rel_l2(got[k], want))
        else:
            np.testing.assert_array_equal(got[k], want, err_msg=k)


def test_fp16_program_runs_in_fp16(saved):
    """At FLOAT16 every op computes on fp16 values: outputs stay within fp16 error of the exact
    results, and every intermediate the program declares fp16 holds only fp16 values."""
    model = halfsim.load(saved["FLOAT16"])
    res = model.run({"x": X}, observe="all")
    got = _named(model, res)
    ref = _reference()
    for k, want in ref.items():
        if want.dtype.kind == "f" and k not in STEPS:
            assert rel_l2(got[k], want) <= 3e-3, (k, rel_l2(got[k], want))
        else:  # a step function of fp16-rounded values: a few elements may cross a step
            far = ~np.isclose(got[k].astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2)
            assert np.mean(far) <= 0.05, k
    fp16 = [t for t, v in res.observed.items() if isinstance(v, np.ndarray) and v.dtype == np.float16]
    assert len(fp16) > 40
    declared = {o["name"]: o["dtype"] for o in coreml.fp16_ops(saved["FLOAT16"])}
    assert {declared[t] for t in fp16 if t in declared} == {"fp16"}


# Below iOS17 the FLOAT16 program holds activation parameters (alpha, beta) in fp16 too
# (leaky_relu's 0.1 becomes 0.09998); the preset leaves ONNX attributes exact.
FP16_PARAMS = {"elementwise", "sigmoid_hard"}


def test_fp16_program_equals_coreml_fp16_preset_on_fp32_program(saved):
    """Two routes to the same prediction: the FLOAT16 program run as declared, and the FLOAT32
    program run under the coreml-fp16 preset. Same op placement and roundings: at most a 1-ulp
    fp16 difference (summation order) on every float output but those with fp16 parameters."""
    m16, m32 = halfsim.load(saved["FLOAT16"]), halfsim.load(saved["FLOAT32"])
    a, b = m16.run({"x": X}), m32.run({"x": X}, precision="coreml-fp16")
    assert m16.outputs == m32.outputs
    checked = 0
    for k in m16.outputs:
        if a[k].dtype.kind != "f":
            continue
        ulp = max_ulp(a[k].astype(np.float16), b[k].astype(np.float16), "fp16")
        if k in FP16_PARAMS:
            assert ulp > 1 and rel_l2(a[k], b[k]) < 1e-3, k
        else:
            assert ulp <= 1, (k, ulp)
            checked += 1
    assert checked > 90


def test_builder_program_runs_without_saving():
    """halfsim.mil.load takes a MIL Program as built (no coremltools passes, no file)."""
    from halfsim import mil
    model = mil.load(_program())
    got = _named(model, model.run({"x": X}))
    for k, want in _reference().items():
        assert rel_l2(got[k].astype(np.float32), want.astype(np.float32)) <= 1e-5, k
