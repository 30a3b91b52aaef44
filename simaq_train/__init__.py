"""simaq_train: training, evaluation and inference of the hybrid 3D→2D U-Net on simaq-factory datasets.

It reads datasets only through the documented on-disk format (``README.md``, "The dataset") and
checks their schema version; it imports no phantom or physics code. Layout: ``data`` (shard reader,
epoch plans, real tomograms, mixing) → ``model`` → ``losses`` → ``engine`` (fit loop, optimiser
groups, EMA, checkpoints) → ``inference`` (sliding window, post-processing) → ``evaluate`` → ``cli``.
"""

import os as _os

# as in simaq_factory/__init__.py: huge pages for torch's large CPU tensors (set before torch loads)
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
