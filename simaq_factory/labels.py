"""Segmentation classes written to ``labels`` (uint8). One enum, used everywhere."""

from __future__ import annotations

from enum import IntEnum


class Label(IntEnum):
    """Class ids of the ``labels`` array. ``IGNORE`` marks voxels that carry no annotation."""

    BACKGROUND = 0
    CELL = 1  # cytoplasm and cell wall
    VACUOLE = 2
    LIPID_DROPLET = 3
    NUCLEUS = 4  # only when phantom.nucleus is enabled
    IGNORE = 255


LABEL_NAMES: dict[int, str] = {int(v): v.name.lower() for v in Label}
