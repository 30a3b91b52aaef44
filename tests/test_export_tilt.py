"""``export --arrays sinogram``: tilt series (an image stack and IMOD's ``.tlt`` angles) that other
reconstruction software reads. Oracle: scikit-image's ``iradon`` of the exported files with the
exported angles reconstructs the dataset's own reconstruction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main

import small_banks  # tests/small_banks.py

mrcfile = pytest.importorskip("mrcfile")
tifffile = pytest.importorskip("tifffile")
skimage_transform = pytest.importorskip("skimage.transform")

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
# scikit-image's rotation centre (n // 2), so its iradon is an oracle of the stored reconstruction
TINY = ["--set", "dataset.shape=[32,32,32]", "--set", "phantom.scale=0.15", "--set", "dataset.n_samples=2",
        "--set", "reconstruction.center=skimage", *small_banks.ARGS]


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tilt") / "ds"
    r = invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY)
    assert r.exit_code == 0, r.output
    return out


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_mrc_tilt_series_holds_the_acquired_projections_and_reconstructs_in_scikit_image(dataset, tmp_path):
    dest = tmp_path / "ts"
    r = invoke("export", dataset, "--format", "mrc", "-o", dest, "--arrays", "sinogram,recon")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == [
        f"sample_00000{i}_{name}" for i in range(2)
        for name in ("recon.mrc", "sinogram.mrc", "sinogram.tlt")]
    g = zarr.open_group(dataset / "dataset.zarr", mode="r")
    for i in range(2):
        angles = g["angles"][i]
        acquired = np.isfinite(angles)
        assert 0 < acquired.sum() < len(angles)  # padded rows exist and are left out
        with mrcfile.open(dest / f"sample_00000{i}_sinogram.mrc") as mrc:
            stack = mrc.data.copy()
            assert mrc.is_image_stack() and int(mrc.header.ispg) == 0
            pixel = float(mrc.voxel_size.x)
        with mrcfile.open(dest / f"sample_00000{i}_recon.mrc") as mrc:
            assert pixel == pytest.approx(float(mrc.voxel_size.x)) and mrc.is_volume()
        np.testing.assert_array_equal(stack, g["sinogram"][i][acquired])  # (A, Z, D), the stored bytes
        tlt = np.loadtxt(dest / f"sample_00000{i}_sinogram.tlt", ndmin=1)
        np.testing.assert_allclose(tlt, angles[acquired], rtol=0, atol=5e-7)
        # what a scikit-image user does with the two files: one iradon per slice (rows = tilt axis)
        recon = g["recon"][i]
        for theta, limit in ((tlt, 0.01), (-tlt, None)):
            out = np.stack([skimage_transform.iradon(stack[:, z, :].T, theta=theta, filter_name="hamming",
                                                     circle=True) for z in range(stack.shape[1])])
            err = _rel(out, recon)
            if limit is not None:
                assert err < limit, err
            else:  # the angles' sign is pinned: negated angles are far off
                assert err > 0.1, err


def test_tiff_tilt_series_and_three_axes(tmp_path):
    out = tmp_path / "tri"
    r = invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY, "--set", "dataset.n_samples=1",
               "--set", "dataset.samples_per_shard=1", "--set", "acquisition.axes=3")
    assert r.exit_code == 0, r.output
    dest = tmp_path / "ts"
    r = invoke("export", out, "--format", "tiff", "-o", dest, "--arrays", "sinogram")
    assert r.exit_code == 0, r.output
    g = zarr.open_group(out / "dataset.zarr", mode="r")
    for k in range(3):
        acquired = np.isfinite(g["angles"][0, k])
        stack = tifffile.imread(dest / f"sample_000000_sinogram_axis{k}.tif")
        np.testing.assert_array_equal(stack, g["sinogram"][0, k][acquired])
        tlt = np.loadtxt(dest / f"sample_000000_sinogram_axis{k}.tlt", ndmin=1)
        np.testing.assert_allclose(tlt, g["angles"][0, k][acquired], rtol=0, atol=5e-7)
    assert len(list(dest.glob("sample_*"))) == 6


def test_an_interrupted_tilt_series_export_writes_only_what_is_missing(dataset, tmp_path):
    dest = tmp_path / "ts"
    args = ["export", dataset, "--format", "mrc", "-o", dest, "--arrays", "sinogram", "--index", "0"]
    assert invoke(*args).exit_code == 0
    tlt = dest / "sample_000000_sinogram.tlt"
    before = tlt.stat().st_mtime_ns
    # killed after the angles were renamed into place, before the stack was
    (dest / "sample_000000_sinogram.mrc").unlink()
    lines = (dest / ".simaq-export.jsonl").read_text().splitlines()
    (dest / ".simaq-export.jsonl").write_text(
        "".join(f"{line}\n" for line in lines if json.loads(line)["file"] != "sample_000000_sinogram.mrc"))
    r = invoke(*args)
    assert r.exit_code == 0 and "wrote 1 file(s)" in r.output and "skipped 1" in r.output, r.output
    assert tlt.stat().st_mtime_ns == before and (dest / "sample_000000_sinogram.mrc").is_file()
    # a stray .tlt that no export wrote is not replaced silently
    other = tmp_path / "other"
    other.mkdir()
    (other / "sample_000000_sinogram.tlt").write_text("0.0\n")
    r = invoke("export", dataset, "--format", "mrc", "-o", other, "--arrays", "sinogram", "--index", "0")
    assert r.exit_code == 2 and "sample_000000_sinogram.tlt" in r.output and "--overwrite" in r.output
    assert sorted(p.name for p in other.iterdir()) == ["sample_000000_sinogram.tlt"]


def test_a_tilt_series_is_refused_where_it_cannot_be_written(dataset, tmp_path):
    dest = tmp_path / "never"
    r = invoke("export", dataset, "--format", "ome-zarr", "-o", dest, "--arrays", "sinogram")
    assert r.exit_code == 2 and "--arrays: 'sinogram' is a tilt series" in r.output and "mrc or tiff" in r.output
    no_sino = tmp_path / "ns"
    r = invoke("build", SMOKE, "-o", no_sino, "--cluster", "inline", *TINY, "--set", "dataset.n_samples=1",
               "--set", "dataset.samples_per_shard=1", "--set", "dataset.outputs.sinogram=false")
    assert r.exit_code == 0, r.output
    r = invoke("export", no_sino, "--format", "mrc", "-o", dest, "--arrays", "sinogram")
    assert r.exit_code == 2 and "--arrays: 'sinogram' is not in this dataset" in r.output
    assert not dest.exists()
