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


def read_tiff_volume(tif: Any, series: Any = None) -> np.ndarray:
    """The data of an open ``tifffile.TiffFile``'s one volume (``series``, by default
    :func:`tiff_volume_series`). ``ValueError`` naming the compression when its codec needs the
    package imagecodecs (LZW, the floating-point predictor: what Fiji and microscopes often write),
    with how to get it; tifffile's own message says neither."""
    series = tiff_volume_series(tif) if series is None else series
    try:
        return np.asarray(series.asarray())
    except ValueError as err:
        if "imagecodecs" not in str(err):
            raise
        page = series.keyframe
        codec = " with the ".join(str(getattr(v, "name", v)) for v in (page.compression, page.predictor) if int(v) > 1)
        raise ValueError(f"compressed ({codec}), which tifffile decodes with the Python package imagecodecs: "
                         "pip install imagecodecs (or 'simaq-factory[io]'), or save the TIFF uncompressed") from None
