"""simaq_factory.store.banks driven directly (no build): what is stored, which hash rules, when a
bank is reused, regenerated or refused, and the load cache. Banks are kept tiny (a few entries)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from simaq_factory.artifacts.banks import BANK_NAMES, array_sha256, bank_specs, generate_bank, generate_piece
from simaq_factory.errors import BadInput, BuildFailed
from simaq_factory.recipe.io import load_recipe
import simaq_factory.store.banks as store_banks
from simaq_factory.store.banks import bank_path, bank_problems, ensure_banks, load_banks

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
SETS = ["dataset.shape=[32,32,32]", "dataset.chunk_z=4", "phantom.scale=0.15", "dataset.n_samples=1", "dataset.samples_per_shard=1",
        "artifacts.banks.perlin_lo_3d.entries=2", "artifacts.banks.perlin_hi_3d.entries=2",
        "artifacts.banks.cracks.entries=1", "artifacts.banks.perlin_lo_2d.entries=4"]
CPU = torch.device("cpu")


def _recipe(*sets: str):
    return load_recipe(SMOKE, [*SETS, *sets])


def _specs(recipe) -> dict:
    return bank_specs(recipe.artifacts, tuple(recipe.dataset.shape), recipe.seed)


def _empty_dataset(root: Path) -> Path:
    """The part of a dataset the banks need: the group holding the (still bank-less) card."""
    out = root / "ds"
    zarr.open_group(out / "dataset.zarr", mode="w", zarr_format=3, attributes={"note": "test"})
    return out


def _card(out: Path) -> dict:
    return dict(zarr.open_group(out / "dataset.zarr", mode="r").attrs)


def _set_card_banks(out: Path, banks: dict) -> None:
    zarr.open_group(out / "dataset.zarr", mode="r+").update_attributes({"banks": banks})


@pytest.fixture(scope="module")
def reference() -> dict:
    """The bytes every bank of the test recipe must hold, straight from the generator."""
    return {name: generate_bank(spec) for name, spec in _specs(_recipe()).items()}


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    out = _empty_dataset(tmp_path)
    ensure_banks(out, _recipe())
    return out


def test_each_bank_is_stored_once_per_entry_chunk_with_its_spec_and_hash(stored: Path, reference: dict):
    record = _card(stored)["banks"]
    specs = _specs(_recipe())
    assert sorted(record) == sorted(BANK_NAMES)
    for name, want in reference.items():
        arr = zarr.open_array(bank_path(stored, name), mode="r")
        data = arr[...]
        assert data.dtype == np.float32 and data.tobytes() == want.tobytes()
        assert arr.chunks == (1, *want.shape[1:])  # one chunk per entry (module docstring)
        assert dict(arr.attrs) == {"spec": specs[name], "sha256": array_sha256(want)}
        assert record[name] == {"sha256": array_sha256(want), "shape": list(want.shape),
                                "dtype": "float32", "spec": specs[name]}
    assert bank_problems(stored, _recipe()) == []
    assert not (stored / ".banks-partial").exists()


def test_the_card_hash_rules_not_the_bank_attribute(stored: Path):
    """A bank rewritten with other data *and* a matching sha256 attribute is still damaged: the
    dataset card's record is what is checked (module docstring)."""
    arr = zarr.open_array(bank_path(stored, "perlin_lo_2d"), mode="r+")
    other = np.asarray(arr[...])[::-1].copy()
    arr[...] = other
    arr.attrs["sha256"] = array_sha256(other)
    problems = bank_problems(stored, _recipe())
    assert len(problems) == 1 and "perlin_lo_2d" in problems[0]
    store_banks._LOADED.clear()
    with pytest.raises(BuildFailed, match="perlin_lo_2d"):
        load_banks(stored, CPU)


