"""simaq_train.data.augment: every §4.9 op, its label set, field of view, alignment, determinism
(seed and torch thread count), config validation; the stream passes each window's field of view."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from simaq_factory.errors import BadInput
from simaq_train.config import AugmentConfig, config_from_dict
from simaq_train.data.augment import augment, elastic_field, elastic_std
from simaq_train.data.normalize import fov_mask
from simaq_train.testing import InMemoryVolumes

OFF = dict(flip=0.0, rot90=0.0, elastic_prob=0.0, resized_crop_prob=0.0, intensity=0.0, blur_prob=0.0,
           invert_prob=0.0)
OPS = {  # each op alone, forced on
    "flip": dict(flip=1.0),
    "rot90": dict(rot90=1.0),
    "elastic": dict(elastic_prob=1.0),
    "crop": dict(resized_crop_prob=1.0),
    "brightness": dict(intensity=1.0, contrast=0.0, noise_std=0.0),
    "contrast": dict(intensity=1.0, brightness=0.0, noise_std=0.0),
    "noise": dict(intensity=1.0, brightness=0.0, contrast=0.0),
    "blur": dict(blur_prob=1.0),
    "invert": dict(invert_prob=1.0),
}
ALL = dict(flip=1.0, rot90=1.0, elastic_prob=1.0, resized_crop_prob=1.0, intensity=1.0, blur_prob=1.0,
           invert_prob=1.0)
GEOMETRIC = ("elastic", "crop")
INTENSITY = ("brightness", "contrast", "noise", "blur", "invert")


def only(**kw) -> AugmentConfig:
    return AugmentConfig(**{**OFF, **kw})


def window(n: int = 64, w: int = 7, seed: int = 0, block: int = 8, unlabelled: float = 0.0):
    """A normalised-looking window: N(0, 1) inside the FOV disc (margin 5), exactly 0 outside;
    labels: blocks of classes 0–3 inside (optionally some 255), 255 outside."""
    rng = np.random.default_rng(seed)
    fov = fov_mask((n, n), 5.0)
    img = np.where(fov, rng.standard_normal((w, n, n), dtype=np.float32), np.float32(0.0))
    lab = np.kron(rng.integers(0, 4, (n // block + 1, n // block + 1)), np.ones((block, block)))[:n, :n]
    lab = lab.astype(np.uint8)
    lab[rng.random((n, n)) < unlabelled] = 255
    lab[~fov] = 255
    return img.astype(np.float32), lab, fov


def coloured(n: int = 64, seed: int = 0):
    """Image = its labels (every depth slice), 0 / 255 outside the FOV."""
    _, lab, fov = window(n, seed=seed, block=12)
    img = np.where(fov, lab.astype(np.float32), np.float32(0.0))
    return np.stack([img] * 7), lab, fov


# --- label set, field of view, inputs untouched -------------------------------------------------

@pytest.mark.parametrize("op", list(OPS) + ["all"])
def test_labels_stay_in_the_label_set_and_outside_the_fov_stays_empty(op):
    cfg = AugmentConfig(**ALL) if op == "all" else only(**OPS[op])
    for seed in range(6):
        img, lab, fov = window(seed=seed, unlabelled=0.1)
        img0, lab0 = img.copy(), lab.copy()
        out, olab = augment(img, lab, np.random.default_rng(seed), cfg, fov)
        assert np.array_equal(img, img0) and np.array_equal(lab, lab0)  # inputs untouched
        assert out.dtype == np.float32 and olab.dtype == np.uint8
        assert out.shape == img.shape and olab.shape == lab.shape
        assert set(np.unique(olab).tolist()) <= set(np.unique(lab).tolist()) | {255}
        assert np.all(olab[~fov] == 255)
        outside = out[:, ~fov]
        assert np.array_equal(outside, np.zeros_like(outside)) and not np.signbit(outside).any()
        assert np.isfinite(out).all()


@pytest.mark.parametrize("op", INTENSITY)
def test_intensity_ops_change_nothing_outside_the_fov(op):
    img, lab, fov = window(seed=1)
    img[:, ~fov] = 7.0  # not the data's 0, so that a change would show
    for seed in range(4):
        out, olab = augment(img, lab, np.random.default_rng(seed), only(**OPS[op]), fov)
        assert out[:, ~fov].tobytes() == img[:, ~fov].tobytes()
        assert np.array_equal(olab, lab)
        assert not np.array_equal(out[:, fov], img[:, fov])  # the op did something inside


def test_geometric_ops_reset_the_outside_of_the_fov():
    """A zoomed or warped window has 0 / 255 outside its FOV again, and the FOV moves with flips."""
    img, lab, fov = window(seed=2)
    img[:, ~fov] = 7.0
    for op in GEOMETRIC:
        out, olab = augment(img, lab, np.random.default_rng(0), only(**OPS[op]), fov)
        assert np.all(out[:, ~fov] == 0.0) and np.all(olab[~fov] == 255)
    half = fov.copy()
    half[:, :32] = False  # an off-centre FOV (a training crop at the disc's edge)
    out, olab = augment(img, lab, np.random.default_rng(0), only(flip=1.0, intensity=1.0), half)
    moved = half[::-1, ::-1]
    assert np.array_equal(out[:, ~moved], img[:, ::-1, ::-1][:, ~moved])  # untouched, flipped
    assert not np.array_equal(out[:, moved], img[:, ::-1, ::-1][:, moved])


def test_rot90_rotates_an_off_centre_fov_with_the_window():
    """The FOV turns with the window under rot90 (a centred disc cannot show it): intensity ops
    change only the rotated FOV, outside it the output is the rotated input, untouched."""
    img, lab, fov = window(seed=2)
    img[:, ~fov] = 7.0
    half = fov.copy()
    half[:, :32] = False  # an off-centre FOV (a training crop at the disc's edge)
    turns = set()
    for seed in range(12):
        r = np.random.default_rng(seed)
        r.random(10)  # the decision uniforms come first, then the number of quarter turns
        k = int(r.integers(1, 4))
        turns.add(k)
        out, olab = augment(img, lab, np.random.default_rng(seed), only(rot90=1.0, intensity=1.0), half)
        moved, turned = np.rot90(half, k), np.rot90(img, k, axes=(1, 2))
        assert np.array_equal(olab, np.rot90(lab, k))
        assert np.array_equal(out[:, ~moved], turned[:, ~moved]), k  # untouched, rotated
        assert not np.array_equal(out[:, moved], turned[:, moved]), k
    assert turns == {1, 2, 3}


# --- geometric ops ------------------------------------------------------------------------------

def test_identity_parameters_return_the_input_exactly():
    img, lab, fov = window(seed=3)
    for cfg in (only(elastic_prob=1.0, elastic_alpha=0.0), only(resized_crop_prob=1.0, resized_crop_scale_min=1.0),
                only(flip=0.0, intensity=1.0, brightness=0.0, contrast=0.0, noise_std=0.0)):
        out, olab = augment(img, lab, np.random.default_rng(5), cfg, fov)
        assert out.tobytes() == img.tobytes() and olab.tobytes() == lab.tobytes()
    out, olab = augment(img, lab, np.random.default_rng(5), AugmentConfig(enable=False), fov)
    assert out is img and olab is lab


def test_elastic_field_magnitude_is_in_pixels_whatever_the_window_size():
    """Per-component RMS α / (4·√(3π)·σ) px at 32² and 256² alike (no edge inflation)."""
    alpha, sigma = 120.0, 10.0
    want = elastic_std(alpha, sigma)
    assert want == pytest.approx(0.977, abs=0.002)
    for n, draws in ((32, 200), (256, 12)):
        d = np.stack([elastic_field((n, n), alpha, sigma, np.random.default_rng(k)) for k in range(draws)])
        rms = float(np.sqrt(np.mean(d**2)))
        assert rms == pytest.approx(want, rel=0.12), (n, rms)
        assert abs(float(d.mean())) < 0.15
    # the reference generator's α = 500, σ = 40 (~1 px, §1.11) on a 32² crop: not inflated
    d = np.stack([elastic_field((32, 32), 500.0, 40.0, np.random.default_rng(k)) for k in range(200)])
    assert float(np.sqrt(np.mean(d**2))) == pytest.approx(elastic_std(500.0, 40.0), rel=0.15)
    assert elastic_field((48, 40), alpha, sigma, np.random.default_rng(0)).shape == (2, 48, 40)


def test_elastic_moves_a_ramp_by_the_drawn_field_and_labels_by_nearest():
    n = 64
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    img = np.stack([xx + 100.0 * k for k in range(3)] + [yy])  # every slice warped with one field
    lab = ((xx // 5 + yy // 7) % 4).astype(np.uint8)
    cfg = only(elastic_prob=1.0, elastic_alpha=240.0)
    shifts = []
    for seed in range(8):
        out, olab = augment(img, lab, np.random.default_rng(seed), cfg)
        r = np.random.default_rng(seed)
        r.random(10)  # the decision uniforms come first
        d = elastic_field((n, n), 240.0, 10.0, r)
        # away from the border the warped ramp is the ramp at the displaced position (torch's
        # bicubic, A = −0.75, reproduces a ramp to within ~0.07 of its sub-pixel phase)
        inner = (slice(6, n - 6), slice(6, n - 6))
        assert np.allclose(out[0][inner], (xx + d[1])[inner], atol=0.08)
        assert np.allclose(out[2][inner], (xx + 200.0 + d[1])[inner], atol=0.08)
        assert np.allclose(out[3][inner], (yy + d[0])[inner], atol=0.08)
        sy, sx = np.floor(yy + d[0] + 0.5).astype(int), np.floor(xx + d[1] + 0.5).astype(int)
        ok = (sy >= 0) & (sy < n) & (sx >= 0) & (sx < n)
        assert np.array_equal(olab[ok], lab[sy[ok], sx[ok]]) and np.all(olab[~ok] == 255)
        shifts.append((out[0] - xx)[inner])
    rms = float(np.sqrt(np.mean(np.square(shifts))))
    assert rms == pytest.approx(elastic_std(240.0, 10.0), rel=0.3)  # ~2 px on average
    assert float(np.abs(shifts).max()) > 1.0


def test_elastic_warp_keeps_labelled_pixels_at_the_window_edge_free_of_padding():
    """A crop inside the field of view warped: every pixel that keeps its label keeps the image's
    value (a constant stays constant, no dark rim from zero padding along the crop's edge), and every
    pixel pulled from outside the window is 0 / 255."""
    img = np.full((3, 32, 32), 1.5, dtype=np.float32)
    lab = np.zeros((32, 32), dtype=np.uint8)
    cfg = only(elastic_prob=1.0, elastic_alpha=240.0)
    seen_outside = 0
    for seed in range(40):
        out, olab = augment(img, lab, np.random.default_rng(seed), cfg, np.ones((32, 32), dtype=bool))
        kept = olab == 0
        assert np.allclose(out[:, kept], 1.5, atol=1e-5), seed
        assert np.all(out[:, ~kept] == 0) and set(np.unique(olab)) <= {0, 255}
        seen_outside += int((~kept).sum())
    assert seen_outside > 0  # the warps did pull pixels from outside the window


@pytest.mark.parametrize("op", ["flip", "rot90", "elastic", "crop", "all_geometric"])
def test_geometric_ops_keep_image_and_labels_aligned(op):
    cfg = only(**(OPS[op] if op != "all_geometric" else dict(flip=1.0, elastic_prob=1.0, resized_crop_prob=1.0)))
    for seed in range(6):
        img, lab, fov = coloured(seed=seed)
        out, olab = augment(img, lab, np.random.default_rng(seed), cfg, fov)
        labelled = olab != 255
        if op in ("flip", "rot90"):
            assert np.array_equal(out[3][labelled], olab[labelled].astype(np.float32))
            continue
        # away from class boundaries the (interpolated) image equals the label
        flat = (scipy.ndimage.maximum_filter(olab, 5) == scipy.ndimage.minimum_filter(olab, 5)) & labelled
        assert flat.sum() > 0.2 * labelled.sum()
        agree = np.abs(out[3][flat] - olab[flat]) < 0.25
        assert agree.mean() > 0.99, (op, seed, agree.mean())
        assert (np.rint(out[3][labelled]) == olab[labelled]).mean() > 0.85  # boundaries included
        shifted = np.roll(olab, 3, axis=1)[flat]  # the check has power: a 3 px misalignment fails it
        assert (np.abs(out[3][flat] - shifted) < 0.25).mean() < 0.95


def test_resized_crop_zooms_the_drawn_crop():
    """Labels: exactly the crop drawn from the generator, sampled at pixel centres; image: the
    crop's area average (a stripe pattern's period grows by 1/s)."""
    n = 64
    yy, xx = np.mgrid[0:n, 0:n]
    lab = ((xx // 8) % 2 + 2 * ((yy // 6) % 2)).astype(np.uint8)
    img = np.stack([lab.astype(np.float32)] * 7)
    cfg = only(resized_crop_prob=1.0, resized_crop_scale_min=0.5)
    for seed in range(6):
        out, olab = augment(img, lab, np.random.default_rng(seed), cfg)
        r = np.random.default_rng(seed)
        r.random(10)
        sc = r.uniform(0.5, 1.0)
        c = int(n * sc)
        oy, ox = int(r.integers(0, n - c + 1)), int(r.integers(0, n - c + 1))
        src = oy + ((np.arange(n) + 0.5) * c / n).astype(int), ox + ((np.arange(n) + 0.5) * c / n).astype(int)
        assert np.array_equal(olab, lab[np.ix_(*src)])
        crop = img[:, oy : oy + c, ox : ox + c]
        assert np.isclose(out.mean(), crop.mean(), atol=0.05)  # area: means are (nearly) kept
        runs = np.diff(np.flatnonzero(np.diff(olab[n // 2] % 2)))
        assert np.median(runs) == pytest.approx(8 / sc, abs=1.01)


# --- intensity ops ------------------------------------------------------------------------------

def test_contrast_scales_about_the_fov_mean():
    img, lab, fov = window(seed=4)
    img[:, fov] += 2.0  # a mean far from 0: scaling about 0 would move it
    cfg = only(intensity=1.0, contrast=0.5, brightness=0.0, noise_std=0.0)
    for seed in range(5):
        out, _ = augment(img, lab, np.random.default_rng(seed), cfg, fov)
        m0, m1 = img[:, fov].mean(dtype=np.float64), out[:, fov].mean(dtype=np.float64)
        assert m1 == pytest.approx(m0, abs=1e-5)
        f = np.std(out[:, fov]) / np.std(img[:, fov])
        assert 0.5 <= f <= 1.5 and abs(f - 1.0) > 1e-3
        assert np.allclose(out[:, fov] - m0, f * (img[:, fov] - m0), atol=1e-4)


def test_brightness_is_an_absolute_offset_inside_the_fov():
    img, lab, fov = window(seed=5)
    out, _ = augment(img, lab, np.random.default_rng(0), only(**OPS["brightness"], brightness=0.3), fov)
    delta = out[:, fov] - img[:, fov]
    assert np.ptp(delta) < 1e-5 and 1e-4 < abs(float(delta.mean())) <= 0.3


def test_noise_is_bounded_by_noise_std():
    img, lab, fov = window(seed=6)
    sds = []
    for seed in range(10):
        out, _ = augment(img, lab, np.random.default_rng(seed), only(**OPS["noise"], noise_std=0.2), fov)
        sds.append(float(np.std(out[:, fov] - img[:, fov])))
    assert max(sds) <= 0.2 * 1.05 and max(sds) > 0.02


def test_invert_negates():
    img, lab, fov = window(seed=7)
    out, olab = augment(img, lab, np.random.default_rng(0), only(invert_prob=1.0), fov)
    assert np.array_equal(out[:, fov], -img[:, fov]) and np.array_equal(olab, lab)
    assert out[:, ~fov].tobytes() == img[:, ~fov].tobytes()


def test_blur_keeps_the_fov_mean_and_reduces_variance():
    img, lab, fov = window(seed=8)
    for seed in range(5):
        out, _ = augment(img, lab, np.random.default_rng(seed), only(blur_prob=1.0), fov)
        assert abs(float(out[:, fov].mean() - img[:, fov].mean())) < 0.01
        assert np.var(out[:, fov]) < 0.95 * np.var(img[:, fov])
    # normalised over the FOV: a constant stays constant up to its rim (no dark edge)
    const = np.where(fov, np.float32(3.0), np.float32(0.0))[None].repeat(3, 0)
    out, _ = augment(const, lab, np.random.default_rng(0), only(blur_prob=1.0), fov)
    assert np.allclose(out[:, fov], 3.0, atol=1e-5)
    # each depth slice is blurred on its own
    one = np.zeros_like(img)
    one[3] = img[3]
    out, _ = augment(one, lab, np.random.default_rng(0), only(blur_prob=1.0), fov)
    assert not out[[0, 1, 2, 4, 5, 6]].any() and out[3].any()


# --- determinism --------------------------------------------------------------------------------

def test_same_generator_state_same_bytes_at_any_torch_thread_count():
    cfg = AugmentConfig(**ALL)
    img, lab, fov = window(n=128, seed=9)
    old = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append([augment(img, lab, np.random.default_rng(s), cfg, fov) for s in range(4)])
    finally:
        torch.set_num_threads(old)
    for (a, la), (b, lb) in zip(*runs):
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    again = augment(img, lab, np.random.default_rng(0), cfg, fov)
    assert again[0].tobytes() == runs[0][0][0].tobytes()
    assert len({r[0].tobytes() for r in runs[0]}) == 4  # different generators, different transforms
    # defaults: random subsets of the ops, still a pure function of the generator
    for s in range(8):
        x = augment(img, lab, np.random.default_rng(s), AugmentConfig(), fov)
        y = augment(img, lab, np.random.default_rng(s), AugmentConfig(), fov)
        assert x[0].tobytes() == y[0].tobytes() and x[1].tobytes() == y[1].tobytes()


# --- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,msg", [
    ("elastic_prob", 1.5, "augment.elastic_prob: must be in [0, 1]"),
    ("elastic_alpha", -1.0, "augment.elastic_alpha: must be >= 0"),
    ("elastic_sigma", 0.0, "augment.elastic_sigma: must be > 0"),
    ("resized_crop_prob", -0.1, "augment.resized_crop_prob: must be in [0, 1]"),
    ("resized_crop_scale_min", 0.0, "augment.resized_crop_scale_min: must be in (0, 1]"),
    ("resized_crop_scale_min", 1.2, "augment.resized_crop_scale_min: must be in (0, 1]"),
    ("blur_prob", 2.0, "augment.blur_prob: must be in [0, 1]"),
    ("blur_sigma_range", [2.0, 1.0], "augment.blur_sigma_range: must be [low, high] with 0 < low <= high"),
    ("blur_sigma_range", [0.0, 1.0], "augment.blur_sigma_range: must be [low, high] with 0 < low <= high"),
    ("invert_prob", -1.0, "augment.invert_prob: must be in [0, 1]"),
])
def test_config_validation_names_the_field(key, value, msg):
    with pytest.raises(BadInput) as err:
        config_from_dict({"augment": {key: value}})
    assert msg in str(err.value) and "\n" not in str(err.value)


def test_config_defaults_follow_the_proposal():
    a = config_from_dict({}).augment
    assert (a.elastic_prob, a.resized_crop_prob, a.resized_crop_scale_min, a.blur_prob, a.invert_prob) == (
        0.3, 0.3, 0.7, 0.2, 0.0)
    assert a.blur_sigma_range == (0.1, 2.0)
    assert 0.9 < elastic_std(a.elastic_alpha, a.elastic_sigma) < 1.1
    assert config_from_dict({"augment": {"blur_sigma_range": [0.5, 0.5]}}).augment.blur_sigma_range == (0.5, 0.5)


# --- the stream passes each window's FOV --------------------------------------------------------

def test_stream_windows_are_empty_outside_the_fov_with_every_op(tmp_path):
    from simaq_train.data.build import build_stream, resolve_classes
    from simaq_train.testing import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=2, shape=(12, 32, 32), seed=1)
    for crop in (0, 16):
        cfg = resolve_classes(config_from_dict({
            "seed": 3, "data": {"train": [str(ds)], "background_drop": 0.0, "crop": crop, "fov_margin": 4.0},
            "model": {"init_features": 4, "depth": 2}, "optim": {"batch_size": 4},
            "augment": {**ALL, "rot90": 0.0}}))
        st = build_stream(cfg)[0]
        disc = fov_mask((32, 32), 4.0)
        n = 0
        for batch in st:
            img, tgt = batch["image"].numpy()[:, 0], batch["target"].numpy()
            for k in range(len(img)):
                fov = disc
                if crop:  # the window's crop offsets, drawn first from its generator (stream.sample)
                    rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(0, batch["index"], k, 1)))
                    oy, ox = (int(rng.integers(0, 32 - crop + 1)) for _ in range(2))
                    fov = disc[oy : oy + crop, ox : ox + crop][::-1, ::-1]  # flip = 1: both axes flipped
                assert np.all(img[k][:, ~fov] == 0) and np.all(tgt[k][~fov] == 255)
                n += 1
        assert n >= 8


def test_stream_gives_real_windows_their_own_fov():
    """A real tomogram padded into the training shape keeps its smaller disc: nothing is added
    around it (its FOV is where any slice is nonzero or labelled), synthetic ones use the disc."""
    from simaq_train.data.normalize import quantile_normalize
    from simaq_train.data.sources import fit_inplane, slice_index
    from simaq_train.data.stream import WindowStream

    rng = np.random.default_rng(0)
    syn_lab = np.where(fov_mask((32, 32), 4.0)[None], rng.integers(0, 3, (9, 32, 32)), 255).astype(np.uint8)
    syn = (quantile_normalize(rng.standard_normal((9, 32, 32)).astype(np.float32), 4.0), syn_lab)
    small = fov_mask((20, 20), 4.0)
    real_lab = np.full((9, 20, 20), 255, np.uint8)
    real_lab[:, 8:12, 8:12] = 1  # sparse annotation
    real = (fit_inplane(quantile_normalize(rng.standard_normal((9, 20, 20)).astype(np.float32), 4.0), (32, 32), 0.0),
            fit_inplane(real_lab, (32, 32), 255))
    real_fov = fit_inplane(small, (32, 32), False)
    cfg = config_from_dict({"seed": 1, "data": {"fov_margin": 4.0}, "optim": {"batch_size": 4},
                            "augment": {**ALL, "rot90": 0.0}})
    st = WindowStream([InMemoryVolumes([syn]), InMemoryVolumes([real])], [[slice_index(syn[1])], [slice_index(real[1])]], cfg,
                      real_source=1)
    seen = {False: 0, True: 0}
    for batch in st:
        for img, tgt, is_real in zip(batch["image"].numpy()[:, 0], batch["target"].numpy(), batch["real"].numpy()):
            fov = (real_fov if is_real else fov_mask((32, 32), 4.0))[::-1, ::-1]  # flip = 1
            assert np.all(img[:, ~fov] == 0) and np.all(tgt[~fov] == 255)
            assert np.any(img[:, fov] != 0)
            seen[bool(is_real)] += 1
    assert seen[True] and seen[False]
