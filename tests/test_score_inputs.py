"""simaq_factory.score.inputs on hand-made datasets and predictions (no build): which files are
samples, which shapes and dtypes are accepted, what the ground truth reads from the card and the
provenance records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from simaq_factory.errors import BadInput
from simaq_factory.score.inputs import open_ground_truth, open_prediction

N, Z = 3, 4  # samples, edge


def _dataset(root: Path, *, records=None, label_map=None) -> Path:
    out = root / "ds"
    out.mkdir(parents=True)
    (out / "recipe.resolved.json").write_text(json.dumps({"recipe": {"acquisition": {"axes": 1}},
                                                          "recipe_id": "a" * 64}))
    card = {"recipe_id": "a" * 64, "ignore_label": 255,
            "label_map": label_map or {"0": "background", "1": "cell", "255": "ignore"}}
    g = zarr.open_group(out / "dataset.zarr", mode="w", zarr_format=3, attributes=card)
    g.create_array("phantom", shape=(N, Z, Z, Z), dtype="float32")
    g.create_array("labels", shape=(N, Z, Z, Z), dtype="uint8")
    (out / "provenance").mkdir()
    if records is None:
        records = [{"index": i, "angles": {"span_deg": 100.0 + 10 * i}, "n_cells": i + 1} for i in range(N)]
    (out / "provenance" / "shard-000000.json").write_text(json.dumps({"sample_records": records}))
    return out


@pytest.fixture
def gt(tmp_path: Path):
    return open_ground_truth(_dataset(tmp_path))


def test_ground_truth_reads_spans_cells_and_classes(gt):
    assert gt.n_samples == N and gt.shape == (Z, Z, Z)
    assert gt.spans_deg == [100.0, 110.0, 120.0] and gt.n_cells == [1, 2, 3]  # sample 0 included
    assert gt.classes == {0: "background", 1: "cell"}  # the ignore label is not a class
    assert gt.center == (Z - 1) / 2 and gt.radius == Z // 2


def test_a_sample_without_a_provenance_record_is_not_built(tmp_path: Path):
    records = [{"index": i, "angles": {"span_deg": 90.0}, "n_cells": 1} for i in (0, 2)]
    with pytest.raises(BadInput, match="1 of 3 samples are not built"):
        open_ground_truth(_dataset(tmp_path, records=records))


def _write(path: Path, vol: np.ndarray) -> None:
    tifffile.imwrite(path, vol, photometric="minisblack")


def _vol(dtype=np.float32, shape=(Z, Z, Z)) -> np.ndarray:
    return np.arange(np.prod(shape)).reshape(shape).astype(dtype)


def test_folder_files_are_named_by_a_sample_index_inside_the_dataset(gt, tmp_path: Path):
    ok = tmp_path / "ok"
    ok.mkdir()
    for name in ("0.tif", "000002.tif", "sample_1.tiff"):
        _write(ok / name, _vol())
    pred = open_prediction(ok, gt)
    assert pred.indices == [0, 1, 2] and pred.kinds == ["recon"]
    assert np.array_equal(pred.read["recon"](2), _vol())
    last = tmp_path / "last"  # index N is one past the last sample
    last.mkdir()
    _write(last / f"{N}.tif", _vol())
    with pytest.raises(BadInput, match="outside"):
        open_prediction(last, gt)
    twice = tmp_path / "twice"  # 1.tif and 001.tif are the same sample
    twice.mkdir()
    _write(twice / "1.tif", _vol())
    _write(twice / "001.tif", _vol())
    with pytest.raises(BadInput, match="twice"):
        open_prediction(twice, gt)


def test_recon_and_labels_subfolders_must_cover_the_same_samples(gt, tmp_path: Path):
    p = tmp_path / "p"
    (p / "recon").mkdir(parents=True)
    (p / "labels").mkdir()
    _write(p / "recon" / "0.tif", _vol())
    _write(p / "recon" / "1.tif", _vol())
    _write(p / "labels" / "0.tif", _vol(np.uint8))
    with pytest.raises(BadInput, match="same sample indices"):
        open_prediction(p, gt)
    _write(p / "labels" / "1.tif", _vol(np.uint8))
    assert sorted(open_prediction(p, gt).kinds) == ["labels", "recon"]


def test_a_file_of_another_shape_is_refused_when_read(gt, tmp_path: Path):
    p = tmp_path / "p"
    p.mkdir()
    _write(p / "0.tif", _vol(shape=(Z, Z, Z + 1)))
    pred = open_prediction(p, gt)
    with pytest.raises(BadInput, match="shape"):
        pred.read["recon"](0)


def test_zarr_predictions_check_dtype_and_source_dataset(gt, tmp_path: Path):
    bad = zarr.open_group(tmp_path / "float-labels.zarr", mode="w")
    bad.create_array("labels", data=np.zeros((N, Z, Z, Z), np.float32))
    with pytest.raises(BadInput, match="integers"):
        open_prediction(tmp_path / "float-labels.zarr", gt)
    # a baseline names its source dataset in attrs.source; that wins over any copied recipe_id
    other = zarr.open_group(tmp_path / "other.zarr", mode="w",
                            attributes={"source": {"recipe_id": "b" * 64}, "recipe_id": "a" * 64})
    other.create_array("recon", data=np.zeros((N, Z, Z, Z), np.float32))
    with pytest.raises(BadInput, match="another dataset"):
        open_prediction(tmp_path / "other.zarr", gt)
