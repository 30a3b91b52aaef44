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


# -- array metadata: the whole zarr.json, codecs included ---------------------------------------

EDITS = {  # one-word edits of the codecs: intact shard files decode to garbage or not at all
    "recon-big-endian": ("recon", lambda text: text.replace('"little"', '"big"', 1)),
    "labels-index-at-start": ("labels", lambda text: text.replace('"index_location": "end"',
                                                                  '"index_location": "start"')),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edit_to_an_arrays_codecs_is_named_and_build_rewrites_it(built, recipe_file, tmp_path, edit):
    out = copy_of(built, tmp_path)
    name, change = EDITS[edit]
    meta = out / "dataset.zarr" / name / "zarr.json"
    original = json.loads(meta.read_text())
    edited = change(meta.read_text())
    assert edited != meta.read_text()
    meta.write_text(edited)
    st = status_json(out)
    assert st["state"] == "damaged" and st["metadata_damaged"] == 1, st
    assert st["dataset_problems"][0].startswith(f"{meta}: array metadata of {name} does not match the recipe: "
                                                "its codecs differ"), st
    assert st["damaged"] == 0  # the shard files match their checksums: not theirs the fault
    deep = cli("verify", out, "--deep")
    assert deep.exit_code == 1
    problems = [line for line in deep.output.splitlines() if line.startswith("problem:")]
    assert problems == [f"problem: {st['dataset_problems'][0]}"], deep.output  # no sample blamed
    assert "remove provenance" not in deep.stderr and "repairs what is damaged" in deep.stderr, deep.stderr
    assert cli("freeze", out).exit_code == 1  # not sealed
    rebuilt = build(recipe_file, out)
    assert rebuilt.exit_code == 0 and "wrote 0 shard(s)" in rebuilt.output, rebuilt.output
    assert json.loads(meta.read_text()) == original
    assert cli("verify", out, "--deep").exit_code == 0


# -- --regen: NaN, undecodable samples, sinogram and angles -------------------------------------

def test_regen_reports_a_stored_recon_holding_nan(built, tmp_path):
    out = copy_of(built, tmp_path)

    def nan(data: np.ndarray) -> None:
        data[0, 5, 5, 5] = np.nan

    rewrite_shard_0(out, "recon", nan)
    assert cli("verify", out).exit_code == 0  # the checksums cannot see it
    doc = verify_json(out, "--regen", "4")
    assert "sample 0: regenerated recon differs (non-finite values where the other has finite ones)" \
        in doc["problems"], doc
    assert doc["problem_shards"] == [0], doc


def test_regen_reports_an_undecodable_stored_sample_as_a_problem(built, tmp_path):
    out = copy_of(built, tmp_path)
    meta = out / "dataset.zarr" / "labels" / "zarr.json"
    shard = out / "dataset.zarr" / "labels" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(b"\0" * 64 + shard.read_bytes()[64:])  # the index survives, the first chunk not
    record = record_path(out, 0)
    prov = json.loads(record.read_text())
    prov["checksums"]["labels"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    record.write_text(json.dumps({**prov, RECORD_DIGEST: record_digest(prov)}))
    assert cli("verify", out).exit_code == 0 and meta.is_file()
    doc = verify_json(out, "--regen", "1")
    assert doc["regenerated"] == [0] and doc["problem_shards"] == [0], doc
    assert [p.split(" (")[0] for p in doc["problems"]] == ["sample 0: stored labels unreadable"], doc
    plain = cli("verify", out, "--regen", "1")
    assert plain.exit_code == 1 and "problem: sample 0: stored labels unreadable (" in plain.output
    assert "Traceback" not in plain.output and len(plain.stderr.strip().splitlines()) == 1, plain.stderr


CHANGES = {
    # a sinogram value off by far more than rounding; the first angle moved; a NaN pad past the
    # tilt series filled in (the stored angles hold more angles than the sample was rendered with)
    "sinogram": ("sinogram", lambda d: d.__setitem__((0, 0, 16, 16), d[0, 0, 16, 16] + 50.0),
                 "regenerated sinogram differs (relative L2"),
    "angles": ("angles", lambda d: d.__setitem__((0, 0), d[0, 0] + 0.5), "regenerated angles differs"),
    "angles-pad": ("angles", lambda d: d.__setitem__((0, -1), 0.0), "regenerated angles differs"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_regen_compares_the_stored_sinogram_and_angles(built, tmp_path, change):
    out = copy_of(built, tmp_path)
    name, edit, said = CHANGES[change]
    if change == "angles-pad":
        assert np.isnan(zarr.open_array(out / "dataset.zarr" / "angles", mode="r")[0, -1])
    rewrite_shard_0(out, name, edit)
    assert cli("verify", out).exit_code == 0
    doc = verify_json(out, "--regen", "4")
    assert len(doc["problems"]) == 1 and doc["problems"][0].startswith(f"sample 0: {said}"), doc
    assert doc["problem_shards"] == [0], doc


def test_regen_of_the_intact_dataset_compares_sinogram_and_angles_too(built):
    result = cli("verify", built, "--regen", "4")
    assert result.exit_code == 0 and "regenerated samples [0, 1, 2, 3]" in result.output, result.output
    assert "note:" not in result.output


# -- a lost or unreadable recipe.resolved.json --------------------------------------------------

@pytest.mark.parametrize("how", ["missing", "truncated"])
@pytest.mark.parametrize("with_yaml", [True, False])
def test_a_lost_resolved_recipe_is_damage_status_and_verify_report(built, recipe_file, tmp_path, how, with_yaml):
    out = copy_of(built, tmp_path)
    resolved = out / "recipe.resolved.json"
    if how == "missing":
        resolved.unlink()
    else:
        resolved.write_bytes(resolved.read_bytes()[:30])
    if not with_yaml:
        (out / "recipe.yaml").unlink()
    rid = json.loads((record_path(built, 0)).read_text())["recipe_id"]
    st = status_json(out)
    assert st["state"] == "damaged" and st["recipe_id"] == rid, st
    assert st["dataset_problems"][0].startswith(f"{resolved}: "), st
    doc = verify_json(out)
    assert doc["ok"] is False and doc["problems"][0].startswith(f"{resolved}: "), doc
    if with_yaml:  # recipe.yaml hashes to the card's id: everything else is checked against it
        assert st["n_shards"] == 2 and st["done"] == 2 and st["metadata_damaged"] == 1, st
        assert doc["n_shards"] == 2 and doc["checked_samples"] == 4 and len(doc["problems"]) == 1, doc
    else:
        assert st["n_shards"] is None and st["done"] is None and st["metadata_damaged"] == 1, st
        assert doc["n_shards"] is None and doc["checked_samples"] == 0, doc
        assert any("not checked" in note for note in st["notes"] + doc["notes"]), (st, doc)
        human = cli("status", out)
        assert human.exit_code == 0 and "shards: not checked" in human.output, human.output
    plain = cli("verify", out)
    assert plain.exit_code == 1 and "`simaq-factory build` with the same recipe repairs" in plain.stderr
    assert build(recipe_file, out).exit_code == 0
    assert cli("verify", out).exit_code == 0 and status_json(out)["state"] == "complete"


def test_a_lost_resolved_recipe_of_a_frozen_dataset_is_damage_too(frozen, tmp_path):
    out = copy_of(frozen, tmp_path)
    (out / "recipe.resolved.json").unlink()
    st = status_json(out)
    assert st["state"] == "damaged" and st["card_status"] == "frozen", st
    result = cli("verify", out)
    assert result.exit_code == 1 and "restore it from a good copy" in result.stderr, result.stderr


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


def test_a_frozen_dataset_missing_a_record_is_damaged_not_pending(frozen, tmp_path):
    out = copy_of(frozen, tmp_path)
    record_path(out, 1).unlink()
    st = status_json(out)
    assert st["state"] == "damaged" and st["pending"] == 0 and st["damaged"] == 1, st
    assert st["problems"] == [{"shard": 1, "reason": "provenance record missing from a frozen dataset"}], st
    result = cli("verify", out)
    assert result.exit_code == 1
    assert "problem: shard 1 (samples 2-3): provenance record missing from a frozen dataset" in result.output
    refused = cli("freeze", out)  # as build and freeze say
    assert refused.exit_code == 1 and "frozen but damaged: 1 shard(s)" in refused.stderr, refused.stderr


def test_info_index_refuses_a_record_that_fails_its_digest(built, tmp_path):
    out = copy_of(built, tmp_path)
    record = record_path(out, 1)
    record.write_text(record.read_text().replace('"n_cells": ', '"n_cells": 1', 1))
    assert json.loads(record.read_text())  # still JSON, only its digest tells
    result = cli("info", out, "--index", "2")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (f"error: sample 2: shard 1 is damaged: {record} does not match its digest "
                                     "(edited or damaged); `simaq-factory build` with the same recipe repairs it")
    assert "cells:" not in result.stdout
    assert cli("info", out, "--index", "0").exit_code == 0  # shard 0's record is intact


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
