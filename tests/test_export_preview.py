"""What ``export`` writes, checked on small synthetic arrays (no build): OME-Zarr label images that a
strict NGFF validator accepts."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from simaq_factory.store.export import _write_ngff_image

N = 32
CLASSES = {0: "background", 1: "cell", 2: "vacuole", 3: "lipid_droplet"}


def _labels() -> np.ndarray:
    zz, yy, xx = np.mgrid[:N, :N, :N]
    r2 = (zz - 16) ** 2 + (yy - 15) ** 2 + (xx - 17) ** 2
    lab = np.where(r2 < 100, 1, 0).astype(np.uint8)
    lab[r2 < 16] = 2
    lab[14:16, 18:20, 18:20] = 3
    return lab


def _label_image(tmp_path, nested: bool) -> dict:
    group = zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="w", zarr_format=2)
    _write_ngff_image(group, "labels", _labels(), 40.0, is_label=True, classes=CLASSES, nested=nested)
    return dict(zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r", zarr_format=2).attrs)


@pytest.mark.parametrize("nested", [False, True])
def test_ome_zarr_label_colours_and_class_names_list_the_same_label_values(tmp_path, nested):
    """NGFF 0.4: ``colors`` and ``properties`` both describe the image's label values; ome-zarr-models
    rejected every exported label image (background named, but given no colour)."""
    il = _label_image(tmp_path, nested)["image-label"]
    colours = {c["label-value"]: c["rgba"] for c in il["colors"]}
    names = {p["label-value"]: p["class"] for p in il["properties"]}
    assert len(colours) == len(il["colors"]) and len(names) == len(il["properties"])  # no repeats
    assert sorted(colours) == sorted(names) == sorted(CLASSES)
    assert colours[0] == [0, 0, 0, 0]  # background transparent: a viewer shows the image under it
    assert all(len(c) == 4 and c[3] == 255 and all(0 <= v <= 255 for v in c) for k, c in colours.items() if k)


def test_ome_zarr_label_image_passes_the_ngff_validator(tmp_path):
    """The OME community's validator, where it is installed."""
    image_label = pytest.importorskip("ome_zarr_models.v04.image_label")
    _label_image(tmp_path, nested=False)
    image_label.ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r"))
