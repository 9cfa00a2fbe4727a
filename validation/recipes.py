"""Input recipes: realistic, deterministic inputs for the manifest's models, prepared the way the
package that ships each model prepares them (rendered text for OCR, a synthesized voiced signal
for the audio models, real file bytes for magika, a real photograph for the detectors, WordPiece
token ids for the transformer). No zeros-or-noise stand-ins except where the real pipeline
itself starts from zeros (recurrent states at the start of a stream).

Each recipe takes the ModelProto (to read input names, dtypes and declared shapes) and returns
feeds by input name."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from PIL import Image, ImageDraw, ImageFont

Recipe = Callable[[onnx.ModelProto], dict[str, np.ndarray]]
RECIPES: dict[str, Recipe] = {}

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
SR = 16000


def recipe(name: str):
    def deco(fn: Recipe) -> Recipe:
        RECIPES[name] = fn
        return fn
    return deco


def declared_inputs(model: onnx.ModelProto) -> list[tuple[str, np.dtype, list]]:
    """(name, dtype, dims) of the graph inputs that are not initializers; dims hold ints for
    fixed sizes and None for symbolic ones."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        out.append((vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    return out


def build_inputs(recipe_name: str, model: onnx.ModelProto | str | os.PathLike) -> dict[str, np.ndarray]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model), load_external_data=False)
    try:
        fn = RECIPES[recipe_name]
    except KeyError:
        raise KeyError(f"unknown input recipe {recipe_name!r} (have: {', '.join(sorted(RECIPES))})") from None
    feeds = fn(model)
    names = {n for n, _, _ in declared_inputs(model)}
    if set(feeds) != names:
        raise ValueError(f"recipe {recipe_name!r} produced inputs {sorted(feeds)}, the model declares {sorted(names)}")
    return feeds


# ---------------------------------------------------------------- images -------------------
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def render_text(lines: list[str], size: int = 28, pad: int = 10, fg=(20, 20, 20),
                bg=(255, 255, 255), spacing: float = 1.6) -> Image.Image:
    """Lines of text on a plain background, cropped to the text plus `pad` pixels."""
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    boxes = [probe.textbbox((0, 0), ln, font=font) for ln in lines]
    w = max(b[2] for b in boxes) + 2 * pad
    step = int(size * spacing)
    h = step * (len(lines) - 1) + max(b[3] for b in boxes) + 2 * pad
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for i, ln in enumerate(lines):
        d.text((pad, pad + i * step), ln, font=font, fill=fg if i % 2 == 0 else (30, 40, 150))
    return img


def _bgr_chw(img: Image.Image) -> np.ndarray:
    """HWC RGB uint8 -> CHW float32 in BGR order (the packages read images with OpenCV)."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)[:, :, ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def photo() -> Image.Image:
    """A real photograph: matplotlib's bundled sample (Grace Hopper, 512x600). Falls back to a
    drawn scene with a face-like figure if the sample data is not installed."""
    try:
        import matplotlib
        p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if p.exists():
            return Image.open(p).convert("RGB")
    except Exception:
        pass
    img = Image.new("RGB", (512, 600), (90, 110, 140))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 420, 512, 600), fill=(40, 40, 60))
    d.ellipse((170, 120, 340, 330), fill=(225, 185, 160))
    d.rectangle((150, 330, 360, 600), fill=(30, 30, 50))
    d.ellipse((210, 190, 235, 210), fill=(40, 30, 30))
    d.ellipse((275, 190, 300, 210), fill=(40, 30, 30))
    d.arc((220, 240, 290, 290), 20, 160, fill=(120, 40, 40), width=4)
    return img


def _ocr_norm(img: Image.Image, h: int, w: int) -> np.ndarray:
    """rapidocr's resize_norm_img: keep the aspect ratio at height h, width at most w,
    (x/255 - 0.5)/0.5, zero padding on the right; CHW float32."""
    ratio = img.width / img.height
    rw = min(w, int(np.ceil(h * ratio)))
    a = _bgr_chw(img.resize((rw, h), Image.BILINEAR)) / 255.0
    a = (a - 0.5) / 0.5
    out = np.zeros((3, h, w), np.float32)
    out[:, :, :rw] = a
    return out


@recipe("ocr_det")
def ocr_det(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """A small document: three lines of text, resized to multiples of 32 and normalized with
    the ImageNet mean/std as rapidocr's DBNet preprocessing does."""
    img = render_text(["Invoice 2024-117: 3 x FP16 kernels", "Total due: 1,284.50 EUR",
                       "halfsim validates ONNX models"], size=26)
    h = max(32, int(round(img.height / 32)) * 32)
    w = max(32, int(round(img.width / 32)) * 32)
    a = np.asarray(img.resize((w, h), Image.BILINEAR).convert("RGB"), np.float32)[:, :, ::-1] / 255.0
    a = (a - _IMAGENET_MEAN) / _IMAGENET_STD
    name = declared_inputs(model)[0][0]
    return {name: np.ascontiguousarray(a.transpose(2, 0, 1)[None].astype(np.float32))}


