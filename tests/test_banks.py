"""Noise banks stored in the dataset (``dataset.zarr/banks/``): hashes, reuse, repair, regeneration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.artifacts.banks import (
    BANK_NAMES,
    array_sha256,
    bank_pieces,
    bank_specs,
    generate_bank,
    generate_piece,
)
from simaq_factory.cli.main import main
from simaq_factory.errors import BuildFailed
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import load_recipe
import simaq_factory.store.banks as store_banks
from simaq_factory.store.banks import bank_path, load_banks

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
N = 32
SETS = ["dataset.shape=[32,32,32]", "dataset.chunk_z=4", "phantom.scale=0.15", "dataset.n_samples=2",
        "dataset.samples_per_shard=1"]
CPU = torch.device("cpu")


def _args(*sets: str) -> list[str]:
    return [a for s in (*SETS, *sets) for a in ("--set", s)]


def _build(out: Path, *sets: str) -> None:
    r = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--cluster", "inline", *_args(*sets)])
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("banks") / "ds"
    _build(out)
    return out


def _card(out: Path) -> dict:
    return dict(zarr.open_group(out / "dataset.zarr", mode="r").attrs)


def test_banks_are_stored_and_hashed_in_the_card(built: Path) -> None:
    recipe = load_recipe(SMOKE, SETS)
    record = _card(built)["banks"]
    specs = bank_specs(recipe.artifacts, (N, N, N), recipe.seed)
    assert sorted(record) == sorted(BANK_NAMES) == sorted(specs)
    for name, rec in record.items():
        data = zarr.open_array(bank_path(built, name), mode="r")[...]
        assert data.dtype == np.float32 and list(data.shape) == rec["shape"]
        assert rec["spec"] == specs[name] and rec["sha256"] == array_sha256(data)
        assert 0.0 <= data.min() and data.max() <= 1.0
        # the stored bank is exactly what the generator makes from the recipe seed
        assert array_sha256(generate_bank(specs[name])) == rec["sha256"]
    assert not (built / ".banks-partial").exists()


def test_render_without_a_dataset_uses_the_same_banks(built: Path) -> None:
    """Library use of ``render_sample`` (banks generated in memory) gives the stored noisy bytes."""
    recipe = load_recipe(SMOKE, SETS)
    stored = zarr.open_group(built / "dataset.zarr", mode="r")["noisy"]
    arrays, record = render_sample(recipe, 1, CPU)
    assert record["artifacts"]["ice_cracks"]["applied"]
    assert arrays["noisy"].tobytes() == stored[1].tobytes()
    again, _ = render_sample(recipe, 1, CPU, banks=load_banks(built, CPU))
    assert again["noisy"].tobytes() == arrays["noisy"].tobytes()


def test_entries_do_not_depend_on_bank_size_and_samples_not_on_banks() -> None:
    recipe = load_recipe(SMOKE, SETS)
    specs = bank_specs(recipe.artifacts, (N, N, N), recipe.seed)
    for name in ("perlin_lo_3d", "cracks", "perlin_lo_2d"):
        small = generate_bank({**specs[name], "entries": 1})
        large = generate_bank({**specs[name], "entries": 2})
        assert small[0].tobytes() == large[0].tobytes(), name
        assert large[0].tobytes() != large[1].tobytes(), name
    # banks draw from their own seed streams: resizing a bank changes no phantom or label byte
    other = load_recipe(SMOKE, [*SETS, "artifacts.banks.perlin_hi_3d.entries=3"])
    a, _ = render_sample(recipe, 0, CPU)
    b, _ = render_sample(other, 0, CPU)
    assert a["phantom"].tobytes() == b["phantom"].tobytes()
    assert a["labels"].tobytes() == b["labels"].tobytes()


def test_resume_reuses_banks_and_a_damaged_bank_is_reported_and_repaired(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _build(out)
    record = _card(out)["banks"]
    meta = {name: (bank_path(out, name) / "zarr.json").stat().st_mtime_ns for name in BANK_NAMES}
    _build(out)  # everything done: banks are checked, not rewritten
    assert {name: (bank_path(out, name) / "zarr.json").stat().st_mtime_ns for name in BANK_NAMES} == meta

    # damage one entry of the crack bank: verify names it, workers refuse it, build repairs it
    arr = zarr.open_array(bank_path(out, "cracks"), mode="r+")
    arr[0] = np.zeros(arr.shape[1:], dtype=np.float32)
    store_banks._LOADED.clear()  # as in a fresh worker process
    with pytest.raises(BuildFailed, match="cracks"):
        load_banks(out, CPU)
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 1 and "noise bank cracks" in r.output, r.output
    _build(out)
    assert _card(out)["banks"] == record
    r = CliRunner().invoke(main, ["verify", str(out), "--regen", "1"])
    assert r.exit_code == 0, r.output

    # a missing bank is regenerated too, to the recorded bytes
    import shutil

    shutil.rmtree(bank_path(out, "perlin_hi_3d"))
    _build(out)
    assert json.dumps(_card(out)["banks"], sort_keys=True) == json.dumps(record, sort_keys=True)
    r = CliRunner().invoke(main, ["verify", str(out)])
    assert r.exit_code == 0, r.output


def test_flicker_bank_holds_normalised_2d_maps_and_the_flicker_uses_it(built: Path) -> None:
    data = zarr.open_array(bank_path(built, "perlin_lo_2d"), mode="r")
    assert data.shape == (64, 32, 32) and data.metadata.dimension_names == ("entry", "y", "x")
    maps = data[...]
    assert np.allclose(maps.min(axis=(1, 2)), 0.0) and np.allclose(maps.max(axis=(1, 2)), 1.0)
    # the recon depends on the flicker bank: another set of maps (another recipe field) changes it,
    # while the phantom-space noise stays
    recipe = load_recipe(SMOKE, SETS)
    other = load_recipe(SMOKE, [*SETS, "artifacts.banks.perlin_lo_2d.res=4"])
    a, rec = render_sample(recipe, 0, CPU)
    b, _ = render_sample(other, 0, CPU)
    assert rec["sinogram_artifacts"]["flicker"]["applied"]
    assert a["noisy"].tobytes() == b["noisy"].tobytes()
    assert a["recon"].tobytes() != b["recon"].tobytes()


def test_dataset_with_another_set_of_banks_is_refused(tmp_path: Path) -> None:
    """A dataset whose card records other banks (an older version without the flicker bank) is not
    resumed: its shards used another noise model."""
    out = tmp_path / "ds"
    _build(out, "dataset.n_samples=1")
    card = _card(out)
    del card["banks"]["perlin_lo_2d"]
    zarr.open_group(out / "dataset.zarr", mode="r+").attrs.update({"banks": card["banks"]})
    r = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--cluster", "inline",
                                  *_args("dataset.n_samples=1")])
    assert r.exit_code == 2 and "perlin_lo_2d" in r.output, r.output


def test_crack_bank_from_a_process_pool_has_the_serial_bytes() -> None:
    recipe = load_recipe(SMOKE, SETS)
    spec = {**bank_specs(recipe.artifacts, (N, N, N), recipe.seed)["cracks"], "entries": 3, "edge": 16}
    serial = generate_bank(spec, processes=1)
    pooled = generate_bank(spec, processes=2)
    assert pooled.shape == (3, 16, 16, 16) and pooled.tobytes() == serial.tobytes()


@pytest.mark.parametrize("parallel", [1, 3])
def test_bank_pieces_concatenate_to_the_bank(parallel: int) -> None:
    """The pieces a cluster's workers generate, put together in order, are the bank's bytes."""
    recipe = load_recipe(SMOKE, SETS)
    specs = bank_specs(recipe.artifacts, (N, N, N), recipe.seed)
    specs["cracks"] = {**specs["cracks"], "entries": 3, "edge": 16}
    specs["perlin_hi_3d"] = {**specs["perlin_hi_3d"], "edge": 64}
    for name, spec in specs.items():
        pieces = bank_pieces(spec, parallel)
        assert pieces[0][0] == 0 and pieces[-1][1] == spec["entries"]
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        joined = np.concatenate([generate_piece(spec, a, b) for a, b in pieces])
        assert joined.tobytes() == generate_bank(spec).tobytes(), name
    assert len(bank_pieces(specs["cracks"], 3)) == 3 and len(bank_pieces(specs["cracks"], 1)) == 1
    with pytest.raises(ValueError, match="outside"):
        generate_piece(specs["cracks"], 2, 4)
