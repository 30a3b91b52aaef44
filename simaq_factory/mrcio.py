"""MRC conventions shared by every reader of outside MRC files (``score`` predictions, ``simaq-train``
tomograms and annotations)."""

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


def read_mrc_data(mrc: Any) -> np.ndarray:
    """The data of an open mrcfile object as its writer meant them (IMOD's unsigned bytes as uint8)."""
    data = np.array(mrc.data)
    if data.dtype == np.int8 and imod_unsigned_bytes(mrc.header):
        data = data.view(np.uint8)
    return data