@recipe("ocr_rec")
def ocr_rec(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """One cropped text line at height 48, width 320 (rapidocr's rec_img_shape)."""
    img = render_text(["Total due: 1,284.50 EUR"], size=30, pad=4)
    ratio = img.width / img.height
    w = max(320, int(np.ceil(48 * ratio)))
    name = declared_inputs(model)[0][0]
    return {name: _ocr_norm(img, 48, w)[None]}


@recipe("ocr_cls")
def ocr_cls(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Two text-line crops, upright and upside down (what the direction classifier decides
    between), at 3x48x192."""
    img = render_text(["FP16 drift 3.2e-3"], size=30, pad=4)
    batch = np.stack([_ocr_norm(img, 48, 192), _ocr_norm(img.rotate(180), 48, 192)])
    name = declared_inputs(model)[0][0]
    return {name: batch}


@recipe("photo_320")
def photo_320(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """NudeNet's preprocessing of a real photograph: pad bottom/right to a square with black,
    resize to 320x320, RGB, x/255, NCHW."""
    img = photo()
    s = max(img.size)
    sq = Image.new("RGB", (s, s), (0, 0, 0))
    sq.paste(img, (0, 0))
    a = np.asarray(sq.resize((320, 320), Image.BILINEAR), np.float32) / 255.0
    name = declared_inputs(model)[0][0]
    return {name: np.ascontiguousarray(a.transpose(2, 0, 1)[None])}


@recipe("captcha_det")
def captcha_det(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """A click-captcha: a photo background with large coloured characters, letterboxed into
    416x416 with grey (114) padding, BGR 0..255 as ddddocr's detector expects."""
    name, _, dims = declared_inputs(model)[0]
    H, W = (dims[2] or 416), (dims[3] or 416)
    bg = photo().resize((344, 200), Image.BILINEAR)
    d = ImageDraw.Draw(bg)
    font = _font(44)
    for ch, xy, col in [("K", (30, 40), (250, 220, 40)), ("7", (120, 110), (240, 60, 60)),
                        ("Q", (200, 30), (60, 230, 120)), ("m", (270, 120), (80, 160, 255))]:
        d.text(xy, ch, font=font, fill=col, stroke_width=2, stroke_fill=(0, 0, 0))
    r = min(H / bg.height, W / bg.width)
    rs = bg.resize((int(bg.width * r), int(bg.height * r)), Image.BILINEAR)
    canvas = np.full((H, W, 3), 114, np.uint8)
    canvas[:rs.height, :rs.width] = np.asarray(rs)
    a = canvas[:, :, ::-1].astype(np.float32).transpose(2, 0, 1)
    return {name: np.ascontiguousarray(a[None])}


@recipe("captcha_ocr")
def captcha_ocr(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """A text captcha (characters on a speckled background with strike lines), grey, height 64,
    width in proportion, x/255: ddddocr's default preprocessing."""
    rng = np.random.default_rng(7)
    img = render_text(["x7Kp3"], size=40, pad=8, bg=(235, 230, 215))
    a = np.asarray(img, np.float32)
    a += rng.normal(0, 12, a.shape[:2])[:, :, None]
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.line((0, img.height * 0.6, img.width, img.height * 0.35), fill=(90, 90, 90), width=2)
    d.arc((10, 5, img.width - 10, img.height * 2), 190, 330, fill=(60, 100, 60), width=2)
    w = int(img.width * (64 / img.height))
    g = np.asarray(img.resize((w, 64), Image.BILINEAR).convert("L"), np.float32) / 255.0
    name = declared_inputs(model)[0][0]
    return {name: g[None, None]}


# ---------------------------------------------------------------- audio --------------------
def voiced_signal(seconds: float = 0.25, f0: float = 118.0, seed: int = 0, snr_db: float = 30.0,
                  noise: str = "white") -> np.ndarray:
    """A vowel-like voiced signal at 16 kHz: a Rosenberg glottal pulse train with slight
    vibrato and jitter, through three formant resonators (/a/: 730, 1090, 2440 Hz), plus
    noise at `snr_db` (white, or 'babble': low-passed, amplitude-modulated noise)."""
    from scipy.signal import lfilter
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f = f0 * (1 + 0.02 * np.sin(2 * np.pi * 5.0 * t)) * (1 + 0.004 * rng.standard_normal(n))
    phase = np.cumsum(f) / SR % 1.0
    op, cl = 0.4, 0.16  # opening and closing fractions of the period
    g = np.where(phase < op, 0.5 * (1 - np.cos(np.pi * phase / op)),
                 np.where(phase < op + cl, np.cos(np.pi * (phase - op) / (2 * cl)), 0.0))
    x = np.diff(g, prepend=0.0)  # radiation: differentiated glottal flow
    for fc, bw in [(730, 90), (1090, 110), (2440, 170)]:
        r = np.exp(-np.pi * bw / SR)
        a = [1.0, -2 * r * np.cos(2 * np.pi * fc / SR), r * r]
        x = lfilter([1.0 - r], a, x)
    x *= 0.5 / np.max(np.abs(x))
    nz = rng.standard_normal(n)
    if noise == "babble":
        nz = lfilter([0.2], [1, -0.8], nz) * (1 + 0.5 * np.sin(2 * np.pi * 3.1 * t))
    nz *= np.sqrt(np.mean(x ** 2) / np.mean(nz ** 2)) * 10 ** (-snr_db / 20)
    return (x + nz).astype(np.float32)


def _state_zeros(dims: list, dtype: np.dtype) -> np.ndarray:
    return np.zeros([d if d else 1 for d in dims], dtype)


@recipe("vad_chunk")
def vad_chunk(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """One Silero VAD step at 16 kHz: 64 samples of context then a 512-sample chunk of voiced
    speech-like signal, a zero recurrent state (the start of a stream) and sr = 16000."""
    sig = voiced_signal(0.25, seed=1)
    start = 1600
    feeds = {}
    for name, dt, dims in declared_inputs(model):
        if dt.kind == "f" and len(dims) == 2:
            feeds[name] = sig[None, start - 64:start + 512].astype(dt)
        elif dt.kind == "f":
            feeds[name] = _state_zeros(dims, dt)
        else:
            feeds[name] = np.array(SR, dtype=dt)
    return feeds


def _noisy_frame() -> np.ndarray:
    return voiced_signal(0.25, f0=165.0, seed=2, snr_db=5.0, noise="babble")[2000:2512]


@recipe("dtln_spectrum")
def dtln_spectrum(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DTLN stage 1: |rfft| (257 bins) of a 512-sample noisy voiced frame; zero LSTM states."""
    mag = np.abs(np.fft.rfft(_noisy_frame().astype(np.float64))).astype(np.float32)
    (n_in, dt, _), (n_st, dts, dims) = declared_inputs(model)
    return {n_in: mag.reshape(1, 1, -1).astype(dt), n_st: _state_zeros(dims, dts)}


@recipe("dtln_frame")
def dtln_frame(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """DTLN stage 2: a 512-sample time-domain frame (the noisy voiced frame, as stage 1 hands
    it on when its mask passes the spectrum through); zero LSTM states."""
    (n_in, dt, _), (n_st, dts, dims) = declared_inputs(model)
    return {n_in: _noisy_frame().reshape(1, 1, -1).astype(dt), n_st: _state_zeros(dims, dts)}


# ---------------------------------------------------------------- bytes and text -----------
MAGIKA = {"beg_size": 1024, "end_size": 1024, "padding_token": 256, "block_size": 4096}


def magika_features(data: bytes, beg_size: int = 1024, end_size: int = 1024,
                    padding_token: int = 256, block_size: int = 4096) -> list[int]:
    """magika 1.0's features v2: the first/last block_size bytes, l/r-stripped of whitespace,
    the first beg_size (padded at the end) and last end_size (padded at the start)."""
    n = min(block_size, len(data))
    beg = list(data[:n].lstrip()[:beg_size])
    beg += [padding_token] * (beg_size - len(beg))
    end = data[len(data) - n:].rstrip()
    end = list(end[max(0, len(end) - end_size):])
    end = [padding_token] * (end_size - len(end)) + end
    return beg + end


def magika_samples() -> list[tuple[str, bytes]]:
    """Real files: Python and reStructuredText sources from the standard library and this
    package's JSON manifest."""
    std = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for rel in ["textwrap.py", "email/architecture.rst", "json/__init__.py"]:
        p = std / rel
        if p.exists():
            out.append((str(p), p.read_bytes()))
    man = Path(__file__).with_name("manifest.json")
    out.append((str(man), man.read_bytes()))
    return out


@recipe("magika_bytes")
def magika_bytes(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    name, dt, dims = declared_inputs(model)[0]
    feats = [magika_features(b, **MAGIKA) for _, b in magika_samples()]
    x = np.array(feats, dtype=dt)
    if dims[-1] and x.shape[1] != dims[-1]:
        raise ValueError(f"magika features have {x.shape[1]} bytes, the model wants {dims[-1]}")
    return {name: x}


# bert-base-uncased WordPiece ids (all-MiniLM-L6-v2's vocabulary), tokenized offline:
#   "a fast numerical emulator predicts how a neural network behaves in half precision ."
#   "the quick brown fox jumps over the lazy dog ."
MINILM_SENTENCES = [
    [101, 1037, 3435, 15973, 7861, 20350, 16014, 2015, 2129, 1037, 15756, 2897, 16582, 2015,
     1999, 2431, 11718, 1012, 102],
    [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102],
]


@recipe("minilm_tokens")
def minilm_tokens(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Two tokenized sentences of different lengths, padded (id 0) to the longer, with their
    attention mask (so the padding mask path runs) and zero token types."""
    L = max(len(s) for s in MINILM_SENTENCES)
    ids = np.zeros((len(MINILM_SENTENCES), L), np.int64)
    mask = np.zeros_like(ids)
    for i, s in enumerate(MINILM_SENTENCES):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    feeds = {}
    for name, dt, _ in declared_inputs(model):
        src = ids if "input_ids" in name else mask if "mask" in name else np.zeros_like(ids)
        feeds[name] = src.astype(dt)
    return feeds
