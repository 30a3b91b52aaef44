"""Acquisitions about three principal axes (``acquisition.axes: 3``; paper §2, reference §3.11)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.acquisition.axes import (
    axis_rng,
    frame_axes,
    from_frame,
    inverse_axes,
    tilt_axes,
    to_frame,
)
from simaq_factory.cli.main import main

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
N = 32
TINY = ["--set", f"dataset.shape=[{N},{N},{N}]", "--set", "dataset.chunk_z=4", "--set", "phantom.scale=0.15",
        "--set", "dataset.n_samples=3", "--set", "dataset.samples_per_shard=2",
        # ice cracks fill the background with sheets whose sums look alike along every axis, which
        # blurs the layout comparison below; the frames do not depend on the artifacts
        "--set", "artifacts.ice_cracks.probability=0", *small_banks.ARGS]
THREE = [*TINY, "--set", "acquisition.axes=3"]


def build(out: Path, *sets: str) -> Path:
    result = CliRunner().invoke(main, ["build", SMOKE, "-o", str(out), "--cluster", "inline", *sets])
    assert result.exit_code == 0, result.output
    return out


def arrays(out: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(out / "dataset.zarr", mode="r")
    return {name: a[...] for name, a in g.arrays()}


def records(out: Path) -> list[dict]:
    recs = []
    for path in sorted((out / "provenance").glob("shard-*.json")):
        recs += json.loads(path.read_text())["sample_records"]
    return recs


def disk(n: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    return ((yy - c) ** 2 + (xx - c) ** 2) < radius**2


def fit_corr(pred: np.ndarray, gt: np.ndarray) -> float:
    """Correlation of ``pred`` with ``gt`` (= quality of the least-squares affine fit)."""
    return float(np.corrcoef(pred.ravel(), gt.ravel())[0, 1])


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("axes") / "three", *THREE)


# ------------------------------------------------------------------------------------------ frames
def test_frames_are_proper_rotations_and_round_trip():
    assert [frame_axes(k) for k in range(3)] == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for k in range(3):
        perm = np.eye(3)[list(frame_axes(k))]
        assert round(np.linalg.det(perm)) == 1  # cyclic: no mirror, the tilt sense is kept
        assert to_frame(vol, k).shape[0] == vol.shape[k]
        assert np.array_equal(from_frame(to_frame(vol, k), k), vol)
        t = torch.from_numpy(vol)
        assert torch.equal(from_frame(to_frame(t, k), k), t)
        assert tuple(np.argsort(frame_axes(k))) == inverse_axes(k)
    assert tilt_axes(1) == [0] and tilt_axes(3) == [0, 1, 2]
    with pytest.raises(ValueError):
        tilt_axes(2)
    a, b = axis_rng(7, 3, 2, 1).random(4), axis_rng(7, 3, 2, 1).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, axis_rng(7, 3, 2, 2).random(4))
    with pytest.raises(ValueError):
        axis_rng(7, 3, 2, 0)


# ------------------------------------------------------------------------------------------ layout
def test_three_axis_layout_card_and_provenance(three):
    g = zarr.open_group(three / "dataset.zarr", mode="r")
    card = dict(g.attrs)
    a_max = card["a_max"]
    assert card["tilt_axes"] == [0, 1, 2] and card["tilt_axis"] == ["z", "y", "x"]
    assert [f["permutation"] for f in card["axis_frames"]] == [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    expect = {"phantom": (3, N, N, N), "labels": (3, N, N, N), "noisy": (3, N, N, N),
              "recon": (3, 3, N, N, N), "sinogram": (3, 3, a_max, N, N), "angles": (3, 3, a_max)}
    assert {name: a.shape for name, a in g.arrays()} == expect
    assert g["recon"].chunks == (1, 1, 4, N, N) and g["recon"].shards == (2, 3, N, N, N)
    assert g["recon"].metadata.dimension_names == ("sample", "axis", "z", "y", "x")
    assert g["sinogram"].metadata.dimension_names[:3] == ("sample", "axis", "angle")
    assert g["phantom"].metadata.dimension_names == ("sample", "z", "y", "x")
    angles, sino = g["angles"][...], g["sinogram"][...]
    for rec in records(three):
        i = rec["index"]
        acqs = rec["acquisitions"]
        assert [a["axis"] for a in acqs] == [0, 1, 2] and acqs[0]["angles"] == rec["angles"]
        assert [a["tilt_axis"] for a in acqs] == ["z", "y", "x"]
        for k, acq in enumerate(acqs):
            kept = len(acq["angles"]["recon_deg"])
            np.testing.assert_allclose(angles[i, k, :kept], acq["angles"]["recon_deg"], rtol=1e-6)
            assert np.isnan(angles[i, k, kept:]).all() and np.isnan(sino[i, k, kept:]).all()
            assert np.isfinite(sino[i, k, :kept]).all()
        # independent draws: spans, offsets and missing sets differ between the axes
        assert len({a["angles"]["span_deg"] for a in acqs}) == 3
        assert len({tuple(a["angles"]["kept"]) for a in acqs}) == 3
        assert rec["seed"]["axis_spawn_keys"]["1"]["angles"] == [i, 2, 1]


def test_each_recon_is_the_phantom_in_canonical_orientation(three):
    a = arrays(three)
    ph, rec = a["phantom"], a["recon"]
    fov = disk(N, N / 2 - 3)
    wrong_orientations = [p for p in itertools.permutations(range(3)) if p != (0, 1, 2)]
    for k in range(3):
        perm = frame_axes(k)  # in its own frame the FOV is the cylinder about the tilt axis
        framed = [np.transpose(p, perm)[:, fov] for p in ph]
        for i in range(3):
            mine = np.transpose(rec[i, k], perm)[:, fov]
            corr = [fit_corr(mine, f) for f in framed]
            assert corr[i] > 0.4, (k, i, corr)
            assert corr[i] > max(c for j, c in enumerate(corr) if j != i) + 0.1, (k, i, corr)
            # the same object in another orientation fits worse: the stored frame is (z, y, x)
            for q in wrong_orientations:
                other = np.transpose(np.transpose(ph[i], q), perm)[:, fov]
                assert corr[i] > fit_corr(mine, other), (k, i, q)
    for i in range(3):  # three different acquisitions, three different reconstructions
        for k, m in itertools.combinations(range(3), 2):
            diff = np.linalg.norm(rec[i, k] - rec[i, m]) / np.linalg.norm(rec[i, k])
            assert diff > 0.1


def test_sinogram_axes_follow_the_documented_frames(three):
    """Projection near 0 deg of acquisition k ~ the noisy volume summed along the beam axis
    (k+1) mod 3, laid out (S along k, D along (k+2) mod 3); other layouts fit worse."""
    a = arrays(three)
    noisy, sino, angles = a["noisy"], a["sinogram"], a["angles"]
    for i in range(3):
        for k in range(3):
            a0 = int(np.nanargmin(np.abs(angles[i, k])))
            proj = sino[i, k, a0]
            tilt, beam, det = frame_axes(k)
            expected = noisy[i].sum(axis=beam).transpose((0, 1) if tilt < det else (1, 0))
            corr = fit_corr(proj, expected)
            assert corr > 0.9, (i, k, corr)
            for wrong_beam in (tilt, det):
                s = noisy[i].sum(axis=wrong_beam)
                for img in (s, s.T):
                    assert corr > fit_corr(proj, img) + 0.02, (i, k, wrong_beam)


def test_axis0_of_three_is_the_one_axis_acquisition(three, tmp_path):
    one = arrays(build(tmp_path / "one", *TINY))
    a = arrays(three)
    for name in ("phantom", "labels"):
        assert a[name].tobytes() == one[name].tobytes(), name
    # the ice texture is not cut to the cylinder about z with three axes: it differs only outside
    # that cylinder, which the projector's input mask removes, so axis 0's data are the same bytes
    from simaq_factory.artifacts.stage import cylinder_mask

    cyl = np.broadcast_to(cylinder_mask(tuple(a["noisy"].shape[1:]), 2.0, torch.device("cpu")).numpy(),
                          a["noisy"].shape[1:])
    assert a["noisy"][:, cyl].tobytes() == one["noisy"][:, cyl].tobytes()
    assert (a["noisy"][:, ~cyl] != one["noisy"][:, ~cyl]).any()
    for name in ("recon", "sinogram", "angles"):
        assert a[name][:, 0].tobytes() == one[name].tobytes(), name
    card = dict(zarr.open_group(tmp_path / "one" / "dataset.zarr", mode="r").attrs)
    assert card["tilt_axes"] == [0] and "axis_frames" not in card
    assert "acquisitions" not in records(tmp_path / "one")[0]


def test_three_axis_build_is_deterministic_and_regenerates(three, tmp_path):
    again = arrays(build(tmp_path / "again", *THREE))
    ref = arrays(three)
    assert sorted(again) == sorted(ref)
    for name in ref:
        assert again[name].tobytes() == ref[name].tobytes(), name
    result = CliRunner().invoke(main, ["verify", str(three), "--deep", "--regen", "3"])
    assert result.exit_code == 0, result.output
    assert "regenerated samples [0, 1, 2]" in result.output


def test_baseline_score_preview_export_on_three_axes(three, tmp_path):
    pred = tmp_path / "fbp.zarr"
    r = CliRunner().invoke(main, ["baseline", str(three), "--method", "fbp-hamming", "-o", str(pred)])
    assert r.exit_code == 0, r.output
    stored = zarr.open_group(three / "dataset.zarr", mode="r")["recon"]
    mine = zarr.open_group(pred, mode="r")["recon"]
    assert mine.shape == stored.shape and mine.chunks == (1, 1, 4, N, N)
    np.testing.assert_allclose(mine[...], stored[...], atol=1e-5)  # same sinograms, same FBP
    out = tmp_path / "scores"
    r = CliRunner().invoke(main, ["score", "--gt", str(three), "--pred", str(pred), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "9 acquisition(s)" in r.output
    payload = json.loads((out / "scores.json").read_text())
    rows = payload["samples"]
    assert [(row["index"], row["axis"]) for row in rows] == [(i, k) for i in range(3) for k in range(3)]
    spans = {(rec["index"], a["axis"]): a["angles"]["span_deg"]
             for rec in records(three) for a in rec["acquisitions"]}
    assert all(row["span_deg"] == spans[(row["index"], row["axis"])] for row in rows)
    assert all(row["ssim"] > 0 and np.isfinite(row["nrmse"]) for row in rows)
    summary = payload["predictions"]["fbp-hamming"]
    assert summary["overall"]["ssim"]["n"] == 9 and payload["ground_truth"]["tilt_axes"] == [0, 1, 2]
    assert "axes" in payload["conventions"]
    assert (out / "samples.csv").read_text().startswith("pred,index,axis,n_cells,span_deg,")
    # a prediction without the axis dimension is refused, naming the expected shape
    flat = zarr.open_group(tmp_path / "flat.zarr", mode="w")
    flat.create_array("recon", data=stored[:, 0])
    r = CliRunner().invoke(main, ["score", "--gt", str(three), "--pred", str(tmp_path / "flat.zarr")])
    assert r.exit_code == 2 and "(N, 3, Z, Y, X)" in r.output
    r = CliRunner().invoke(main, ["preview", str(three), "--index", "1", "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(three), "--format", "tiff", "-o", str(tmp_path / "tif"),
                                  "--index", "0"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "tif").iterdir())  # + the export's resume record
    assert names == [".simaq-export.jsonl", "sample_000000_labels.tif", "sample_000000_phantom.tif",
                     *[f"sample_000000_recon_axis{k}.tif" for k in range(3)]]


def test_non_cubic_shape_with_three_axes_is_bad_input(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", SMOKE, "-o", str(out), "--cluster", "inline", *THREE,
                                       "--set", "dataset.shape=[16,32,32]"])
    assert result.exit_code == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: acquisition.axes:"), result.stderr
    assert not out.exists()
    bad = CliRunner().invoke(main, ["validate", SMOKE, "--set", "acquisition.axes=2"])
    assert bad.exit_code == 2 and "acquisition.axes" in bad.stderr


def test_info_summarises_every_axis_acquisition(three):
    r = CliRunner().invoke(main, ["info", str(three), "--index", "2"])
    assert r.exit_code == 0, r.output
    rec = records(three)[2]
    for acq in rec["acquisitions"]:
        deg = acq["angles"]["recon_deg"]
        line = f"  angles (about {acq['tilt_axis']}): {len(deg)} of {acq['angles']['n_nominal']} nominal, "
        assert any(x.startswith(line) for x in r.output.splitlines()), r.output
    assert "\ntilt axes: z, y, x, at most " in r.output, r.output


def test_three_axis_export_writes_each_axis_own_recon(three, tmp_path):
    """``recon_axis{k}`` holds acquisition k's reconstruction, in (z, y, x) as stored."""
    import tifffile

    stored = zarr.open_group(three / "dataset.zarr", mode="r")["recon"]
    dest = tmp_path / "tif"
    r = CliRunner().invoke(main, ["export", str(three), "--format", "tiff", "-o", str(dest),
                                  "--index", "1", "--arrays", "recon"])
    assert r.exit_code == 0, r.output
    got = [tifffile.imread(dest / f"sample_000001_recon_axis{k}.tif") for k in range(3)]
    for k in range(3):
        np.testing.assert_array_equal(got[k], stored[1, k])
    assert not np.array_equal(got[1], got[0]) and not np.array_equal(got[2], got[0])


