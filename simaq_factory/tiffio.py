"""TIFF conventions shared by every reader of outside TIFF files (``score`` predictions,
``simaq-train`` tomograms and annotations): one file, one volume."""

from __future__ import annotations

from typing import Any

import numpy as np


def tiff_volume_series(tif: Any) -> Any:
    """The one image series of an open ``tifffile.TiffFile`` that holds the volume.

    Reduced-resolution series (thumbnails, pyramid levels: NewSubfileType bit 0) are passed over.
    ``ValueError`` saying why when there is no such single series: pages of different shapes (which
    tifffile splits into series, or refuses as an "incompatible keyframe") or several volumes in one
    file, of which reading the first would silently drop slices."""
    try:
        series = list(tif.series)
    except RuntimeError as err:
        if "keyframe" in str(err):
            raise ValueError("its pages are not all one shape (and type): one volume is a stack of equal "
                             "pages") from None
        raise
    full = [s for s in series if not int(getattr(s.keyframe, "subfiletype", 0)) & 1]
    if len(full) == 1:
        return full[0]
    if not full:
        raise ValueError("holds no image series")
    shapes = ", ".join(str(tuple(s.shape)) for s in full[:4]) + (", ..." if len(full) > 4 else "")
    raise ValueError(f"holds {len(full)} image series of shapes {shapes} (pages of different shapes, or "
                     "several volumes in one file); give one volume per file")


def read_tiff_volume(tif: Any) -> np.ndarray:
    """The data of an open ``tifffile.TiffFile``'s one volume (:func:`tiff_volume_series`)."""
    return np.asarray(tiff_volume_series(tif).asarray())
