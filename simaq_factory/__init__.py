"""simaq-factory: simulated soft X-ray tomography datasets (SimAQ), sharded Zarr v3, Dask."""

__version__ = "0.1.0"
