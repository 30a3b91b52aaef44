"""MRC conventions shared by every reader of outside MRC files (``score`` predictions, ``simaq-train``
tomograms and annotations): IMOD's unsigned bytes and the MAPC/MAPR/MAPS axis mapping."""

from __future__ import annotations

from typing import Any

import numpy as np

#: IMOD's header stamp (bytes 152-155: "IMOD" read as an int32); its flags follow (bytes 156-159).
IMOD_STAMP = 1146047817


def imod_unsigned_bytes(header: Any) -> bool:
    """Whether the mode-0 data of an mrcfile ``header`` are unsigned bytes: IMOD stamps its files and
    clears bit 0 of its flags for unsigned bytes (its default since 4.2.23; set means signed).
    Without IMOD's stamp, mode 0 is signed (MRC2014), as mrcfile reads it."""
    if int(header["mode"]) != 0:
        return False
    raw = np.asarray(header["extra2"]).tobytes()[40:48]  # extra2 spans header bytes 112-195
    stamp, flags = np.frombuffer(raw, dtype=np.dtype(np.int32).newbyteorder(header["nx"].dtype.byteorder))
    return int(stamp) == IMOD_STAMP and not int(flags) & 1


def axis_labels(header: Any) -> tuple[int, int, int]:
    """Which axis (1 = x, 2 = y, 3 = z) the file's sections, rows and columns run along: MAPS,
    MAPR, MAPC (3, 2, 1 for the usual layout)."""
    return int(header["maps"]), int(header["mapr"]), int(header["mapc"])


def read_mrc_data(mrc: Any) -> np.ndarray:
    """The data of an open mrcfile object as its writer meant them: IMOD's unsigned bytes as uint8,
    and a volume in (z, y, x) order whatever axes MAPC/MAPR/MAPS assign to the file's columns, rows
    and sections. ValueError when they are not a permutation of 1, 2, 3."""
    data = np.array(mrc.data)
    if data.dtype == np.int8 and imod_unsigned_bytes(mrc.header):
        data = data.view(np.uint8)
    labels = axis_labels(mrc.header)
    if data.ndim == 3 and labels != (3, 2, 1):
        if sorted(labels) != [1, 2, 3]:
            raise ValueError(f"MRC axis mapping MAPC/MAPR/MAPS = {labels[::-1]} is not a permutation of 1, 2, 3")
        data = np.transpose(data, [labels.index(3), labels.index(2), labels.index(1)])
    return data
