"""Data: dataset sources (simaq-factory Zarr, real tomograms), normalisation, the epoch stream."""
