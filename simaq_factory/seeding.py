"""The random streams of a sample: every draw of sample ``i`` comes from generators derived from the
recipe seed and ``i`` alone (numpy only: ``validate`` uses them without importing torch)."""

from __future__ import annotations

import numpy as np

STREAMS = ("phantom", "artifacts", "angles", "sinogram")


def sample_rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent generators for each stage of sample ``index``."""
    root = np.random.SeedSequence(seed, spawn_key=(index,))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, root.spawn(len(STREAMS)))}


def check_first_layout(recipe) -> None:  # noqa: ANN001 - a Recipe (its import is heavier)
    """Sample 0's cells laid out and fitted into the volume as the build will (its own phantom
    stream, numpy only: milliseconds for a few cells). A recipe whose cells cannot be separated or
    fitted is bad input, refused before anything is written; the build would make its output
    folder and noise banks, then fail every shard that draws such a count."""
    from simaq_factory.errors import BadInput
    from simaq_factory.phantom.layout import PhantomLayoutError
    from simaq_factory.phantom.sample import place_cells

    try:  # without a warning per failed attempt: the error says it all
        place_cells(recipe.phantom, tuple(recipe.dataset.shape), sample_rngs(recipe.seed, 0)["phantom"], warn=False)
    except PhantomLayoutError as err:
        raise BadInput("phantom", f"sample 0 cannot be rendered: {err}") from None
