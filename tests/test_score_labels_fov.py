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


# ------------------------------------------------------------------- unwritten segmentations


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
