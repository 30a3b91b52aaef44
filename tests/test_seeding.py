"""Sample streams: sample ``i`` draws from ``SeedSequence(seed, spawn_key=(i,))`` (the recipe field's
documented derivation), one independent child per stage, so samples differ from one another and each
is reproducible alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import load_recipe
from simaq_factory.seeding import STREAMS, sample_rngs

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
SETS = ["dataset.shape=[32,32,32]", "dataset.chunk_z=4", "phantom.scale=0.15", "dataset.n_samples=2",
        "dataset.samples_per_shard=1"]


@pytest.mark.parametrize("seed,index", [(0, 0), (20251125, 3), (2**63 - 1, 2**32 - 1)])
def test_each_stage_draws_from_the_documented_child_of_the_samples_seed_sequence(seed, index):
    children = np.random.SeedSequence(seed, spawn_key=(index,)).spawn(len(STREAMS))
    rngs = sample_rngs(seed, index)
    assert list(rngs) == list(STREAMS)
    for name, child in zip(STREAMS, children):
        assert np.array_equal(rngs[name].integers(0, 2**62, 8), np.random.default_rng(child).integers(0, 2**62, 8))


def test_samples_stages_and_seeds_get_different_streams():
    draws = {(seed, i, name): tuple(rng.integers(0, 2**62, 4))
             for seed in (1, 2) for i in range(4) for name, rng in sample_rngs(seed, i).items()}
    assert len(set(draws.values())) == len(draws)  # 2 seeds × 4 samples × 4 stages, no two alike


def test_two_samples_of_one_recipe_render_different_data_and_say_their_spawn_key():
    recipe = load_recipe(SMOKE, SETS)
    a, rec_a = render_sample(recipe, 0, torch.device("cpu"))
    b, rec_b = render_sample(recipe, 1, torch.device("cpu"))
    assert rec_a["phantom_spec"] != rec_b["phantom_spec"]
    for name in ("phantom", "angles", "recon"):
        assert a[name].tobytes() != b[name].tobytes(), name
    assert (rec_a["seed"]["root"], rec_a["seed"]["spawn_key"]) == (recipe.seed, [0])
    assert (rec_b["seed"]["root"], rec_b["seed"]["spawn_key"]) == (recipe.seed, [1])
