"""Damage the hand-over commands (status, info, verify, freeze) must name for what it is: edited array
metadata, a lost resolved recipe, misplaced or edited provenance records, stray files in the store,
and stored samples that --regen cannot decode or that differ from a fresh rendering (NaN, sinogram,
angles). One 32³ dataset is built per module and copied per test."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.store.dataset import RECORD_DIGEST, record_digest

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _set(doc: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    doc[leaf] = value


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    """The smoke recipe at 32³ with small noise banks, written out whole (no --set: its
    ``recipe.yaml`` hashes to the dataset's id, as after the README's own build)."""
    doc = yaml.safe_load((REPO / "recipes" / "smoke.yaml").read_text())
    doc["dataset"]["shape"] = [32, 32, 32]
    doc["phantom"]["scale"] = "auto"
    for setting in small_banks.SETS:
        key, value = setting.split("=")
        _set(doc, key, int(value))
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def build(recipe_file: Path, out: Path):
    return cli("build", recipe_file, "-o", out, "--cluster", "inline")


@pytest.fixture(scope="module")
def built(recipe_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("damage") / "out"
    result = build(recipe_file, out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def frozen(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frozen") / "out"
    shutil.copytree(built, out)
    result = cli("freeze", out)
    assert result.exit_code == 0, result.output
    return out


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def record_path(out: Path, shard: int) -> Path:
    return out / "provenance" / f"shard-{shard:06d}.json"


def rewrite_shard_0(out: Path, name: str, change: Callable[[np.ndarray], None]) -> None:
    """Change shard 0 of ``name`` in place and record the new file's sha256 (and the record's own
    digest), so that the checksums still verify: only --deep or --regen can see it."""
    g = zarr.open_group(out / "dataset.zarr", mode="r+")
    data = g[name][0:2]
    change(data)
    g[name][0:2] = data
    record = record_path(out, 0)
    prov = json.loads(record.read_text())
    shard = out / "dataset.zarr" / name / ("c/" + "/".join(["0"] * data.ndim))
    prov["checksums"][name] = hashlib.sha256(shard.read_bytes()).hexdigest()
    record.write_text(json.dumps({**prov, RECORD_DIGEST: record_digest(prov)}))


def status_json(out: Path) -> dict:
    result = cli("status", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def verify_json(out: Path, *flags: str) -> dict:
    result = cli("verify", out, "--json", *flags)
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)  # one document, also when a problem is found


# -- provenance records: misplaced, missing from a frozen dataset, edited -------------------------

def test_swapped_provenance_records_are_named_misplaced_not_the_data_files(built, recipe_file, tmp_path):
    out = copy_of(built, tmp_path)
    a, b = record_path(out, 0), record_path(out, 1)
    text_a, text_b = a.read_text(), b.read_text()
    a.write_text(text_b)
    b.write_text(text_a)
    st = status_json(out)
    assert st["problems"] == [
        {"shard": 0, "reason": "provenance record is that of shard 1 (misplaced; it belongs at "
                               "provenance/shard-000001.json)"},
        {"shard": 1, "reason": "provenance record is that of shard 0 (misplaced; it belongs at "
                               "provenance/shard-000000.json)"}], st
    result = cli("verify", out)
    assert result.exit_code == 1 and "shard file" not in result.output, result.output
    assert "problem: shard 0 (samples 0-1): provenance record is that of shard 1 (misplaced" in result.output


# -- freeze: stray files inside the store -----------------------------------------------------

STRAYS = {
    "in-an-array": ("dataset.zarr/recon/c/7", None),
    "past-the-shards": ("dataset.zarr/recon/c/9/0/0/0", "dataset.zarr/recon/c/0/0/0/0"),
    "past-a-banks-chunks": ("dataset.zarr/banks/cracks/c/9/0/0/0", "dataset.zarr/banks/cracks/c/0/0/0/0"),
    "a-record-of-no-shard": ("provenance/shard-000099.json", None),
    "in-the-group": ("dataset.zarr/notes.txt", None),
}


@pytest.mark.parametrize("stray", sorted(STRAYS))
def test_freeze_refuses_stray_files_in_the_store_and_the_records(built, tmp_path, stray):
    out = copy_of(built, tmp_path)
    rel, source = STRAYS[stray]
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((out / source).read_bytes() if source else b"{}\n")
    result = cli("freeze", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not part of the dataset's layout"), lines
    assert not (out / "SHA256SUMS").exists() and not (out / "manifest.jsonl").exists()
    path.unlink()
    assert cli("freeze", out).exit_code == 0
