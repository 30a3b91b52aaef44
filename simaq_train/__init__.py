"""simaq_train: training, evaluation and inference of the 3D→2D U-Net on simaq-factory datasets.

Not implemented yet (see the issue "simaq_train: stream frozen shards into the 3D→2D U-Net"). It
will read datasets only through the documented on-disk format (``README.md``, "The dataset").
"""
