"""``render_sample`` from Python: a device name or a ``torch.device``, and an index of the dataset,
each refused naming it before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import load_recipe

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke.yaml"
SETS = ["dataset.shape=[32,32,32]", "dataset.chunk_z=4", "phantom.scale=0.15", "dataset.n_samples=2",
        "dataset.samples_per_shard=1"]


@pytest.fixture(scope="module")
def recipe():  # type: ignore[no-untyped-def]
    return load_recipe(SMOKE, SETS)


@pytest.mark.parametrize("index", [-1, 2, 10**6, True, 1.0, "0"])
def test_an_index_outside_the_dataset_is_named(recipe, index, monkeypatch):
    """-1 raised NumPy's 'expected non-negative integer'; 2 (n_samples = 2) rendered without a word."""
    import simaq_factory.pipeline as pipeline

    monkeypatch.setattr(pipeline, "sample_phantom", lambda *a: pytest.fail("rendered"))
    with pytest.raises(ValueError, match=r"^index: must be an int from 0 to dataset.n_samples - 1 = 1, got "):
        render_sample(recipe, index, torch.device("cpu"))


def test_a_device_name_renders_the_bytes_a_torch_device_does(recipe, monkeypatch):
    """render_sample(recipe, 0, "cpu") failed ('str' object has no attribute 'type') after the
    phantom had been sampled."""
    a, rec_a = render_sample(recipe, 1, torch.device("cpu"))
    b, rec_b = render_sample(recipe, np.int64(1), "cpu")
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert rec_a["phantom_spec"] == rec_b["phantom_spec"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    c, _ = render_sample(recipe, 1, "auto")  # auto: the CPU here
    assert c["recon"].tobytes() == a["recon"].tobytes()


@pytest.mark.parametrize("device,says", [
    ("gpu", "unknown device 'gpu'"), (torch.device("meta"), "unknown device 'meta'"),
    ("cuda", "'cuda' requested but CUDA is not available here"),
])
def test_a_bad_device_is_named_before_any_work(recipe, device, says, monkeypatch):
    import simaq_factory.pipeline as pipeline

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(pipeline, "sample_phantom", lambda *a: pytest.fail("rendered"))
    with pytest.raises(ValueError, match=rf"^device: {says}"):
        render_sample(recipe, 0, device)
