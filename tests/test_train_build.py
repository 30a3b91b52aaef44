"""simaq_train.data.build: class resolution, the checks a training dataset gets before a run, and the
stream description, on tiny synthetic datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from simaq_factory.errors import BadInput
from simaq_train.config import config_from_dict
from simaq_train.data.build import build_stream, check_fov, resolve_classes
from simaq_train.data.sources import FactorySource
from simaq_train.testing import write_synthetic_dataset


def _cfg(train: list[Path], depth: int = 3, **data) -> object:  # type: ignore[no-untyped-def]
    tree = {"seed": 1, "data": {"train": [str(p) for p in train], **data},
            "model": {"init_features": 4, "depth": depth, "out_channels": 0}, "optim": {"batch_size": 2},
            "augment": {"enable": False}}
    return config_from_dict(tree)


def _set_label_map(root: Path, label_map: dict[str, str]) -> Path:
    g = zarr.open_group(root / "dataset.zarr", mode="r+")
    g.attrs["label_map"] = label_map
    return root


def test_classes_come_from_the_card_must_agree_and_an_explicit_count_is_kept(tmp_path):
    four = write_synthetic_dataset(tmp_path / "four", n_samples=2, shape=(8, 16, 16), seed=1)
    five = _set_label_map(write_synthetic_dataset(tmp_path / "five", n_samples=2, shape=(8, 16, 16), seed=2),
                          {"0": "background", "1": "cell", "2": "vacuole", "3": "lipid_droplet", "4": "mitochondrion"})
    assert resolve_classes(_cfg([four])).model.out_channels == 4
    assert resolve_classes(_cfg([five])).model.out_channels == 5
    with pytest.raises(BadInput, match="disagree"):
        resolve_classes(_cfg([four, five]))
    explicit = config_from_dict({"data": {"train": [str(four)]}, "model": {"out_channels": 6}})
    assert resolve_classes(explicit).model.out_channels == 6  # the user's count wins
    one = _set_label_map(write_synthetic_dataset(tmp_path / "one", n_samples=1, shape=(8, 16, 16), seed=3),
                         {"0": "background"})
    with pytest.raises(BadInput, match="1 classes"):
        resolve_classes(_cfg([one]))


def test_in_plane_sizes_must_be_multiples_of_2_to_the_depth_minus_1(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=2, shape=(8, 20, 20), seed=4)
    build_stream(resolve_classes(_cfg([ds], depth=3, fov_margin=2.0)))  # 20 = 5 · 2²: fine
    with pytest.raises(BadInput, match="divisible"):
        build_stream(resolve_classes(_cfg([ds], depth=4, fov_margin=2.0)))  # 20 is no multiple of 8
    wide = write_synthetic_dataset(tmp_path / "wide", n_samples=2, shape=(8, 24, 20), seed=5)
    with pytest.raises(BadInput, match=r"\(24, 20\) not divisible"):  # the width alone fails
        build_stream(resolve_classes(_cfg([wide], depth=4, fov_margin=2.0)))


def test_training_shapes_crop_and_fov_margin_are_checked(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n_samples=2, shape=(8, 24, 32), seed=6)
    b = write_synthetic_dataset(tmp_path / "b", n_samples=2, shape=(8, 32, 32), seed=7)
    with pytest.raises(BadInput, match="differ in in-plane shape"):
        build_stream(resolve_classes(_cfg([a, b], fov_margin=2.0)))
    build_stream(resolve_classes(_cfg([a], crop=24, fov_margin=2.0)))  # the smaller side: fine
    with pytest.raises(BadInput, match="data.crop"):
        build_stream(resolve_classes(_cfg([a], crop=28, fov_margin=2.0)))  # larger than 24
    c = write_synthetic_dataset(tmp_path / "c", n_samples=2, shape=(8, 16, 16), seed=8)
    src = FactorySource(c, n_classes=4, fov_margin=2.0)
    check_fov(src, "data.val", 7.9)  # a sliver of field of view is left
    with pytest.raises(BadInput, match="data.val.*field-of-view margin 8.0"):  # 16/2 - 8 = 0: none
        check_fov(src, "data.val", 8.0)
    with pytest.raises(BadInput, match="field-of-view margin 8.0"):  # the build checks it too
        build_stream(resolve_classes(_cfg([c], fov_margin=8.0)))


def test_stream_description_counts_volumes_windows_and_background_windows(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=3, shape=(16, 24, 24), empty_margin=4, seed=9)
    stream, info = build_stream(resolve_classes(_cfg([ds], fov_margin=2.0)))
    labels = np.asarray(zarr.open_group(ds / "dataset.zarr", mode="r")["labels"][...])
    assert info["volumes"] == 3 and info["real_volumes"] == 0
    assert info["shape_yx"] == [24, 24]
    assert info["windows"] == len(stream.table) > 0
    empty = [not labels[v, z].any() for _, v, z in stream.table]
    assert info["background_windows"] == sum(empty) > 0  # the empty z-margins
    assert info["background_windows"] < info["windows"]
    assert list(info["datasets"]) == [str(ds)]
    json.dumps(info)  # a plain JSON description


def test_a_dataset_without_any_labelled_slice_is_refused(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=2, shape=(8, 16, 16), seed=10, frozen=False)
    g = zarr.open_group(ds / "dataset.zarr", mode="r+")
    g["labels"][...] = np.full(g["labels"].shape, 255, np.uint8)
    with pytest.raises(BadInput, match="no labelled window"):
        build_stream(resolve_classes(_cfg([ds], fov_margin=2.0)))


def test_real_data_options_that_find_no_annotated_tomogram_are_refused(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=2, shape=(8, 16, 16), seed=11)
    empty = tmp_path / "real"
    empty.mkdir()
    cfg = _cfg([ds], fov_margin=2.0, real={"dirs": [str(empty)], "ratio": 0.25})
    with pytest.raises(BadInput, match="data.real"):
        build_stream(resolve_classes(cfg))
