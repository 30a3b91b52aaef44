"""simaq_train on a real three-axis simaq-factory dataset (``acquisition.axes = 3``): every window of
acquisition k is in the frame of k (tilt axis first, beam at 0° along the rows), and its labels line
up with its reconstruction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from simaq_factory.acquisition.axes import frame_axes
from simaq_factory.cli.main import main as factory
from simaq_train.config import config_from_dict
from simaq_train.data.build import build_stream, resolve_classes
from simaq_train.data.normalize import quantile_normalize
from simaq_train.data.sources import FactorySource
from simaq_train.data.stream import window_indices

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
MARGIN = 2.0


@pytest.fixture(scope="module")
def tri(tmp_path_factory) -> Path:
    """A frozen 32³ dataset of 2 samples, each acquired about z, y and x."""
    out = tmp_path_factory.mktemp("tri") / "ds"
    r = CliRunner().invoke(factory, ["build", str(REPO / "recipes" / "smoke.yaml"), "-o", str(out),
                                     "--cluster", "inline", "--set", "acquisition.axes=3",
                                     "--set", "dataset.shape=[32,32,32]", "--set", "dataset.n_samples=2",
                                     "--set", "phantom.scale=0.15", "--set", "dataset.outputs.sinogram=false",
                                     "--set", "dataset.outputs.noisy=false", *small_banks.ARGS])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(factory, ["freeze", str(out)]).exit_code == 0
    return out


def test_each_acquisition_is_read_in_its_own_frame(tri):
    g = zarr.open_group(tri / "dataset.zarr", mode="r")
    card, recon, labels = dict(g.attrs), g["recon"][...], g["labels"][...]
    assert recon.shape == (2, 3, 32, 32, 32) and card["tilt_axes"] == [0, 1, 2]
    src = FactorySource(tri, n_classes=4, fov_margin=MARGIN)
    assert len(src) == 6
    for a, k in enumerate(card["tilt_axes"]):
        # the source takes the card's permutation, which is the factory's frame of axis k
        assert src.perms[a] == tuple(card["axis_frames"][a]["permutation"]) == frame_axes(k)
    for v in range(len(src)):
        s, a = src.locate(v)
        perm = card["axis_frames"][a]["permutation"]
        img, lab = src.load(v)
        raw = np.transpose(recon[s, a], perm)
        assert np.array_equal(img, quantile_normalize(raw, MARGIN))
        inside = lab != 255
        assert np.array_equal(lab[inside], np.transpose(labels[s], perm)[inside])
        # tilt axis first: FBP clips to a cylinder about the tilt axis, so the raw zeros (outside
        # it) are the same pixels on every slice along axis 0 of the frame
        zeros = raw == 0
        assert zeros[0].any() and (zeros == zeros[:1]).all(), (s, a)
        # beam at 0° along the rows: the missing wedge blurs along axis 1, not axis 2 (np.moveaxis
        # instead of the frame's permutation puts the blur on the columns for the y axis)
        rows = np.abs(np.diff(img, axis=1)).mean()
        cols = np.abs(np.diff(img, axis=2)).mean()
        assert rows < 0.85 * cols, (s, a, rows / cols)
        # labels line up with the reconstruction: cells are clearly brighter than background
        fg = img[inside & (lab > 0)].mean()
        bg = img[inside & (lab == 0)].mean()
        assert fg > bg + 0.5, (s, a, fg, bg)


def test_windows_of_every_axis_come_from_its_frame(tri):
    cfg = resolve_classes(config_from_dict({
        "seed": 1, "data": {"train": [str(tri)], "background_drop": 0.0, "fov_margin": MARGIN},
        "model": {"init_features": 4, "depth": 2, "out_channels": 0}, "optim": {"batch_size": 16},
        "augment": {"enable": False}}))
    stream = build_stream(cfg)[0]
    src = stream.sources[0]
    assert set(stream.table[:, 1].tolist()) == set(range(6))  # windows from all three axes of both samples
    vols = {v: src.load(v) for v in range(len(src))}
    seen = set()
    for batch in stream:
        rows = stream.plan()[batch["index"]]
        for img, tgt, row in zip(batch["image"].numpy(), batch["target"].numpy(), rows):
            _, v, z = (int(x) for x in stream.table[row])
            vol, lab = vols[v]
            assert np.array_equal(img[0], vol[window_indices(z, vol.shape[0], 7, "reflect")])
            assert np.array_equal(tgt, lab[z])
            seen.add(src.locate(v)[1])
    assert seen == {0, 1, 2}


def test_baseline_scores_every_acquisition_axis_or_the_first(tri, tmp_path):
    import json

    from simaq_train.cli import cli

    r = CliRunner().invoke(cli, ["baseline", str(tri), "-o", str(tmp_path / "all"), "--physical-order"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "all" / "baseline.json").read_text())
    assert rep["samples"] == 2 and rep["rows"] == 6 and "(6 acquisitions)" in r.output
    assert sorted((row["index"], row["axis"]) for row in rep["per_sample"]) == [
        (s, k) for s in range(2) for k in range(3)]
    r = CliRunner().invoke(cli, ["baseline", str(tri), "-o", str(tmp_path / "first"), "--physical-order",
                                 "--axes", "first"])
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "first" / "baseline.json").read_text())
    assert first["rows"] == 2 and all("axis" not in row for row in first["per_sample"])
    # acquisition 0 of "all" is exactly what "first" scores, volume for volume
    from simaq_train.evaluate import otsu_predictor, sample_confusions

    kw = dict(n_classes=4, fov_margin=5.0, n_pred=4)
    cms_all, src_all = sample_confusions(tri, otsu_predictor(4), axes="all", **kw)
    cms_first, _ = sample_confusions(tri, otsu_predictor(4), axes="first", **kw)
    axis0 = [cm for v, cm in enumerate(cms_all) if src_all.locate(v)[1] == 0]
    assert len(axis0) == len(cms_first) == 2
    assert all(np.array_equal(a, b) for a, b in zip(axis0, cms_first))
    assert not all(np.array_equal(cms_all[0], cm) for cm in cms_all[1:3])  # other axes differ
    bad = CliRunner().invoke(cli, ["baseline", str(tri), "-o", str(tmp_path / "x"), "--axes", "two"])
    assert bad.exit_code == 2 and "--axes" in bad.output
