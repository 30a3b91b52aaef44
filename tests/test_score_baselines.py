"""Benchmark baselines (score/baseline.py) and the scoring run (score/run.py) on a small hand-made
dataset whose recipe uses non-default reconstruction conventions (scikit-image centre, quadrature
weighting, no circle clipping) and a detector wider than the image."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from simaq_factory.errors import BadInput
from simaq_factory.score.baseline import method_config, run_baseline
from simaq_factory.score.metrics import fov_mask
from simaq_factory.score.run import score, score_sample_recon, write_outputs
from simaq_factory.tomo import Geometry, ReconstructionConfig, forward_project, reconstruct

N, Z, DET = 16, 12, 21
RECON = {"filter": "hamming", "center": "skimage", "weighting": "quadrature", "clip_circle": False}
ANGLES = [np.arange(-60.0, 61.0, 8.0), np.arange(-40.0, 41.0, 10.0), np.arange(-70.0, 71.0, 7.0)]
A_MAX = max(len(a) for a in ANGLES)
LABEL_MAP = {"0": "background", "1": "cell", "2": "vacuole", "3": "lipid_droplet"}


def _geom(angles_deg: np.ndarray) -> Geometry:
    return Geometry(n=N, angles=tuple(math.radians(a) for a in angles_deg), det_count=DET,
                    center=RECON["center"], weighting=RECON["weighting"])


def _write_dataset(root: Path) -> Path:
    """dataset.zarr (phantom, labels, NaN-padded sinogram/angles), recipe.resolved.json, provenance."""
    rng = np.random.default_rng(5)
    n_s = len(ANGLES)
    yy, xx = np.mgrid[:N, :N]
    phantom = np.zeros((n_s, Z, N, N), np.float32)
    labels = np.zeros((n_s, Z, N, N), np.uint8)
    for i in range(n_s):
        cy, cx = 8 + rng.uniform(-2, 2, 2)
        cell = (yy - cy) ** 2 + (xx - cx) ** 2 < 5.0**2
        vac = (yy - cy - 1) ** 2 + (xx - cx) ** 2 < 2.0**2
        labels[i][:, cell] = 1
        labels[i][:, vac] = 2
        phantom[i] = 0.2 * cell + 0.3 * vac + rng.uniform(0, 0.02, (Z, N, N)) * cell
    labels[:, :, 0, 0] = 255  # an ignored voxel
    sino = np.full((n_s, A_MAX, Z, DET), np.nan, np.float32)
    angles = np.full((n_s, A_MAX), np.nan, np.float32)
    for i, ang in enumerate(ANGLES):
        proj = forward_project(torch.from_numpy(phantom[i]), _geom(ang))
        sino[i, : len(ang)] = proj.numpy()
        angles[i, : len(ang)] = ang
    root.mkdir(parents=True)
    g = zarr.open_group(root / "dataset.zarr", mode="w", zarr_format=3,
                        attributes={"label_map": LABEL_MAP, "ignore_label": 255})
    g.create_array("phantom", data=phantom, chunks=(1, 4, N, N))
    g.create_array("labels", data=labels, chunks=(1, 4, N, N))
    g.create_array("sinogram", data=sino, chunks=(1, A_MAX, Z, DET))
    g.create_array("angles", data=angles, chunks=(1, A_MAX))
    (root / "recipe.resolved.json").write_text(json.dumps(
        {"recipe": {"reconstruction": dict(RECON)}, "recipe_id": "hand-made-0001"}))
    (root / "provenance").mkdir()
    records = [{"index": i, "n_cells": 1, "angles": {"span_deg": float(a[-1] - a[0])}}
               for i, a in enumerate(ANGLES)]
    (root / "provenance" / "shard-000000.json").write_text(json.dumps({"sample_records": records}))
    return root


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return _write_dataset(tmp_path_factory.mktemp("hand") / "ds")


def _fbp(ds: Path, i: int, filt: str) -> np.ndarray:
    """FBP of stored sample i's given angles with the recipe's conventions, computed directly."""
    g = zarr.open_group(ds / "dataset.zarr", mode="r")
    k = len(ANGLES[i])
    proj = torch.from_numpy(np.ascontiguousarray(g["sinogram"][i][:k]))
    cfg = ReconstructionConfig(method="fbp", filter=filt, center=RECON["center"],
                               weighting=RECON["weighting"], clip_circle=RECON["clip_circle"])
    return reconstruct(proj, _geom(ANGLES[i]), cfg).numpy()



@pytest.mark.parametrize("method,filt", [("fbp-ramlak", "ram-lak"), ("fbp-hamming", "hamming")])
def test_fbp_baselines_use_their_filter_and_the_recipe_geometry(ds, tmp_path, method, filt):
    pred = tmp_path / f"{method}.zarr"
    report = run_baseline(ds, pred, method)
    assert (report["built"], report["skipped"]) == (len(ANGLES), 0)
    out = zarr.open_group(pred, mode="r")
    recon = out["recon"]
    assert recon.shape == (len(ANGLES), Z, N, N) and recon.dtype == np.float32
    assert recon.chunks == (1, 4, N, N)  # the dataset's chunking along z
    for i in range(len(ANGLES)):
        ref = _fbp(ds, i, filt)
        np.testing.assert_allclose(recon[i], ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    corners = np.asarray(recon[...])[..., 0, 0]
    assert np.any(corners != 0)  # clip_circle: false in the recipe — nothing was clipped
    attrs = dict(out.attrs)
    assert attrs["status"] == "complete" and attrs["reconstruction"]["filter"] == filt
    assert attrs["method"] == method and attrs["source"]["recipe_id"] == "hand-made-0001"
    assert {k: attrs["reconstruction"][k] for k in ("center", "weighting", "clip_circle")} == {
        k: RECON[k] for k in ("center", "weighting", "clip_circle")}
    assert sorted(p.name for p in pred.iterdir()) == ["recon", "zarr.json"]  # no progress record left


def test_ramlak_and_hamming_baselines_differ(ds, tmp_path):
    a = run_baseline(ds, tmp_path / "r.zarr", "fbp-ramlak")["path"]
    b = run_baseline(ds, tmp_path / "h.zarr", "fbp-hamming")["path"]
    ra, rb = (np.asarray(zarr.open_group(p, mode="r")["recon"][...]) for p in (a, b))
    assert not np.allclose(ra, rb, atol=1e-3 * float(np.abs(ra).max()))


def test_nan_in_a_given_projection_is_bad_input_naming_the_sample(ds, tmp_path):
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(ds, bad)
    g = zarr.open_group(bad / "dataset.zarr", mode="r+")
    sino = g["sinogram"][1]
    sino[2, 0, 5] = np.nan  # inside sample 1's given angles
    g["sinogram"][1] = sino
    with pytest.raises(BadInput, match=r"sample 1.*NaN"):
        run_baseline(bad, tmp_path / "p.zarr", "fbp-ramlak")
    # bad input, not a damaged store: this dataset records no checksums to tell them apart by;
    # sample 0 was reconstructed, so the partial output stays to resume from
    assert not (tmp_path / "p.zarr").exists() and (tmp_path / ".p.zarr.partial").is_dir()


def test_bad_input_before_any_sample_is_reconstructed_leaves_nothing(ds, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ds, bad)
    g = zarr.open_group(bad / "dataset.zarr", mode="r+")
    sino = g["sinogram"][0]
    sino[0, 0, 0] = np.inf
    g["sinogram"][0] = sino
    with pytest.raises(BadInput, match=r"sample 0.*NaN/inf"):
        run_baseline(bad, tmp_path / "p.zarr", "fbp-ramlak")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no PRED, no .PRED.partial


def test_a_partial_run_of_another_method_is_discarded_not_resumed(ds, tmp_path):
    pred = tmp_path / "p.zarr"

    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_baseline(ds, pred, "fbp-ramlak", progress=stop_after_two)
    report = run_baseline(ds, pred, "fbp-hamming")
    assert (report["built"], report["skipped"]) == (len(ANGLES), 0)
    fresh = run_baseline(ds, tmp_path / "fresh.zarr", "fbp-hamming")["path"]
    assert np.array_equal(zarr.open_group(pred, mode="r")["recon"][...],
                          zarr.open_group(fresh, mode="r")["recon"][...])
    assert dict(zarr.open_group(pred, mode="r").attrs)["method"] == "fbp-hamming"


def test_an_unfinished_output_at_the_final_path_is_not_taken_as_done(ds, tmp_path):
    pred = tmp_path / "p.zarr"
    run_baseline(ds, pred, "fbp-hamming")
    zarr.open_group(pred, mode="r+").attrs["status"] = "partial"
    with pytest.raises(BadInput, match="already exists"):
        run_baseline(ds, pred, "fbp-hamming")


def test_iterative_flags_are_refused_for_fbp_and_kept_for_iterative_methods():
    for flag, kw in (("--iterations", {"iterations": 5}), ("--nonneg", {"nonneg": True})):
        with pytest.raises(BadInput, match=flag):
            method_config("fbp-ramlak", RECON, **kw)
    try:
        cfg = method_config("sirt", RECON, iterations=7, nonneg=False)
    except BadInput:  # an installation without sirt
        pytest.skip("no sirt in this installation")
    assert (cfg.method, cfg.iterations, cfg.nonneg, cfg.center, cfg.clip_circle) == ("sirt", 7, False, "skimage", False)


# ----------------------------------------------------------------------------------- scoring


def test_values_outside_the_field_of_view_do_not_change_any_score():
    rng = np.random.default_rng(1)
    gt = rng.random((12, 20, 20))
    fov = fov_mask(20, 9.5, 7.0)
    for fit, pred in (("affine", 3.0 * gt + 1.0), ("none", gt.copy())):
        pred[:, ~fov] = rng.normal(50.0, 30.0, (12, int((~fov).sum())))  # garbage outside the FOV
        s = score_sample_recon(gt, pred, fov, fit=fit)
        assert s["nrmse"] == pytest.approx(0.0, abs=1e-9)
        assert s["ssim"] == pytest.approx(1.0, abs=1e-9)
        assert s["psnr"] > 200.0  # exact up to the rounding of the fit


def test_psnr_data_range_is_the_ground_truth_range_inside_the_fov():
    rng = np.random.default_rng(2)
    gt = rng.random((12, 20, 20))
    fov = fov_mask(20, 9.5, 8.0)
    gt[:, 0, 0] = 40.0  # a bright voxel outside the FOV must not widen the range
    pred = gt + rng.normal(0, 0.05, gt.shape)
    g_in, p_in = gt[:, fov], pred[:, fov]
    want = 10 * math.log10((g_in.max() - g_in.min()) ** 2 / np.mean((g_in - p_in) ** 2))
    assert score_sample_recon(gt, pred, fov, fit="none")["psnr"] == pytest.approx(want, rel=1e-9)


def _zarr_pred(path: Path, **arrays: np.ndarray) -> Path:
    g = zarr.open_group(path, mode="w", zarr_format=3)
    for name, data in arrays.items():
        g.create_array(name, data=data)
    return path


def test_score_uses_the_fov_margin_for_every_metric(ds, tmp_path):
    g = zarr.open_group(ds / "dataset.zarr", mode="r")
    phantom = np.asarray(g["phantom"][...])
    rng = np.random.default_rng(3)
    noisy = (phantom + rng.normal(0, 0.05, phantom.shape)).astype(np.float32)
    pred = _zarr_pred(tmp_path / "p.zarr", recon=noisy)
    geom = Geometry(n=N, angles=(0.0,), center=RECON["center"])
    for margin in (2.0, 4.5):
        res = score(ds, [pred], fov_margin=margin, fit="none")
        assert res.payload["ground_truth"]["fov_radius"] == geom.circle_radius - margin
        fov = fov_mask(N, geom.image_center, geom.circle_radius - margin)
        for row in res.rows:
            want = score_sample_recon(phantom[row["index"]], noisy[row["index"]], fov, fit="none")
            assert row["nrmse"] == pytest.approx(want["nrmse"], rel=1e-12)
            assert row["ssim"] == pytest.approx(want["ssim"], rel=1e-12)
    for bad in (geom.circle_radius, -1.0):
        with pytest.raises(BadInput, match="--fov-margin"):
            score(ds, [pred], fov_margin=bad)
    with pytest.raises(BadInput, match="--span-bin"):
        score(ds, [pred], span_bin_deg=0.0)


def test_predictions_of_different_kinds_compare_on_shared_metrics_and_share_one_csv(ds, tmp_path):
    g = zarr.open_group(ds / "dataset.zarr", mode="r")
    phantom = np.asarray(g["phantom"][...])
    labels = np.where(np.asarray(g["labels"][...]) == 255, 0, g["labels"][...]).astype(np.uint8)
    recon_only = _zarr_pred(tmp_path / "a.zarr", recon=phantom + 0.01)
    both = _zarr_pred(tmp_path / "b.zarr", recon=phantom * 2.0, labels=labels)
    # the comparison is over the metrics every prediction has, whichever comes first
    for order in ([recon_only, both], [both, recon_only]):
        assert set(score(ds, order).payload["comparison"]["metrics"]) == {"nrmse", "psnr", "ssim"}
    res = score(ds, [recon_only, both])
    paths = write_outputs(res, tmp_path / "report")
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(ANGLES)
    assert {"nrmse", "mean_iou", "iou_cell", "iou_lipid_droplet"} <= set(rows[0])
    a_rows = [r for r in rows if r["pred"] == "a"]
    b_rows = [r for r in rows if r["pred"] == "b"]
    assert all(r["iou_cell"] == "" for r in a_rows)  # not scored: empty
    # a perfect segmentation: every class that is present scores 1 (the ignored voxel counts nowhere)
    assert all(float(r["iou_cell"]) == float(r["iou_background"]) == float(r["dice_vacuole"]) == 1.0
               for r in b_rows)
    # lipid droplets are in neither volume: IoU undefined — empty in the CSV, null in the JSON
    assert all(r["iou_lipid_droplet"] == "" for r in b_rows)
    js = json.loads(paths["json"].read_text())
    assert all(r["iou_lipid_droplet"] is None for r in js["samples"] if r["pred"] == "b")


def test_the_report_example_is_the_sample_of_median_ssim(ds, tmp_path):
    g = zarr.open_group(ds / "dataset.zarr", mode="r")
    phantom = np.asarray(g["phantom"][...])
    rng = np.random.default_rng(4)
    noise = [0.2, 0.01, 0.05]  # sample 1 best, sample 2 in the middle, sample 0 worst
    recon = np.stack([p + rng.normal(0, s, p.shape) for p, s in zip(phantom, noise)]).astype(np.float32)
    res = score(ds, [_zarr_pred(tmp_path / "p.zarr", recon=recon)])
    ssim = {r["index"]: r["ssim"] for r in res.rows}
    assert ssim[1] > ssim[2] > ssim[0]
    assert res.examples["index"] == 2 and res.examples["z"] == Z // 2


def test_three_axis_acquisitions_are_scored_in_their_own_frame(tmp_path):
    """recon[i, k] is compared with the phantom inside the cylinder about volume axis k: a prediction
    equal to the phantom there, with garbage outside that cylinder, scores perfectly on every axis."""
    from simaq_factory.acquisition.axes import inverse_axes

    n, n_s = 16, 2
    root = tmp_path / "three"
    rng = np.random.default_rng(6)
    phantom = rng.random((n_s, n, n, n)).astype(np.float32)  # no symmetry between the axes
    labels = (phantom > 0.5).astype(np.uint8)
    root.mkdir()
    g = zarr.open_group(root / "dataset.zarr", mode="w", zarr_format=3,
                        attributes={"label_map": LABEL_MAP, "ignore_label": 255})
    g.create_array("phantom", data=phantom, chunks=(1, 4, n, n))
    g.create_array("labels", data=labels, chunks=(1, 4, n, n))
    (root / "recipe.resolved.json").write_text(json.dumps(
        {"recipe": {"reconstruction": {}, "acquisition": {"axes": 3}}, "recipe_id": "three-0001"}))
    (root / "provenance").mkdir()
    records = [{"index": i, "n_cells": 1, "acquisitions": [{"angles": {"span_deg": 100.0 + 10 * k}}
                                                           for k in range(3)]} for i in range(n_s)]
    (root / "provenance" / "shard-000000.json").write_text(json.dumps({"sample_records": records}))
    geom = Geometry(n=n, angles=(0.0,))
    outside = ~fov_mask(n, geom.image_center, geom.circle_radius - 2.0)  # the default FOV margin
    recon = np.repeat(phantom[:, None], 3, axis=1)
    for k in range(3):
        garbage = np.transpose(np.broadcast_to(outside[None], (n, n, n)), inverse_axes(k))
        recon[:, k][:, garbage] = 50.0
    res = score(root, [_zarr_pred(tmp_path / "p.zarr", recon=recon)], fit="none")
    assert [(r["index"], r["axis"]) for r in res.rows] == [(i, k) for i in range(n_s) for k in range(3)]
    for row in res.rows:
        assert row["nrmse"] == 0.0 and row["ssim"] == pytest.approx(1.0)
        assert row["span_deg"] == 100.0 + 10 * row["axis"]
