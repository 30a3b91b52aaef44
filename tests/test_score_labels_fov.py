"""Segmentations are scored inside the field of view, as ``simaq-train evaluate`` / ``baseline``
score them; unwritten segmentations are warned about; the report's breakdown counts, the default
report folder of ``--pred .`` and the messages of a folder prediction's mistakes (audit 19)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.errors import BadInput
from simaq_factory.score.report import render_report
from simaq_factory.score.run import score

N, Z = 32, 12
LABEL_MAP = {"0": "background", "1": "cell", "2": "vacuole", "3": "lipid_droplet"}
N_CELLS = [1, 1, 2]


def _dataset(root: Path, n_axes: int = 1) -> Path:
    """A hand-made dataset of 32×32 slices (default "astra" centre): one cell with a vacuole per
    sample, a rim of FBP-like garbage outside the reconstruction circle in ``recon``."""
    rng = np.random.default_rng(19)
    n_s = len(N_CELLS)
    z = N if n_axes > 1 else Z
    yy, xx = np.mgrid[:N, :N]
    phantom = np.zeros((n_s, z, N, N), np.float32)
    labels = np.zeros((n_s, z, N, N), np.uint8)
    for i in range(n_s):
        cy, cx = 15.5 + rng.uniform(-3, 3, 2)
        cell = (yy - cy) ** 2 + (xx - cx) ** 2 < 7.0**2
        vac = (yy - cy - 2) ** 2 + (xx - cx) ** 2 < 3.0**2
        labels[i][:, cell] = 1
        labels[i][:, vac] = 2
        phantom[i] = 0.2 * cell + 0.3 * vac
    labels[:, :, 16, 16] = 255  # an ignored voxel
    rim = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 > 13.0**2
    recon = phantom + rng.normal(0, 0.08, phantom.shape).astype(np.float32)
    recon[:, :, rim] += rng.uniform(0.0, 0.6, (n_s, z, int(rim.sum()))).astype(np.float32)
    root.mkdir(parents=True)
    g = zarr.open_group(root / "dataset.zarr", mode="w", zarr_format=3,
                        attributes={"label_map": LABEL_MAP, "ignore_label": 255})
    g.create_array("phantom", data=phantom, chunks=(1, z, N, N))
    g.create_array("labels", data=labels, chunks=(1, z, N, N))
    g.create_array("recon", data=recon, chunks=(1, z, N, N))
    (root / "recipe.resolved.json").write_text(json.dumps(
        {"recipe": {"reconstruction": {}, "acquisition": {"axes": n_axes}}, "recipe_id": "fov-labels-0001"}))
    (root / "provenance").mkdir()
    records = [{"index": i, "n_cells": c, "acquisitions": [{"angles": {"span_deg": 100.0 + 10 * k}}
                                                           for k in range(n_axes)]}
               for i, c in enumerate(N_CELLS)]
    (root / "provenance" / "shard-000000.json").write_text(json.dumps({"sample_records": records}))
    return root


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("fovlab") / "ds")


def _arrays(ds: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(ds / "dataset.zarr", mode="r")
    return {k: np.asarray(g[k][...]) for k in ("phantom", "labels", "recon")}


def _zarr_pred(path: Path, **arrays: np.ndarray) -> Path:
    g = zarr.open_group(path, mode="w", zarr_format=3)
    for name, data in arrays.items():
        g.create_array(name, data=data)
    return path


def _train_fov(margin: float) -> np.ndarray:
    """The field of view of simaq-train's reader (evaluate, baseline), defined independently."""
    from simaq_train.data.normalize import fov_mask

    return fov_mask((N, N), margin)


def _iou(gt: np.ndarray, pred: np.ndarray, c: int, keep: np.ndarray) -> float:
    g, p = gt[keep], pred[keep]
    union = int(((g == c) | (p == c)).sum())
    return float(((g == c) & (p == c)).sum()) / union if union else float("nan")


# ------------------------------------------------------------------- labels inside the FOV


def test_a_segmentation_perfect_inside_the_fov_and_garbage_outside_scores_iou_1(ds, tmp_path):
    a = _arrays(ds)
    seg = np.where(a["labels"] == 255, 0, a["labels"]).astype(np.uint8)
    seg[:, :, ~_train_fov(2.0)] = 1  # "cell" everywhere outside the default field of view
    res = score(ds, [_zarr_pred(tmp_path / "p.zarr", labels=seg)])
    for row in res.rows:
        assert row["iou_cell"] == row["iou_background"] == row["iou_vacuole"] == row["mean_iou"] == 1.0
        assert row["dice_cell"] == 1.0
    conv = res.payload["conventions"]
    assert conv["fov_margin"] == 2.0 and "inside the field of view" in conv["iou_dice"]


def test_an_otsu_style_segmentation_scores_as_inside_simaq_trains_field_of_view(ds, tmp_path):
    """As ``simaq-train baseline`` segments: multi-Otsu thresholds of the recon inside the margin-5
    disk, applied to every voxel (the rim garbage gets labelled too). ``score --fov-margin M`` equals
    an independent count inside simaq-train's disk of margin M, for 5 (its default) and 2."""
    from skimage.filters import threshold_multiotsu

    a = _arrays(ds)
    disk = _train_fov(5.0)
    seg = np.stack([np.array([0, 1, 2], np.uint8)[np.digitize(r, threshold_multiotsu(r[:, disk], classes=3))]
                    for r in a["recon"]])
    pred = _zarr_pred(tmp_path / "otsu.zarr", labels=seg)
    for margin in (5.0, 2.0):
        keep = np.broadcast_to(_train_fov(margin), (Z, N, N)) & True
        res = score(ds, [pred], fov_margin=margin)
        for row in res.rows:
            i = row["index"]
            inside = keep & (a["labels"][i] != 255)
            for c, name in ((0, "background"), (1, "cell"), (2, "vacuole")):
                assert row[f"iou_{name}"] == pytest.approx(_iou(a["labels"][i], seg[i], c, inside), abs=1e-12)
    # the rim is where it differs: over every voxel the cell IoU is lower
    full = _iou(a["labels"][0], seg[0], 1, a["labels"][0] != 255)
    assert full < score(ds, [pred], fov_margin=5.0).rows[0]["iou_cell"]


