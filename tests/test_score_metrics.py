"""Benchmark metrics against scikit-image and hand-computed IoU/Dice; aggregation and comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from simaq_factory.score.aggregate import compare, group_stats, span_bin, stats
from simaq_factory.score.metrics import confusion_counts, fov_mask, iou_dice, nrmse, psnr, ssim
from simaq_factory.score.run import affine_fit, score_sample_labels, score_sample_recon

CLASSES = {0: "background", 1: "cell", 2: "vacuole", 3: "lipid_droplet"}


def _pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = gaussian_filter(rng.normal(size=shape), 2.0) * 5 + 1.0
    pred = gt + 0.3 * rng.normal(size=shape) + 0.1
    return gt, pred


def _skimage_ssim(a: np.ndarray, b: np.ndarray, r: float, full: bool = False):  # type: ignore[no-untyped-def]
    return structural_similarity(a, b, data_range=r, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, full=full)


@pytest.mark.parametrize("shape", [(16, 20, 24), (70, 14, 13)])  # the second crosses SSIM z-slabs
def test_ssim_matches_skimage_3d(shape):
    gt, pred = _pair(shape, 1)
    r = float(gt.max() - gt.min())
    assert ssim(gt, pred, r) == pytest.approx(_skimage_ssim(gt, pred, r), rel=1e-10, abs=1e-12)
    assert ssim(gt, gt, r) == pytest.approx(1.0)
    assert ssim(gt, pred, 2 * r) > ssim(gt, pred, r)  # larger C1, C2: closer to 1


def test_masked_ssim_is_the_skimage_map_averaged_over_the_mask():
    gt, pred = _pair((40, 24, 24), 2)
    r = 3.0
    _, smap = _skimage_ssim(gt, pred, r, full=True)
    disk = fov_mask(24, 11.5, 12.0)
    assert ssim(gt, pred, r, mask=disk) == pytest.approx(float(smap[:, disk].mean()), rel=1e-10)


def test_psnr_and_nrmse_match_skimage():
    gt, pred = _pair((8, 16, 16), 3)
    r = float(gt.max() - gt.min())
    assert psnr(gt, pred, r) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=r), rel=1e-12)
    assert nrmse(gt, pred) == pytest.approx(normalized_root_mse(gt, pred), rel=1e-12)
    assert psnr(gt, gt, r) == math.inf
    assert math.isnan(psnr(gt, pred, 0.0)) and math.isnan(nrmse(np.zeros(4), np.ones(4)))


def test_fov_mask_is_the_fbp_circle():
    m = fov_mask(8, 3.5, 4.0)
    assert m.shape == (8, 8) and m[3, 3] and m[0, 3] and not m[0, 0]
    assert np.array_equal(m, m.T) and np.array_equal(m, m[::-1])


def _seg(values: dict[tuple[int, int, int], int], fill: int = 0) -> np.ndarray:
    a = np.full((2, 4, 4), fill, dtype=np.uint8)
    for idx, v in values.items():
        a[idx] = v
    return a


def test_iou_dice_hand_computed():
    gt = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 0, :4] = 1  # 4 voxels of class 1
    pred[0, 0, 1:4] = 1  # 3 of them found ...
    pred[0, 1, :3] = 1  # ... plus 3 false positives
    gt[1, 3, 3] = 2  # class 2 entirely missed
    counts = confusion_counts(gt, pred)
    res = iou_dice(counts, [0, 1, 2, 3])
    assert res[1] == pytest.approx((3 / 7, 6 / 10))
    assert res[2] == (0.0, 0.0)
    assert all(math.isnan(v) for v in res[3])  # in neither volume: undefined, not 0 or 1
    n_bg = 32 - 4 - 1
    tp0 = n_bg - 3  # background voxels predicted background
    assert res[0] == pytest.approx((tp0 / (n_bg + 1 + 1), 2 * tp0 / (2 * tp0 + 3 + 1 + 1)))


def test_iou_perfect_disjoint_and_ignore():
    gt = _seg({(0, 1, 1): 1, (0, 1, 2): 1, (1, 2, 2): 3})
    assert all(v == (1.0, 1.0) for c, v in iou_dice(confusion_counts(gt, gt), [0, 1, 3]).items())
    disjoint = _seg({(1, 0, 0): 1, (1, 0, 1): 1, (0, 3, 3): 3})
    res = iou_dice(confusion_counts(gt, disjoint), [1, 3])
    assert res == {1: (0.0, 0.0), 3: (0.0, 0.0)}
    # voxels whose ground truth is 255 do not count, whatever is predicted there
    gt_ign = gt.copy()
    gt_ign[1, 0, :2] = 255
    res = iou_dice(confusion_counts(gt_ign, np.where(gt_ign == 255, 1, gt_ign).astype(np.uint8)), [0, 1, 3])
    assert res[1] == (1.0, 1.0) and res[0] == (1.0, 1.0)
    # a prediction of 255 (no class) is a miss
    pred = gt.copy()
    pred[0, 1, 1] = 255
    assert iou_dice(confusion_counts(gt, pred), [1])[1] == pytest.approx((0.5, 2 / 3))


def test_score_sample_labels_mean_iou_skips_undefined_and_background():
    gt = _seg({(0, 1, 1): 1, (0, 1, 2): 2})
    pred = _seg({(0, 1, 1): 1})
    s = score_sample_labels(gt, pred, CLASSES)
    assert s["iou_cell"] == 1.0 and s["iou_vacuole"] == 0.0 and math.isnan(s["iou_lipid_droplet"])
    assert s["mean_iou"] == 0.5 and s["dice_cell"] == 1.0


def test_affine_fit_recovers_scale_and_offset():
    gt, _ = _pair((12, 16, 16), 4)
    disk = fov_mask(16, 7.5, 8.0)
    a, b = affine_fit(gt[:, disk], 0.5 * gt[:, disk] - 2.0)
    assert (a, b) == (pytest.approx(2.0), pytest.approx(4.0))
    s = score_sample_recon(gt, 0.5 * gt - 2.0, disk, fit="affine")
    assert s["nrmse"] == pytest.approx(0.0, abs=1e-12) and s["ssim"] == pytest.approx(1.0)
    raw = score_sample_recon(gt, 0.5 * gt - 2.0, disk, fit="none")
    assert raw["nrmse"] > 0.5 and "fit_scale" not in raw
    with pytest.raises(ValueError, match="NaN"):
        score_sample_recon(gt, np.full_like(gt, np.nan), disk)


def test_stats_groups_and_comparison():
    s = stats([1.0, 2.0, 3.0, 4.0, math.nan])
    assert (s["n"], s["n_undefined"], s["n_infinite"]) == (4, 1, 0)
    assert s["median"] == 2.5 and s["q1"] == 1.75 and s["q3"] == 3.25 and s["mean"] == 2.5
    s = stats([1.0, 2.0, 3.0, 4.0, math.nan, math.inf])  # a perfect PSNR counts, as the best value
    assert (s["n"], s["n_undefined"], s["n_infinite"]) == (5, 1, 1)
    assert s["median"] == 3.0 and s["q3"] == 4.0 and s["max"] == math.inf and s["mean"] == math.inf
    assert s["std"] is None
    assert stats([2.0, math.inf])["median"] == math.inf  # halfway to a perfect value is perfect
    assert stats([math.nan])["median"] is None
    assert span_bin(99.99, 10) == "95-105" and span_bin(94.9, 10) == "85-95" and span_bin(100, 20) == "90-110"
    rows = []
    for i in range(4):
        base = {"index": i, "n_cells": 1 + i % 2, "span_deg": 95.0 + 5 * i}
        rows.append({**base, "pred": "a", "nrmse": 0.5, "ssim": 0.5})
        rows.append({**base, "pred": "b", "nrmse": 0.4 if i else 0.6, "ssim": 0.7})
    g = group_stats([r for r in rows if r["pred"] == "a"], ["nrmse", "ssim"], 10.0)
    assert set(g["by_n_cells"]) == {"1", "2"} and set(g["by_span_deg"]) == {"95-105", "105-115"}
    assert g["overall"]["n_samples"] == 4
    c = compare(rows, ["a", "b"], ["nrmse", "ssim"])
    assert c["metrics"]["nrmse"]["best"] == "b" and c["metrics"]["ssim"]["best"] == "b"
    v = c["metrics"]["nrmse"]["vs_reference"]["b"]
    assert v["frac_better"] == 0.75 and v["median_diff"] == pytest.approx(-0.1)


def test_comparison_ranks_on_common_samples_and_rounding_is_a_tie():
    """A prediction of a subset is ranked on the samples both cover; rounding noise is no win."""
    rows = []
    for i in range(4):
        base = {"index": i, "n_cells": 1, "span_deg": 100.0}
        rows.append({**base, "pred": "ref", "psnr": 20.0 + 10 * (i == 3)})
        if i < 3:  # "sub" leaves out the reference's best sample and equals it up to rounding
            rows.append({**base, "pred": "sub", "psnr": 20.0 + 1e-10})
    c = compare(rows, ["ref", "sub"], ["psnr"])
    assert c["n_common"] == 3
    m = c["metrics"]["psnr"]
    assert m["median"] == {"ref": 20.0, "sub": pytest.approx(20.0)} and m["best"] == "ref"
    assert m["vs_reference"]["sub"]["n"] == 3 and m["vs_reference"]["sub"]["frac_better"] == 0.5
    rows.append({"index": 3, "n_cells": 1, "span_deg": 100.0, "pred": "sub", "psnr": 31.0})
    m = compare(rows, ["ref", "sub"], ["psnr"])["metrics"]["psnr"]
    # medians 20 and 20 + 1e-10 tie: the first listed is best; three ties and one win
    assert m["best"] == "ref" and m["vs_reference"]["sub"]["frac_better"] == pytest.approx(5 / 8)


def test_a_perfect_psnr_ranks_first_and_counts_in_the_paired_comparison():
    rows = []
    for i in range(4):
        base = {"index": i, "n_cells": 1, "span_deg": 100.0}
        rows.append({**base, "pred": "fbp", "psnr": 20.0})
        rows.append({**base, "pred": "truth", "psnr": 15.0 if i == 0 else math.inf})
        rows.append({**base, "pred": "copy", "psnr": 15.0 if i == 0 else math.inf})
    m = compare(rows, ["fbp", "truth", "copy"], ["psnr"])["metrics"]["psnr"]
    assert m["median"]["truth"] == math.inf and m["best"] == "truth"
    v = m["vs_reference"]["truth"]
    assert v["n"] == 4 and v["frac_better"] == 0.75 and v["median_diff"] == math.inf
    g = group_stats([r for r in rows if r["pred"] == "truth"], ["psnr"], 10.0)
    assert g["overall"]["psnr"]["median"] == math.inf and g["overall"]["psnr"]["n_infinite"] == 3


def test_span_bins_wider_than_twice_the_span_have_a_negative_lower_edge():
    rows = [{"index": 0, "n_cells": 1, "span_deg": 100.0, "pred": "a", "nrmse": 0.5}]
    g = group_stats(rows, ["nrmse"], 250.0)
    assert list(g["by_span_deg"]) == ["-125-125"] and span_bin(100.0, 250.0) == "-125-125"


def test_the_affine_fit_does_not_invert_an_anticorrelated_reconstruction():
    gt, _ = _pair((12, 16, 16), 4)
    disk = fov_mask(16, 7.5, 8.0)
    a, b = affine_fit(gt[:, disk], -gt[:, disk])
    assert a == 0.0 and b == pytest.approx(gt[:, disk].mean())
    s = score_sample_recon(gt, -gt, disk, fit="affine")
    assert s["nrmse"] > 0.1 and s["ssim"] < 0.9 and s["fit_scale"] == 0.0  # not a perfect 0 and 1


def test_prediction_names_are_made_unique_without_clashing_with_given_ones():
    from types import SimpleNamespace

    from simaq_factory.score.run import _unique_names

    preds = [SimpleNamespace(name=n) for n in ("fbp", "fbp", "fbp-2", "fbp")]
    _unique_names(preds)  # type: ignore[arg-type]
    names = [p.name for p in preds]
    assert len(set(names)) == 4 and names[0] == "fbp" and names[2] == "fbp-2"


def test_iterative_baselines_record_the_nonneg_they_use():
    from simaq_factory.score.baseline import _config_json, available_methods, method_config

    for method, want in (("sirt", True), ("cgls", False)):
        if method in available_methods():
            assert _config_json(method_config(method, {}))["nonneg"] is want
    assert _config_json(method_config("fbp-hamming", {}))["nonneg"] is None


@pytest.mark.parametrize("n,center", [(16, "skimage"), (17, "skimage"), (17, "astra"), (16, "astra")])
def test_fov_mask_is_the_support_of_a_circle_clipped_backprojection(n, center):
    # the scored FOV is the circle FBP clips to, pixels exactly on the radius included (for
    # n = 16 skimage and n = 17, (c, 0) and three others lie exactly at distance n // 2)
    import torch

    from simaq_factory.tomo import Geometry
    from simaq_factory.tomo.projector import backproject

    g = Geometry(n=n, angles=tuple(np.linspace(0.0, np.pi, 24, endpoint=False)), center=center)
    ones = torch.ones((g.n_angles, 1, g.detectors), dtype=torch.float64)
    support = (backproject(ones, g, clip_circle=True)[0] != 0).numpy()
    m = fov_mask(n, g.image_center, g.circle_radius)
    assert np.array_equal(m, support)
    c = int(g.image_center)
    if c == g.image_center:
        assert m[c, c - n // 2] and m[c - n // 2, c]  # on the circle: inside


def test_labels_outside_0_255_are_misses_or_refused_never_wrapped_into_another_class():
    gt = np.zeros((2, 4, 4), dtype=np.int32)
    for bad in (256, -1, 300):
        with pytest.raises(ValueError, match="ground-truth labels must be integers in 0..255"):
            confusion_counts(np.full_like(gt, bad), gt)
    with pytest.raises(ValueError, match="labels must be integers >= 0, got -1"):
        confusion_counts(gt, np.full_like(gt, -1))
    for no_class in (255, 256, 300, 70000):  # instance ids of a uint16/int32 segmentation: misses, as 255
        pred = np.full_like(gt, no_class)
        pred[0, 0, 0] = 0
        counts = confusion_counts(gt, pred)
        assert counts[0, 255] == gt.size - 1 and counts[0, 0] == 1 and counts.sum() == gt.size, no_class


def test_comparison_pairs_rows_by_sample_and_acquisition_axis():
    """Three-axis datasets score a row per (sample, axis): all of them are paired, none overwritten."""
    rows, ref_v, oth_v = [], [], []
    for i in range(2):
        for k in range(3):
            base = {"index": i, "axis": k, "n_cells": 1, "span_deg": 100.0}
            r, o = 10.0 * i + k, 10.0 * i + k + (3.0 if k == 0 else -1.0)
            rows.append({**base, "pred": "ref", "psnr": r})
            rows.append({**base, "pred": "other", "psnr": o})
            ref_v.append(r)
            oth_v.append(o)
    c = compare(rows, ["ref", "other"], ["psnr"])
    assert c["n_common"] == 6
    m = c["metrics"]["psnr"]
    assert m["median"] == {"ref": pytest.approx(float(np.median(ref_v))),
                           "other": pytest.approx(float(np.median(oth_v)))}
    v = m["vs_reference"]["other"]
    diffs = np.subtract(oth_v, ref_v)
    assert v["n"] == 6 and v["frac_better"] == pytest.approx(2 / 6)
    assert v["mean_diff"] == pytest.approx(float(diffs.mean())) and v["median_diff"] == pytest.approx(-1.0)