@pytest.mark.parametrize("given_nm", [None, 25.0])
def test_tiff_export_records_the_voxel_size_in_micrometres(three, tmp_path, given_nm):
    """ImageJ spacing and the X/Y resolution tags state the voxel size (µm, pixels per µm):
    ``--voxel-size-nm`` when given, else 40 nm · 1.2 / scale of the sample's phantom."""
    import tifffile

    rec = next(r for r in records(three) if r["index"] == 2)
    nm = given_nm if given_nm else 40.0 * 1.2 / float(rec["phantom_spec"]["scale"])
    extra = ["--voxel-size-nm", str(given_nm)] if given_nm else []
    dest = tmp_path / "tif"
    r = CliRunner().invoke(main, ["export", str(three), "--format", "tiff", "-o", str(dest),
                                  "--index", "2", "--arrays", "labels", *extra])
    assert r.exit_code == 0, r.output
    with tifffile.TiffFile(dest / "sample_000002_labels.tif") as tif:
        ij = tif.imagej_metadata
        assert ij["unit"] in ("um", "micron", "\\u00B5m", "µm")
        assert ij["spacing"] == pytest.approx(nm / 1000.0, rel=1e-6)
        page = tif.pages[0]
        for tag in ("XResolution", "YResolution"):
            num, den = page.tags[tag].value
            assert num / den == pytest.approx(1000.0 / nm, rel=1e-5), tag
