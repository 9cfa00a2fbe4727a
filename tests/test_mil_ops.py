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
from halfsim.metrics import rel_l2  # noqa: E402

RNG = np.random.default_rng(7)
X = RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)
W = {k: RNG.standard_normal(s).astype(np.float32) for k, s in {
    "conv": (6, 4, 3, 3), "conv_b": (6,), "conv_g": (6, 2, 3, 3), "conv_e": (5, 4, 2, 2), "convt": (4, 3, 3, 3),
    "mean": (4,), "gamma": (4,), "beta": (4,), "ln_g": (8, 8), "ln_b": (8, 8), "lin": (5, 64), "lin_b": (5,),
}.items()}
VAR = RNG.uniform(0.5, 2.0, 4).astype(np.float32)


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
    return {k: v.numpy() for k, v in r.items()}


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
        return tuple(o)
    return prog


# Output names of the split ops are generated by the builder: map them to the reference keys.
_SPLITS = {"split_ab": ("split_a", "split_b"), "split_cd": ("split_c", "split_d")}


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
        if want.dtype.kind == "f":
            assert rel_l2(got[k], want) <= 3e-3, (k, rel_l2(got[k], want))
        else:  # argmax of fp16-rounded values: ties may move, but almost never
            assert np.mean(got[k] != want) <= 0.05, k
    fp16 = [t for t, v in res.observed.items() if isinstance(v, np.ndarray) and v.dtype == np.float16]
    assert len(fp16) > 40
    declared = {o["name"]: o["dtype"] for o in coreml.fp16_ops(saved["FLOAT16"])}
    assert {declared[t] for t in fp16 if t in declared} == {"fp16"}
