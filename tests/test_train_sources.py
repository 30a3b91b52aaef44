"""Unit checks of simaq_train.data.sources against hand-made label volumes and dataset cards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from simaq_factory.errors import BadInput
from simaq_train.data.sources import (
    IGNORE,
    check_labels,
    class_names,
    frame_permutations,
    infer_n_classes,
    open_dataset,
    slice_index,
    tilt_axes_of,
)


def test_slice_index_flags_labelled_and_foreground_slices():
    labels = np.full((5, 4, 4), IGNORE, dtype=np.uint8)
    labels[1, 0, 0] = 0  # annotated background only
    labels[2, 3, 3] = 1  # class 1
    labels[3, 1, 2] = 3  # class 3 among ignored pixels
    labels[4] = 0
    labels[4, 2, 2] = 2
    idx = slice_index(labels)
    assert idx.labelled.tolist() == [False, True, True, True, True]
    assert idx.foreground.tolist() == [False, False, True, True, True]


def test_check_labels_refuses_exactly_the_class_ids_the_model_lacks():
    ok = np.array([[[0, 1, 2, 3, IGNORE]]], dtype=np.uint8)
    check_labels(ok, 4, "here")  # 0..3 and the ignore label are fine with 4 classes
    with pytest.raises(BadInput, match="4 >= model.out_channels=4"):
        check_labels(np.array([[[0, 4]]], dtype=np.uint8), 4, "here")


def test_cards_without_axis_frames_use_the_cyclic_frames():
    """Module docstring: no ``axis_frames`` means the frames (k, k+1, k+2) mod 3."""
    assert frame_permutations({}, [0, 1, 2], "w") == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    card = {"axis_frames": [{"permutation": [1, 0, 2]}]}
    assert frame_permutations(card, [1], "w") == [(1, 0, 2)]
    for bad in ([0, 1, 2], [1, 1, 2], [1, 2]):  # must start with the tilt axis and be a permutation
        with pytest.raises(BadInput):
            frame_permutations({"axis_frames": [{"permutation": bad}]}, [1], "w")


def test_tilt_axes_must_be_distinct_axes():
    assert tilt_axes_of({}, 4, "w") == [0]
    assert tilt_axes_of({"tilt_axes": [0, 2, 1]}, 5, "w") == [0, 2, 1]
    for bad in ([0, 0], [3], [], "0"):
        with pytest.raises(BadInput):
            tilt_axes_of({"tilt_axes": bad}, 5, "w")
    with pytest.raises(BadInput):
        tilt_axes_of({"tilt_axes": [0, 1]}, 4, "w")


def test_class_names_come_from_the_card_label_map():
    card = {"label_map": {"0": "bg", "1": "cell", "4": "nucleus"}}
    assert class_names(card, 5) == ["bg", "cell", "vacuole", "lipid_droplet", "nucleus"]
    assert class_names({}, 5)[4] == "class4"


def _dataset(root: Path, *, status: str = "complete", nucleus: bool = True) -> Path:
    g = zarr.open_group(root / "dataset.zarr", mode="w", zarr_format=3, attributes={
        "schema_version": 1, "status": status, "ignore_label": 255,
        "label_map": {"0": "background", "1": "cell", "2": "vacuole", "3": "lipid_droplet", "4": "nucleus",
                      "255": "ignore"}})
    g.create_array("recon", shape=(1, 4, 4, 4), dtype="float32")
    g.create_array("labels", shape=(1, 4, 4, 4), dtype="uint8")
    (root / "recipe.resolved.json").write_text(json.dumps({"recipe": {"phantom": {"nucleus": {"enabled": nucleus}}}}))
    return root


def test_number_of_classes_follows_the_label_map_and_the_nucleus_switch(tmp_path: Path):
    assert infer_n_classes(_dataset(tmp_path / "a")) == 5  # ids 0..4, the ignore label left out
    assert infer_n_classes(_dataset(tmp_path / "b", nucleus=False)) == 4


@pytest.mark.parametrize("status", ["building", "incomplete"])
def test_unfinished_datasets_are_refused(tmp_path: Path, status: str):
    with pytest.raises(BadInput, match=status):
        open_dataset(_dataset(tmp_path, status=status))
    open_dataset(_dataset(tmp_path / "done", status="complete"))