def test_three_axis_segmentations_are_scored_inside_each_acquisitions_cylinder(tmp_path):
    from simaq_factory.acquisition.axes import inverse_axes

    root = _dataset(tmp_path / "three", n_axes=3)
    lab = np.asarray(zarr.open_group(root / "dataset.zarr", mode="r")["labels"][...])
    seg = np.repeat(np.where(lab == 255, 0, lab)[:, None], 3, axis=1).astype(np.uint8)
    outside = np.broadcast_to(~_train_fov(2.0)[None], (N, N, N))
    for k in range(3):
        seg[:, k][:, np.transpose(outside, inverse_axes(k))] = 1  # garbage outside the cylinder about axis k
    res = score(root, [_zarr_pred(tmp_path / "p.zarr", labels=seg)])
    assert len(res.rows) == 3 * len(N_CELLS)
    assert all(r["iou_cell"] == r["iou_background"] == 1.0 for r in res.rows)


# ------------------------------------------------------------------- unwritten segmentations


def test_a_uniform_segmentation_where_the_truth_has_foreground_is_warned_about(ds, tmp_path, caplog):
    a = _arrays(ds)
    seg = np.zeros_like(a["labels"])
    seg[0] = np.where(a["labels"][0] == 255, 0, a["labels"][0])  # samples 1, 2 never written
    with caplog.at_level(logging.WARNING):
        score(ds, [_zarr_pred(tmp_path / "part.zarr", labels=seg)])
    lines = [r.getMessage() for r in caplog.records if "unwritten?" in r.getMessage()]
    assert len(lines) == 1 and "2 segmentation(s)" in lines[0] and "(1, 2)" in lines[0], lines
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # a whole, written segmentation: no warning
        score(ds, [_zarr_pred(tmp_path / "whole.zarr", labels=np.where(a["labels"] == 255, 0, a["labels"]))])
    assert not [r for r in caplog.records if "unwritten?" in r.getMessage()]


# ------------------------------------------------------------------- report breakdown counts


def test_breakdown_tables_give_each_predictions_own_sample_count(ds, tmp_path):
    a = _arrays(ds)
    one = tmp_path / "one"
    one.mkdir()
    tifffile.imwrite(one / "0.tif", a["recon"][0])  # one sample (1 cell)
    res = score(ds, [one, _zarr_pred(tmp_path / "all.zarr", recon=a["recon"])])
    page, _ = render_report(res)
    cells = page[page.index("By cell count"):page.index("By tilt span")]
    # cells | one: samples | all: samples | medians…  (samples 0, 1 have 1 cell, sample 2 has 2)
    assert re.search(r"<tr><td>1</td><td>1</td><td>2</td>", cells), cells
    assert re.search(r"<tr><td>2</td><td>0</td><td>1</td>", cells), cells
    spans = page[page.index("By tilt span"):]
    assert re.search(r"<tr><td>[^<]+</td><td>1</td><td>3</td>", spans), spans


# ------------------------------------------------------------------- CLI: --pred . and messages


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def test_pred_dot_writes_the_default_report_beside_the_folder(ds, tmp_path, monkeypatch):
    sub = tmp_path / "sub" / "mine"
    sub.mkdir(parents=True)
    tifffile.imwrite(sub / "0.tif", _arrays(ds)["recon"][0])
    monkeypatch.chdir(sub)
    r = _invoke("score", "--gt", str(ds), "--pred", ".")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sub" / "mine-scores" / "scores.json").exists()
    assert not (sub / "-scores").exists()


def test_unequal_sample_sets_of_export_named_files_are_not_called_sub_folders(ds, tmp_path):
    a = _arrays(ds)
    flat = tmp_path / "mixexp"  # export's names, different samples per kind: no recon/ or labels/ here
    flat.mkdir()
    tifffile.imwrite(flat / "sample_000000_recon.tif", a["recon"][0])
    tifffile.imwrite(flat / "sample_000001_labels.tif", a["labels"][1])
    with pytest.raises(BadInput) as err:
        score(ds, [flat])
    msg = str(err.value)
    assert "recon/" not in msg and "_recon and ..._labels files" in msg and "sample 0 has only" in msg, msg


def test_only_labels_on_a_folder_of_recon_files_says_what_it_found(ds, tmp_path):
    a = _arrays(ds)
    only_recon = tmp_path / "exp-r"
    only_recon.mkdir()
    tifffile.imwrite(only_recon / "sample_000000_recon.tif", a["recon"][0])
    with pytest.raises(BadInput) as err:
        score(ds, [only_recon], only="labels")
    assert "holds no 'labels' prediction (found: ..._recon files)" in str(err.value), str(err.value)


def test_nan_in_a_folder_prediction_names_the_file(ds, tmp_path):
    a = _arrays(ds)
    nan = tmp_path / "nan"
    nan.mkdir()
    tifffile.imwrite(nan / "0.tif", a["recon"][0])
    bad = a["recon"][1].copy()
    bad[3, 4, 5] = np.nan
    tifffile.imwrite(nan / "1.tif", bad)
    with pytest.raises(BadInput) as err:
        score(ds, [nan])
    assert str(err.value).startswith(str(nan / "1.tif")) and "NaN" in str(err.value), str(err.value)