def test_a_recorded_bank_of_another_spec_is_refused_and_reported(stored: Path):
    banks = _card(stored)["banks"]
    banks["perlin_lo_3d"]["spec"] = {**banks["perlin_lo_3d"]["spec"], "octaves": 99}
    _set_card_banks(stored, banks)
    problems = bank_problems(stored, _recipe())
    assert len(problems) == 1 and "perlin_lo_3d" in problems[0] and "spec" in problems[0]
    with pytest.raises(BadInput):
        ensure_banks(stored, _recipe())
    assert _card(stored)["banks"] == banks  # nothing rewritten


def test_an_unrecorded_bank_written_for_another_seed_is_regenerated(stored: Path):
    """Banks on disk but not in the card (a crash before the card was updated) are reused only when
    written for the recipe's own spec."""
    _set_card_banks(stored, {})
    other = _recipe("seed=7")
    record = ensure_banks(stored, other)
    for name, spec in _specs(other).items():
        want = array_sha256(generate_bank(spec))
        assert record[name]["sha256"] == want
        assert array_sha256(zarr.open_array(bank_path(stored, name), mode="r")[...]) == want


def test_a_bank_that_regenerates_to_other_bytes_than_recorded_fails_the_build(stored: Path, reference: dict):
    banks = _card(stored)["banks"]
    banks["cracks"]["sha256"] = "0" * 64  # the shards "used" another bank
    _set_card_banks(stored, banks)
    with pytest.raises(BuildFailed, match="cracks"):
        ensure_banks(stored, _recipe())
    # and the card keeps the record the shards were built with
    assert _card(stored)["banks"]["cracks"]["sha256"] == "0" * 64


def test_a_damaged_bank_is_rewritten_in_place_by_ensure_banks(stored: Path, reference: dict):
    arr = zarr.open_array(bank_path(stored, "perlin_hi_3d"), mode="r+")
    arr[1] = np.zeros(arr.shape[1:], dtype=np.float32)
    assert bank_problems(stored, _recipe())
    ensure_banks(stored, _recipe())
    assert bank_problems(stored, _recipe()) == []
    data = zarr.open_array(bank_path(stored, "perlin_hi_3d"), mode="r")[...]
    assert data.tobytes() == reference["perlin_hi_3d"].tobytes()


def test_load_banks_needs_a_record_and_is_keyed_by_the_recorded_hashes(tmp_path: Path, stored: Path):
    with pytest.raises(BuildFailed):
        load_banks(_empty_dataset(tmp_path / "none"), CPU)
    store_banks._LOADED.clear()
    banks = load_banks(stored, CPU)
    assert load_banks(stored, CPU) is banks  # cached
    # the card now records another hash for a bank: the cached banks must not be handed out
    record = _card(stored)["banks"]
    record["perlin_lo_2d"]["sha256"] = "f" * 64
    _set_card_banks(stored, record)
    with pytest.raises(BuildFailed, match="perlin_lo_2d"):
        load_banks(stored, CPU)


def test_banks_made_in_pieces_by_workers_have_the_generator_bytes(tmp_path: Path, reference: dict):
    """With a piece runner (a cluster), the pieces come back in submission order and are
    concatenated per bank: the stored banks equal the serial generator's."""
    submitted = []

    def run_pieces(jobs):
        submitted.extend(jobs)
        return lambda: [generate_piece(spec, a, b) for spec, a, b in jobs]

    out = _empty_dataset(tmp_path)
    record = ensure_banks(out, _recipe("artifacts.banks.perlin_lo_3d.entries=5"), run_pieces=run_pieces,
                          parallel=3)
    assert len(submitted) > len(BANK_NAMES)  # some bank came in several pieces
    for name, spec in _specs(_recipe("artifacts.banks.perlin_lo_3d.entries=5")).items():
        want = generate_bank(spec) if name == "perlin_lo_3d" else reference[name]
        assert record[name]["sha256"] == array_sha256(want), name
        assert zarr.open_array(bank_path(out, name), mode="r")[...].tobytes() == want.tobytes()
