"""simaq-factory: simulated soft X-ray tomography datasets (SimAQ), sharded Zarr v3, Dask."""

import os as _os

# Back torch's CPU tensors of 2 MiB and more by transparent huge pages (torch reads this once, when
# it is imported, so it must come first). Every fresh full-volume temporary otherwise pays one page
# fault per 4 KiB: a new 256³ float32 tensor took 37-45 ms instead of 9-15 ms on cpu2
# (docs/performance.md). Results do not change; set THP_MEM_ALLOC_ENABLE=0 to opt out.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
