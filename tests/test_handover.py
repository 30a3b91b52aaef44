"""Hand-over commands: verify, freeze, preview, export (round trips against the stored arrays)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.store.dataset import RECORD_DIGEST, record_digest
from simaq_factory.versions import cpu_kernels

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handover") / "out"
    result = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert result.exit_code == 0, result.output
    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # --device auto, resolved and said
    assert f" on {device} -> " in result.output or " on cuda -> " in result.output, result.output
    return out


def copy_of(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def test_verify_ok_deep_and_regen(built):
    result = cli("verify", str(built), "--deep", "--regen", "2")
    assert result.exit_code == 0, result.output
    assert "4 sample(s) verified (deep), regenerated samples [0, 3]" in result.output


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.cpu.get_cpu_capability() == "DEFAULT",
                    reason="needs a CPU build on vector (SIMD/FMA) kernels to compare with the scalar ones")
def test_verify_regen_on_scalar_cpu_kernels(built):
    """Another machine, simulated: torch's scalar CPU kernels (no SIMD, no fused multiply-add) re-render
    samples built here on its vector kernels. Phantom, labels and noisy come back to the bit (no
    note either), the reconstruction within verify's tolerance."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "DEFAULT"
    run = subprocess.run([sys.executable, "-m", "simaq_factory.cli.main", "verify", str(built), "--regen", "2"],
                         env=env, capture_output=True, text=True, cwd=REPO)
    said = run.stdout + run.stderr
    assert run.returncode == 0, said
    assert "regenerated samples [0, 3]" in said and "note:" not in said, said


def test_verify_names_damaged_shard_and_build_repairs(built, tmp_path):
    out = copy_of(built, tmp_path)
    shard = out / "dataset.zarr" / "labels" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0x01
    shard.write_bytes(bytes(raw))
    result = cli("verify", str(out))
    assert result.exit_code == 1
    assert "shard 1 (samples 2-3): labels shard file does not match its checksum" in result.output
    assert cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline").exit_code == 0
    assert cli("verify", str(out)).exit_code == 0


def resealed(prov: dict) -> dict:
    """A provenance record rewritten whole, its own digest too: what a tamperer who knows the
    format writes (the digest guards against accidents, not against intent)."""
    return {**prov, RECORD_DIGEST: record_digest(prov)}


def tamper_labels_and_rechecksum(out: Path, name: str = "labels", value: float = 3) -> None:
    """Change one voxel of ``name`` in shard 0 and record the new shard's sha256 in its provenance,
    so that its checksum still verifies."""
    g = zarr.open_group(out / "dataset.zarr", mode="r+")
    data = g[name][0:2]
    data[0, 0, 0, 0] = value
    g[name][0:2] = data
    prov_path = out / "provenance" / "shard-000000.json"
    prov = json.loads(prov_path.read_text())
    shard = out / "dataset.zarr" / name / "c" / "0" / "0" / "0" / "0"
    prov["checksums"][name] = hashlib.sha256(shard.read_bytes()).hexdigest()
    prov_path.write_text(json.dumps(resealed(prov)))


def test_verify_regen_detects_tampered_but_rechecksummed_data(built, tmp_path):
    """A shard rewritten with wrong labels (and its checksum updated) still fails regeneration."""
    out = copy_of(built, tmp_path)
    tamper_labels_and_rechecksum(out)
    assert cli("verify", str(out)).exit_code == 0  # checksums alone cannot see it
    result = cli("verify", str(out), "--regen", "4")
    assert result.exit_code == 1 and "sample 0: regenerated labels differs" in result.output
    # build alone would skip that shard (its files match their checksums): the advice says how to redo it
    assert "remove provenance/shard-000000.json and run `simaq-factory build`" in result.stderr, result.stderr
    (out / "provenance" / "shard-000000.json").unlink()
    assert "wrote 1 shard(s), skipped 1" in cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline").output
    assert cli("verify", str(out), "--regen", "4").exit_code == 0


def test_verify_regen_names_the_artifact_parameters_that_differ(built, tmp_path):
    """A record whose blur was drawn otherwise (an older version's sampled kernel): --regen names the
    artifact stage that differs, not a guess."""
    out = copy_of(built, tmp_path)
    prov_path = out / "provenance" / "shard-000000.json"
    prov = json.loads(prov_path.read_text())
    blur = prov["sample_records"][0]["artifacts"]["blur"]
    blur["kernel"] = "sampled"
    prov_path.write_text(json.dumps(resealed(prov)))
    result = cli("verify", str(out), "--regen", "1")
    assert result.exit_code == 1
    assert "sample 0: regenerated artifact parameters differ from provenance (blur)" in result.output, result.output


def test_freeze_writes_card_sums_and_refuses_writes(built, tmp_path):
    out = copy_of(built, tmp_path)
    result = cli("freeze", str(out))
    assert result.exit_code == 0, result.output
    for name in ("manifest.jsonl", "SHA256SUMS", "DATASET.md", "previews/sample_000000.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    labels = zarr.open_group(out / "dataset.zarr", mode="r")["labels"][...]
    assert rows[2]["label_voxels"]["cell"] == int((labels[2] == 1).sum())
    card = dict(zarr.open_group(out / "dataset.zarr", mode="r").attrs)
    assert card["status"] == "frozen"
    fractions = card["stats"]["label_fractions"]
    assert sorted(fractions) == sorted(card["label_map"].values())  # no nucleus row without a nucleus
    assert abs(fractions["vacuole"] - (labels == 2).mean()) < 1e-9
    # every file is listed with its digest, but for the writers' lock (its content is a pid) and the
    # logs (records of what ran, which later commands may append to)
    listed = dict(line.split("  ", 1)[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")
             if p.is_file() and p.name not in ("SHA256SUMS", ".simaq-factory.lock")
             and not p.relative_to(out).as_posix().startswith("logs/")}
    assert any((out / "logs").iterdir())
    assert set(listed) == files
    for rel, digest in listed.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    md = (out / "DATASET.md").read_text()
    assert card["recipe_id"] in md and "Per-class voxel fractions" in md
    assert f"- cpu, {cpu_kernels()} CPU kernels: 2" in md and card["stats"]["built_on"] == {
        f"cpu, {cpu_kernels()} CPU kernels": 2}
    # re-running the pipeline is a no-op that writes nothing; another recipe is still refused
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert again.exit_code == 0 and "complete and frozen" in again.output, again.output
    refreeze = cli("freeze", str(out))
    assert refreeze.exit_code == 0 and "already frozen" in refreeze.output, refreeze.output
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    other = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline", "--set", "seed=9")
    assert other.exit_code == 2 and "recipe" in other.stderr


def test_freeze_card_counts_shards_per_machine_and_software(built, tmp_path):
    """A build resumed elsewhere: shard 1 came from another CPU and another simaq-factory commit,
    shard 0 from before the CPU kernels were recorded. The card says so, per shard."""
    out = copy_of(built, tmp_path)
    for shard, edit in ((0, {"cpu_kernels": None}),
                        (1, {"cpu_kernels": "x86_64 AVX512", "commit": "f" * 40})):
        path = out / "provenance" / f"shard-{shard:06d}.json"
        prov = json.loads(path.read_text())
        prov.pop("cpu_kernels") if edit["cpu_kernels"] is None else prov.update(cpu_kernels=edit["cpu_kernels"])
        if "commit" in edit:
            prov["versions"]["simaq-factory-commit"] = edit["commit"]
        path.write_text(json.dumps(resealed(prov)))  # as those builds wrote them
    result = cli("freeze", str(out))
    assert result.exit_code == 0, result.output
    stats = dict(zarr.open_group(out / "dataset.zarr", mode="r").attrs)["stats"]
    assert stats["built_on"] == {"cpu, unrecorded CPU kernels": 1, "cpu, x86_64 AVX512 CPU kernels": 1}
    assert len(stats["software_by_shard"]) == 2 and "(ffffffffffff)" in " ".join(stats["software_by_shard"])
    md = (out / "DATASET.md").read_text()
    assert "- cpu, x86_64 AVX512 CPU kernels: 1" in md and "(ffffffffffff), torch" in md


def test_shards_from_the_triton_projector_are_named_and_not_compared_with_the_tables(built, tmp_path):
    """A dataset whose shard 1 a GPU projected with the Triton kernels (its record says so): regenerated
    here with the tables, its recon is not compared (the two round differently), the rest is; the card
    counts the shard under its projector."""
    out = copy_of(built, tmp_path)
    path = out / "provenance" / "shard-000001.json"
    prov = json.loads(path.read_text())
    assert prov["projector"] == "torch"
    path.write_text(json.dumps(resealed({**prov, "projector": "triton 3.9.0"})))
    result = cli("verify", str(out), "--regen", "2")
    assert result.exit_code == 0, result.output
    assert "regenerated samples [0, 3]" in result.output
    assert ("sample 3: projected with the triton 3.9.0 projector, regenerated with torch; sinogram and recon not "
            "compared"
            in result.output), result.output
    assert "sample 0: projected" not in result.output
    assert cli("freeze", str(out)).exit_code == 0
    stats = dict(zarr.open_group(out / "dataset.zarr", mode="r").attrs)["stats"]
    here = f"cpu, {cpu_kernels()} CPU kernels"
    assert stats["built_on"] == {here: 1, f"{here}, triton 3.9.0 projector": 1}


def test_freeze_refuses_incomplete_dataset(built, tmp_path):
    out = copy_of(built, tmp_path)
    (out / "provenance" / "shard-000001.json").unlink()
    result = cli("freeze", str(out))
    assert result.exit_code == 1 and "shard 1" in result.stderr
    assert not (out / "SHA256SUMS").exists()


def test_preview_png(built, tmp_path):
    import imageio.v3 as iio

    png = tmp_path / "p.png"
    result = cli("preview", str(built), "--index", "2", "-o", str(png))
    assert result.exit_code == 0, result.output
    img = iio.imread(png)
    assert img.ndim == 3 and img.shape[0] > 600 and img.shape[1] > 600
    assert img[..., :3].std() > 20  # not blank
    # the labels row's class bar shows the overlay colours: the cell's green as a solid patch
    from simaq_factory.store.preview import LABEL_COLOURS

    green = np.round(np.array(LABEL_COLOURS[1]) * 255)
    assert (np.abs(img[..., :3].astype(float) - green).max(axis=-1) <= 2).sum() > 100
    assert cli("preview", str(built), "--index", "9", "-o", str(png)).exit_code == 2
    assert cli("preview", str(built), "-o", str(tmp_path / "nodir" / "p.png")).exit_code == 2


def test_export_tiff_mrc_round_trip(built, tmp_path):
    import mrcfile
    import tifffile

    g = zarr.open_group(built / "dataset.zarr", mode="r")
    dest = tmp_path / "exp"
    assert cli("export", str(built), "--format", "tiff", "-o", str(dest), "--index", "1").exit_code == 0
    assert cli("export", str(built), "--format", "mrc", "-o", str(dest), "--index", "1",
               "--arrays", "labels,recon").exit_code == 0
    np.testing.assert_array_equal(tifffile.imread(dest / "sample_000001_recon.tif"), g["recon"][1])
    np.testing.assert_array_equal(tifffile.imread(dest / "sample_000001_labels.tif"), g["labels"][1])
    with mrcfile.open(dest / "sample_000001_labels.mrc") as m:
        np.testing.assert_array_equal(m.data, g["labels"][1])
        scale = json.loads((built / "provenance" / "shard-000000.json").read_text())[
            "sample_records"][1]["phantom_spec"]["scale"]
        assert abs(float(m.voxel_size.x) - 400.0 * 1.2 / scale) < 1e-2  # Å, 40 nm at 1.2 vox/unit
    again = cli("export", str(built), "--format", "tiff", "-o", str(dest), "--index", "1")  # done: skipped
    assert again.exit_code == 0 and "wrote 0 file(s)" in again.output and "skipped 3" in again.output
    clash = cli("export", str(built), "--format", "tiff", "-o", str(dest), "--index", "1", "--voxel-size-nm", "30")
    assert clash.exit_code == 2 and "--overwrite" in clash.stderr
    assert cli("export", str(built), "--format", "tiff", "-o", str(dest), "--arrays", "angles").exit_code == 2


def test_export_ome_zarr_opens_with_an_ngff_reader(built, tmp_path):
    ome_zarr = pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    dest = tmp_path / "exp"
    assert cli("export", str(built), "--format", "ome-zarr", "-o", str(dest), "--index", "0",
               "--arrays", "recon", "--voxel-size-nm", "40").exit_code == 0
    nodes = list(Reader(parse_url(str(dest / "sample_000000_recon.ome.zarr")))())
    image = next(n for n in nodes if any(isinstance(s, Multiscales) for s in n.specs))
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    g = zarr.open_group(built / "dataset.zarr", mode="r")
    np.testing.assert_array_equal(np.asarray(image.data[0]), g["recon"][0])
    np.testing.assert_array_equal(np.asarray(label.data[0]), g["labels"][0])
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]
    assert image.metadata["coordinateTransformations"][0][0]["scale"] == [40.0, 40.0, 40.0]
    assert ome_zarr is not None


# --- audit fixes: damaged metadata, partial datasets, frozen datasets, status verdict ---------------

ARRAY_SHARD_DIRS = ("phantom", "labels", "noisy", "recon", "sinogram", "angles")


@pytest.fixture(scope="module")
def partial(built, tmp_path_factory) -> Path:
    """``built`` as an interrupted build leaves it: shard 1 (samples 2-3) never finished."""
    out = tmp_path_factory.mktemp("partial") / "out"
    shutil.copytree(built, out)
    (out / "provenance" / "shard-000001.json").unlink()
    for name in ARRAY_SHARD_DIRS:
        shutil.rmtree(out / "dataset.zarr" / name / "c" / "1")
    return out


@pytest.fixture(scope="module")
def frozen(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("frozen") / "out"
    shutil.copytree(built, out)
    result = cli("freeze", str(out))
    assert result.exit_code == 0, result.output
    return out


def listing(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage", ["broken-json", "wrong-shape"])
def test_damaged_array_metadata_is_reported_naming_the_file(built, tmp_path, damage):
    out = copy_of(built, tmp_path)
    meta = out / "dataset.zarr" / "recon" / "zarr.json"
    if damage == "broken-json":
        meta.write_text("{broken\n")
    else:  # valid JSON and valid Zarr, but not the layout the recipe writes
        doc = json.loads(meta.read_text())
        doc["shape"][0] = 6
        meta.write_text(json.dumps(doc))
    before = listing(out)
    st = cli("status", str(out))
    assert st.exit_code == 0, st.output
    assert "verdict: damaged: 1 metadata file(s)" in st.output
    assert "metadata: 1 file(s) damaged" in st.output
    assert f"problem: {meta}:" in st.output
    ver = cli("verify", str(out))
    assert ver.exit_code == 1
    assert f"problem: {meta}:" in ver.output
    if damage == "wrong-shape":
        assert "does not match the recipe" in ver.output and "shape (6, 64, 64, 64)" in ver.output
    png, dest = tmp_path / "p.png", tmp_path / "exp"
    for args in (("preview", str(out), "--index", "0", "-o", str(png)),
                 ("export", str(out), "--format", "tiff", "-o", str(dest), "--index", "0"),
                 ("export", str(out), "--format", "ome-zarr", "-o", str(dest), "--index", "0",
                  "--arrays", "labels")):
        result = cli(*args)
        if args[-1] == "labels":  # recon is not read: exporting labels alone still works
            assert result.exit_code == 0, result.output
            shutil.rmtree(dest)
            continue
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {meta}:"), result.stderr
        assert "Traceback" not in result.output
    assert not png.exists() and not dest.exists()
    assert listing(out) == before  # status, verify, preview and export never write


def test_damaged_group_metadata_is_reported_naming_the_file(built, tmp_path):
    out = copy_of(built, tmp_path)
    meta = out / "dataset.zarr" / "zarr.json"
    meta.write_text("{broken")
    st = cli("status", str(out))
    assert st.exit_code == 0, st.output
    assert "card status: unreadable" in st.output and "verdict: damaged" in st.output
    assert f"problem: {meta}: unreadable group metadata" in st.output
    ver = cli("verify", str(out))
    assert ver.exit_code == 1 and f"problem: {meta}: unreadable group metadata" in ver.output
    dest = tmp_path / "exp"
    for args in (("info", str(out)), ("preview", str(out), "-o", str(tmp_path / "p.png")),
                 ("export", str(out), "--format", "mrc", "-o", str(dest)), ("freeze", str(out))):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {meta}:"), result.stderr
        if args[0] == "info":
            assert "`simaq-factory build` with the same recipe rewrites it" in result.stderr
    assert not dest.exists() and not (tmp_path / "p.png").exists()
    assert not (out / "SHA256SUMS").exists()
    # build rewrites the card from the recipe and keeps every shard; the dataset is whole again
    card = dict(zarr.open_group(built / "dataset.zarr", mode="r").attrs)
    for damage in ("broken", "missing"):
        meta.write_text("{broken") if damage == "broken" else meta.unlink()
        rebuilt = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
        assert rebuilt.exit_code == 0 and "wrote 0 shard(s), skipped 2" in rebuilt.output, rebuilt.output
        assert dict(zarr.open_group(out / "dataset.zarr", mode="r").attrs) == card
        assert cli("verify", str(out), "--deep").exit_code == 0
    # a frozen dataset's card is sealed in SHA256SUMS: build refuses to write a new one
    assert cli("freeze", str(out)).exit_code == 0
    meta.unlink()
    refused = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert refused.exit_code == 1 and "frozen dataset is missing or unreadable" in refused.stderr
    assert "restore it from a good copy" in refused.stderr
    ver = cli("verify", str(out))
    assert ver.exit_code == 1 and "the dataset is frozen: restore it from a good copy" in ver.stderr


def test_export_of_a_partial_dataset_writes_nothing_unbuilt(partial, tmp_path):
    dest = tmp_path / "exp"
    for extra in ((), ("--voxel-size-nm", "40"), ("--index", "0", "--index", "3"),
                  ("--index", "3", "--voxel-size-nm", "40")):
        result = cli("export", str(partial), "--format", "tiff", "-o", str(dest), *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert "not built yet" in result.stderr and result.stderr.count("\n") == 1
        assert not dest.exists(), extra  # refused before anything was written
    # the built samples export, once each however often they are named
    result = cli("export", str(partial), "--format", "tiff", "-o", str(dest), "--index", "1",
                 "--index", "1", "--index", "0")
    assert result.exit_code == 0, result.output
    assert "wrote 6 file(s)" in result.output
    assert sorted(p.name for p in dest.iterdir() if p.name != ".simaq-export.jsonl") == sorted(
        f"sample_{i:06d}_{a}.tif" for i in (0, 1) for a in ("recon", "labels", "phantom"))


def test_export_names_unexportable_arrays(built, tmp_path):
    dest = tmp_path / "exp"
    result = cli("export", str(built), "--format", "tiff", "-o", str(dest), "--arrays", "recon,angles")
    assert result.exit_code == 2
    assert ("'angles' is not exportable (exportable: phantom, labels, noisy, recon, sinogram)" in result.stderr)
    result = cli("export", str(built), "--format", "tiff", "-o", str(dest), "--arrays", "nope")
    assert result.exit_code == 2
    assert "'nope' is not in this dataset (exportable: phantom, labels, noisy, recon, sinogram)" in result.stderr
    result = cli("export", str(built), "--format", "ome-zarr", "-o", str(dest), "--arrays", "nope")
    assert "'nope' is not in this dataset (exportable: phantom, labels, noisy, recon)" in result.stderr
    assert not dest.exists()


def test_export_refuses_a_damaged_shard_before_writing(built, tmp_path):
    out = copy_of(built, tmp_path)
    shard = out / "dataset.zarr" / "recon" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    dest = tmp_path / "exp"
    result = cli("export", str(out), "--format", "tiff", "-o", str(dest))
    assert result.exit_code == 1
    assert "shard 1 (samples 2-3)" in result.stderr and "recon shard file" in result.stderr
    assert not dest.exists()


def test_preview_refuses_an_unbuilt_sample(partial, tmp_path):
    png = tmp_path / "p.png"
    result = cli("preview", str(partial), "--index", "3", "-o", str(png))
    assert result.exit_code == 2
    assert result.stderr == "error: --index: sample 3 is not built yet (shard 1 pending)\n"
    assert not png.exists()
    assert cli("preview", str(partial), "--index", "1", "-o", str(png)).exit_code == 0
    assert png.is_file() and not list(tmp_path.glob(".*partial"))


def test_verify_checks_sha256sums_of_a_frozen_dataset(frozen, tmp_path):
    ok = cli("verify", str(frozen))
    assert ok.exit_code == 0, ok.output  # a sealed, untouched dataset verifies
    out = copy_of(frozen, tmp_path)
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"index": 99}\n')
    with open(out / "recipe.yaml", "a") as f:
        f.write("# edited\n")
    (out / "previews" / "sample_000001.png").unlink()
    # a shard rewritten with its provenance checksum updated: only SHA256SUMS can tell
    tamper_labels_and_rechecksum(out)
    result = cli("verify", str(out))
    assert result.exit_code == 1
    problems = sorted(line for line in result.output.splitlines() if line.startswith("problem:"))
    assert problems == sorted([
        "problem: manifest.jsonl: sha256 differs from SHA256SUMS (modified after freeze)",
        "problem: recipe.yaml: sha256 differs from SHA256SUMS (modified after freeze)",
        "problem: previews/sample_000001.png: listed in SHA256SUMS but missing",
        "problem: provenance/shard-000000.json: sha256 differs from SHA256SUMS (modified after freeze)",
        "problem: dataset.zarr/labels/c/0/0/0/0: sha256 differs from SHA256SUMS (modified after freeze)",
    ]), result.output
    (out / "SHA256SUMS").unlink()
    result = cli("verify", str(out))
    assert result.exit_code == 1 and "SHA256SUMS: missing from a frozen dataset" in result.output


def test_status_separates_the_card_from_the_computed_verdict(built, tmp_path):
    clean = cli("status", str(built))
    assert clean.exit_code == 0
    assert "card status: complete\nverdict: complete\n" in clean.output
    assert "metadata: ok\nnoise banks: ok\n" in clean.output
    out = copy_of(built, tmp_path)
    shard = out / "dataset.zarr" / "phantom" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    st = cli("status", str(out))
    assert "card status: complete\nverdict: damaged: 1 shard(s)\n" in st.output
    assert "1 done, 0 pending, 1 damaged of 2" in st.output
    assert " status: complete" not in st.output.replace("card status: complete", "")


def test_status_reports_a_damaged_noise_bank(built, tmp_path):
    out = copy_of(built, tmp_path)
    arr = zarr.open_array(out / "dataset.zarr" / "banks" / "cracks", mode="r+")
    arr[0] = np.zeros(arr.shape[1:], dtype=np.float32)
    st = cli("status", str(out))
    assert st.exit_code == 0
    assert "verdict: damaged: 1 noise bank(s)" in st.output and "noise banks: 1 damaged" in st.output
    assert "problem: noise bank cracks: data does not match its sha256" in st.output
    ver = cli("verify", str(out))
    assert ver.exit_code == 1 and "noise bank cracks" in ver.output  # the same check


def test_status_of_a_partial_dataset_is_incomplete(partial):
    st = cli("status", str(partial))
    assert st.exit_code == 0
    assert "verdict: incomplete: 1 shard(s) pending" in st.output
    assert "1 done, 1 pending, 0 damaged of 2" in st.output
    assert "writer:" not in st.output
    as_json = json.loads(cli("status", str(partial), "--json").stdout)
    assert (as_json["verdict"], as_json["state"], as_json["done"], as_json["pending"], as_json["writer_pid"]) == (
        "incomplete: 1 shard(s) pending", "incomplete", 1, 1, None)
    ver = cli("verify", str(partial), "--json")
    report = json.loads(ver.stdout)
    assert ver.exit_code == 1 and not report["ok"] and report["n_shards"] == 2
    assert report["problems"] == ["shard 1 (samples 2-3): no provenance record"]
    assert report["problem_shards"] == [1]
    assert "`simaq-factory build` with the same recipe repairs" in ver.stderr


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux's /proc/locks")
def test_status_and_verify_name_a_build_that_is_writing_the_dataset(partial):
    """While a build holds the writers' lock, its pending shards are work in progress: status names
    the writer and verify does not advise a second build (which would be refused)."""
    from simaq_factory.store.outdir import claim_out_dir

    with claim_out_dir(partial, json.loads((partial / "recipe.resolved.json").read_text())["recipe_id"]):
        st = cli("status", str(partial))
        assert f"writer: process {os.getpid()} (a build or freeze) is writing it now" in st.output
        assert json.loads(cli("status", str(partial), "--json").stdout)["writer_pid"] == os.getpid()
        ver = cli("verify", str(partial))  # refused before checking: pending shards are not problems
        assert ver.exit_code == 1 and ver.output == ver.stderr == (
            f"error: {partial}: process {os.getpid()} (a build or freeze) is writing it now: verify when it ends "
            f"(`simaq-factory status {partial}` shows its progress)\n"), ver.output
        ver = cli("verify", str(partial), "--json")  # scripts still get a report on stdout
        report = json.loads(ver.stdout)
        assert ver.exit_code == 1 and "is writing it now" in ver.stderr
        assert (report["ok"], report["writer_pid"], report["problem_shards"]) == (False, os.getpid(), [])
        assert report["problems"] == [ver.stderr.removeprefix("error: ").strip()]
    assert "writer:" not in cli("status", str(partial)).output


def test_inspection_of_a_regular_file_says_it_is_not_a_directory(built):
    target = built / "recipe.yaml"
    for cmd in ("info", "status", "verify"):
        result = cli(cmd, str(target))
        assert result.exit_code == 2
        assert result.stderr == (f"error: {target}: is a file, not a dataset directory "
                                 "(give the directory `build -o` wrote)\n")


def test_freeze_waits_for_no_build_it_refuses_while_one_holds_the_dataset(built, tmp_path):
    """A freeze during a build would seal shards still being written: it is refused (exit 2)."""
    from simaq_factory.store.outdir import claim_out_dir

    out = tmp_path / "held"
    shutil.copytree(built, out)
    rid = json.loads((out / "recipe.resolved.json").read_text())["recipe_id"]
    with claim_out_dir(out, rid):
        held = cli("freeze", str(out))
        assert held.exit_code == 2 and "another simaq-factory process" in held.stderr
    assert not (out / "SHA256SUMS").exists() and not (out / "manifest.jsonl").exists()
    assert cli("freeze", str(out)).exit_code == 0


def test_ome_zarr_coarse_levels_sit_where_their_voxels_came_from():
    """Level i's voxel j: an image level averages fine voxels j·2^i … (j+1)·2^i − 1, so its centre is
    their mean centre; a label level takes fine voxel j·2^i. NGFF: position = scale·j + translation."""
    from simaq_factory.store.export import _levels, _multiscales

    zz, yy, xx = np.meshgrid(*(np.arange(64.0),) * 3, indexing="ij")
    vol = 4096 * zz + 64 * yy + xx  # a voxel's value encodes its fine position
    for is_label in (False, True):
        levels = _levels(vol.astype(np.int64) if is_label else vol, is_label)
        ms = _multiscales("x", len(levels), 10.0, is_label)
        assert len(levels) == 2 and ms["type"] == ("nearest" if is_label else "mean")
        for i, lv in enumerate(levels):
            tr = {t["type"]: t for t in ms["datasets"][i]["coordinateTransformations"]}
            scale, shift = tr["scale"]["scale"], tr["translation"]["translation"]
            j = (1, 2, 3)
            c = [(scale[a] * j[a] + shift[a]) / 10.0 for a in range(3)]  # in fine voxels
            assert float(lv[j]) == pytest.approx(4096 * c[0] + 64 * c[1] + c[2])


def test_ome_zarr_label_images_name_a_source_image_only_when_there_is_one(built, tmp_path):
    dest = tmp_path / "exp"
    assert cli("export", str(built), "--format", "ome-zarr", "-o", str(dest), "--index", "0",
               "--arrays", "recon,labels").exit_code == 0
    alone = zarr.open_group(dest / "sample_000000_labels.ome.zarr", mode="r", zarr_format=2).attrs
    assert "image-label" in alone and "source" not in alone["image-label"]
    nested = zarr.open_group(dest / "sample_000000_recon.ome.zarr" / "labels" / "labels", mode="r",
                             zarr_format=2).attrs
    assert nested["image-label"]["source"] == {"image": "../../"}


def test_ome_zarr_says_how_its_levels_were_made_and_names_the_dataset_classes(built, tmp_path):
    """NGFF: ``type`` with a ``metadata`` block for the downsampling; label images carry the class
    names of this dataset (``properties``) and colours for the same classes (no nucleus here; the
    background transparent)."""
    dest = tmp_path / "exp"
    r = cli("export", str(built), "--format", "ome-zarr", "-o", str(dest), "--index", "0", "--arrays", "recon")
    assert r.exit_code == 0, r.output
    image = zarr.open_group(dest / "sample_000000_recon.ome.zarr", mode="r", zarr_format=2).attrs
    ms = image["multiscales"][0]
    assert ms["type"] == "mean" and ms["metadata"]["version"] == np.__version__
    assert "2x2x2" in ms["metadata"]["method"]
    label = zarr.open_group(dest / "sample_000000_recon.ome.zarr" / "labels" / "labels", mode="r",
                            zarr_format=2).attrs
    assert label["multiscales"][0]["type"] == "nearest" and "metadata" in label["multiscales"][0]
    card = dict(zarr.open_group(built / "dataset.zarr", mode="r").attrs)
    assert {str(p["label-value"]): p["class"] for p in label["image-label"]["properties"]} == card["label_map"]
    assert "4" not in card["label_map"]
    assert sorted(c["label-value"] for c in label["image-label"]["colors"]) == [0, 1, 2, 3]


def test_export_arrays_flag_may_be_repeated(built, tmp_path):
    """``--arrays recon --arrays labels`` exports both (only the last one was kept), as ``--index``
    repeats; a comma list still works, and an empty list is refused."""
    dest = tmp_path / "exp"
    r = cli("export", str(built), "--format", "tiff", "-o", str(dest), "--index", "0",
            "--arrays", "recon", "--arrays", "labels,phantom")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in dest.glob("*.tif")) == [
        "sample_000000_labels.tif", "sample_000000_phantom.tif", "sample_000000_recon.tif"]
    r = cli("export", str(built), "--format", "tiff", "-o", str(tmp_path / "e2"), "--arrays", ",", "--arrays", " ")
    assert r.exit_code == 2 and "--arrays" in r.stderr and not (tmp_path / "e2").exists()


def test_mrc_export_is_the_same_bytes_every_time(built, tmp_path, monkeypatch):
    """The MRC header's label names the software and the sample, not the time of writing (mrcfile's
    default label made every re-export differ), so an export can be checked against checksums."""
    import mrcfile

    import simaq_factory.store.export as export

    for k, dest in enumerate(("a", "b")):
        if k:  # a later clock: mrcfile's default label would change
            real = export._write_mrc
            monkeypatch.setattr(export, "_write_mrc", lambda *a, **kw: (time.sleep(1.1), real(*a, **kw)))
        r = cli("export", str(built), "--format", "mrc", "-o", str(tmp_path / dest), "--index", "1",
                "--arrays", "recon")
        assert r.exit_code == 0, r.output
    a, b = ((tmp_path / d / "sample_000001_recon.mrc").read_bytes() for d in ("a", "b"))
    assert a == b
    with mrcfile.open(tmp_path / "a" / "sample_000001_recon.mrc") as m:
        assert m.header.nlabl == 1
        text = m.header.label[0].decode()
        assert text.startswith("simaq-factory ") and "sample 1 recon" in text
        assert mrcfile.validate(str(tmp_path / "a" / "sample_000001_recon.mrc"), print_file=io.StringIO())


def test_card_and_preview_name_the_reconstruction_method():
    from types import SimpleNamespace

    from simaq_factory.store.layout import recon_description
    from simaq_factory.tomo.config import ReconstructionConfig

    def desc(**kw):
        return recon_description(SimpleNamespace(reconstruction=ReconstructionConfig(**kw)))

    assert desc() == "raw FBP reconstruction (hamming filter), not normalised"
    assert desc(method="sirt", iterations=20) == "raw SIRT reconstruction (20 iterations, clamped to >= 0), not normalised"
    assert desc(method="cgls") == "raw CGLS reconstruction (50 iterations), not normalised"


def test_interrupted_export_resumes_to_the_uninterrupted_result(built, tmp_path, monkeypatch):
    """A SIGINT-like interruption mid-export exits 130 and leaves whole files only; running the same
    command again keeps them, writes the rest, and matches an export that was never interrupted."""
    import tifffile

    import simaq_factory.store.export as export

    args = ("export", str(built), "--format", "tiff", "--arrays", "recon,labels")
    full = tmp_path / "full"
    assert cli(*args, "-o", str(full)).exit_code == 0
    dest = tmp_path / "exp"
    real = export._write_tiff
    calls = []

    def interrupted(path, vol, vx, **kw):
        calls.append(path)
        if len(calls) == 3:  # mid-write of the third file: a half-written temporary is left behind
            Path(path).write_bytes(b"half")
            raise KeyboardInterrupt
        real(path, vol, vx, **kw)

    monkeypatch.setattr(export, "_write_tiff", interrupted)
    result = cli(*args, "-o", str(dest))
    assert result.exit_code == 130 and "run the same command again to resume" in result.stderr
    assert len([p for p in dest.iterdir() if p.suffix == ".tif"]) == 2
    assert not list(dest.glob(".*.partial"))
    monkeypatch.setattr(export, "_write_tiff", real)
    (dest / ".sample_000001_labels.tif.partial").write_bytes(b"stale")  # as a SIGKILL would leave it
    result = cli(*args, "-o", str(dest))
    assert result.exit_code == 0, result.output
    n = len([p for p in full.iterdir() if p.suffix == ".tif"])
    assert f"wrote {n - 2} file(s)" in result.output and "skipped 2" in result.output
    names = sorted(p.name for p in full.iterdir())
    assert sorted(p.name for p in dest.iterdir()) == names and not list(dest.glob("*.partial"))
    for name in names:
        if name.endswith(".tif"):
            np.testing.assert_array_equal(tifffile.imread(dest / name), tifffile.imread(full / name))
    # a file the export did not write itself is still refused; --overwrite replaces it
    other = tmp_path / "other"
    other.mkdir()
    (other / "sample_000000_recon.tif").write_bytes(b"mine")
    clash = cli(*args, "-o", str(other))
    assert clash.exit_code == 2 and "exists; use --overwrite" in clash.stderr
    assert (other / "sample_000000_recon.tif").read_bytes() == b"mine"
    # another voxel size is another export: its files are not taken as done
    clash = cli(*args, "-o", str(dest), "--voxel-size-nm", "30")
    assert clash.exit_code == 2 and "exists; use --overwrite" in clash.stderr


def test_interrupt_during_a_zarr_write_exits_130_whatever_the_cleanup_meets(built, tmp_path, monkeypatch):
    import simaq_factory.store.export as export

    def interrupted(path, *a, **k):
        Path(path).mkdir()
        (Path(path) / ".zattrs.tmp.partial").write_text("zarr's own temporary file")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_ome_zarr", interrupted)
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError("gone")))
    result = cli("export", str(built), "--format", "ome-zarr", "-o", str(tmp_path / "exp"), "--index", "0")
    assert result.exit_code == 130, result.output
    assert result.stderr.strip() == "error: interrupted; run the same command again to resume"


def test_export_and_preview_refuse_bad_values_and_unusable_paths_before_writing(built, tmp_path):
    (tmp_path / "afile").write_text("x")
    dest = tmp_path / "exp"
    cases = [
        (("export", "--format", "mrc", "-o", str(dest), "--voxel-size-nm", v), "--voxel-size-nm")
        for v in ("inf", "nan", "-1", "0", "1e300", "1e-40", "0.0009")  # 1e-40: TIFF's rational failed
    ] + [
        (("export", "--format", "tiff", "-o", str(dest), "--arrays", a), "--arrays: empty") for a in ("", ",")
    ] + [
        (("export", "--format", "tiff", "-o", str(tmp_path / "afile" / "sub")), "afile is not a directory"),
        (("export", "--format", "tiff", "-o", "/proc/simaq-exp"), "cannot create the output directory"),
        (("preview", "-o", str(tmp_path / "afile" / "p.png")), "afile is not a directory"),
        (("preview", "-o", "/proc/simaq-p.png"), "cannot write in /proc"),
        # "" is the working directory: `-o "$DEST"` with DEST unset wrote where the user stood
        (("export", "--format", "mrc", "-o", ""), "Invalid value for '-o' / '--dest': empty path"),
        (("preview", "-o", " "), "Invalid value for '-o' / '--output': empty path"),
        # inside a dataset that is not frozen: freeze would have sealed the files in as its own
        (("export", "--format", "mrc", "-o", str(built / "exports")), f"inside the dataset {built} (`freeze`"),
        (("export", "--format", "mrc", "-o", str(built)), f"inside the dataset {built}"),
        (("preview", "-o", str(built / "look.png")), f"inside the dataset {built}"),
    ]
    before = sorted(p.relative_to(built) for p in built.rglob("*"))
    for (cmd, *rest), needle in cases:
        result = cli(cmd, str(built), *rest)
        assert result.exit_code == 2, (rest, result.output)
        assert result.stderr.count("\n") == 1 and needle in result.stderr, (rest, result.stderr)
    assert not dest.exists() and (tmp_path / "afile").read_text() == "x"
    assert sorted(p.relative_to(built) for p in built.rglob("*")) == before


def test_an_empty_path_is_refused_by_every_command_that_takes_one(built, tmp_path, monkeypatch):
    from simaq_train.cli import cli as train_main

    monkeypatch.chdir(tmp_path)  # where an empty path would have pointed
    recipe = str(REPO / "recipes" / "smoke.yaml")
    factory = [("build", recipe, "-o", ""), ("status", ""), ("info", ""), ("verify", ""), ("freeze", ""),
               ("init", ""), ("preview", "", "--index", "0", "-o", "p.png"),
               ("export", "", "--format", "mrc", "-o", "x"), ("score", "--gt", str(built), "--pred", ""),
               ("score", "--gt", "", "--pred", str(built)), ("baseline", str(built), "-o", "")]
    train = [("fit", ""), ("evaluate", "", str(built)), ("evaluate", "c.pt", str(built), "-o", ""),
             ("predict", "c.pt", "", "-o", "o.tif"), ("predict", "c.pt", "v.tif", "-o", ""),
             ("baseline", "", "-o", "r")]
    for group, commands in ((main, factory), (train_main, train)):
        for args in commands:
            result = CliRunner().invoke(group, list(args))
            assert result.exit_code == 2, (args, result.output)
            assert result.stderr.count("\n") == 1 and "empty path ('')" in result.stderr, (args, result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_reading_commands_do_not_load_torch(built, tmp_path):
    """status, info, verify, export, preview and freeze read records and arrays: torch (≈5 s of import on
    2 vCPUs) stays unloaded, and so does a recipe check (the lazy package exports, simaq_factory._lazy)."""
    import subprocess
    import sys

    commands = [
        ["validate", SMOKE],
        ["status", str(built)],
        ["info", str(built), "--index", "1"],
        ["verify", str(built), "--deep"],
        ["export", str(built), "--format", "tiff", "--index", "0", "-o", str(tmp_path / "tiff")],
        ["preview", str(built), "--index", "0", "-o", str(tmp_path / "p.png")],
        ["freeze", str(copy_of(built, tmp_path))],
        ["build", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "never")],  # bad input: exit 2
    ]
    script = (
        "import json, sys\n"
        "from simaq_factory.cli.main import main\n"
        "codes = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        main(args, standalone_mode=False)\n"
        "        codes.append(0)\n"
        "    except SystemExit as e:\n"
        "        codes.append(e.code)\n"
        "print(json.dumps({'codes': codes, 'heavy': sorted(m for m in ('torch', 'scipy') if m in sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"][:-1] == [0] * (len(commands) - 1), proc.stdout + proc.stderr
    assert result["codes"][-1] == 2
    assert result["heavy"] == [], result


@pytest.mark.parametrize("package", ["simaq_factory.phantom", "simaq_factory.artifacts", "simaq_factory.tomo"])
def test_lazy_package_exports_resolve_and_no_submodule_shadows_them(package):
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    exports = pkg._EXPORTS
    assert sorted(exports) == sorted(pkg.__all__)
    submodules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
    # a submodule named like an export would replace it on the package once imported
    assert not submodules & set(exports), submodules & set(exports)
    for name, module in exports.items():
        assert module in submodules
        assert getattr(pkg, name) is getattr(importlib.import_module(f"{package}.{module}"), name)
    assert set(exports) <= set(dir(pkg))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        getattr(pkg, "nonexistent")


def test_freeze_hashes_each_data_shard_file_once(built, tmp_path, monkeypatch):
    """verify matches every shard file against its provenance checksum; SHA256SUMS reuses those
    digests instead of reading the bulk data a second time."""
    import collections

    import simaq_factory.store.dataset as dataset_mod
    import simaq_factory.store.freeze as freeze_mod

    out = copy_of(built, tmp_path)
    counts: collections.Counter[str] = collections.Counter()
    real = dataset_mod.sha256_file

    def counting(path):
        counts[Path(path).relative_to(out).as_posix()] += 1
        return real(path)

    monkeypatch.setattr(dataset_mod, "sha256_file", counting)
    monkeypatch.setattr(freeze_mod, "sha256_file", counting, raising=False)  # a module-level copy, if any
    assert cli("freeze", str(out)).exit_code == 0
    shard_files = [rel for rel in counts if rel.startswith("dataset.zarr/") and "/c/" in rel]
    assert len(shard_files) >= 2 * len(ARRAY_SHARD_DIRS)
    assert {rel: counts[rel] for rel in shard_files} == {rel: 1 for rel in shard_files}
    listed = dict(line.split("  ", 1)[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    for rel, digest in listed.items():  # and the reused digests are the files' own
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest, rel


def test_shard_states_on_threads_match_the_serial_check(built, tmp_path, monkeypatch):
    import simaq_factory.store.dataset as dataset_mod
    from simaq_factory.store.inspect import dataset_specs, open_dataset_recipe

    out = copy_of(built, tmp_path)
    shard = out / "dataset.zarr" / "labels" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-1])
    recipe, rid = open_dataset_recipe(out)
    specs = dataset_specs(recipe)
    serial = [dataset_mod.shard_state(out, specs, s, rid) for s in (1, 0)]
    assert serial[0] == ("damaged", "labels shard file does not match its checksum") and serial[1][0] == "done"
    monkeypatch.setattr(dataset_mod, "hash_threads", lambda: 4)
    assert dataset_mod.shard_states(out, specs, (1, 0), rid) == serial


def test_export_journal_appends_a_line_per_file_and_survives_a_torn_line(built, tmp_path):
    """The resume record is an append-only journal (a whole record rewritten per file made exports
    quadratic in their file count): one line per file written, a torn last line ignored, and the
    record of an export made before the journal still honoured."""
    args = ("export", str(built), "--format", "mrc", "--arrays", "recon,labels")
    dest = tmp_path / "exp"
    first = cli(*args, "-o", str(dest))
    assert first.exit_code == 0, first.output
    files = sorted(p.name for p in dest.iterdir() if p.suffix == ".mrc")
    entries = [json.loads(line) for line in (dest / ".simaq-export.jsonl").read_text().splitlines()]
    assert sorted(e["file"] for e in entries) == files  # one line each, in the order written
    assert all(e["holds"]["format"] == "mrc" for e in entries)
    with open(dest / ".simaq-export.jsonl", "a") as f:
        f.write('{"file": "sample_000000_recon.mrc", "ho')  # killed mid-append
    again = cli(*args, "-o", str(dest))
    assert again.exit_code == 0 and f"skipped {len(files)}" in again.output, again.output
    # the whole-record form of earlier versions
    journal = dest / ".simaq-export.jsonl"
    done = {e["file"]: e["holds"] for e in entries}
    (dest / ".simaq-export.json").write_text(json.dumps({"format": "simaq-factory export", "version": 1,
                                                         "files": done}))
    journal.unlink()
    again = cli(*args, "-o", str(dest))
    assert again.exit_code == 0 and f"skipped {len(files)}" in again.output, again.output
    # --overwrite unlists a file before replacing it: the journal's last word on it is the new file
    over = cli(*args, "-o", str(dest), "--overwrite")
    assert over.exit_code == 0, over.output
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [e["holds"] for e in lines if e["file"] == files[0]][-2:] == [None, done[files[0]]]


def test_export_resume_redoes_a_damaged_ome_zarr_and_lists_a_file_before_its_rename(built, tmp_path, monkeypatch):
    """An OME-Zarr export that lost files since is written again (the journal recorded a size for
    plain files only: a folder missing its full-resolution level was skipped as done); each file is
    listed just before its atomic rename, so a kill between the two cannot leave a whole file of
    this export unlisted (the rerun refused it as somebody else's, exit 2)."""
    import simaq_factory.store.export as export

    args = ("export", str(built), "--format", "ome-zarr", "--arrays", "recon", "--index", "0")
    dest = tmp_path / "ez"
    assert cli(*args, "-o", str(dest)).exit_code == 0
    group = dest / "sample_000000_recon.ome.zarr"
    entry = json.loads((dest / ".simaq-export.jsonl").read_text().splitlines()[-1])["holds"]
    files = [f for f in group.rglob("*") if f.is_file()]
    assert entry["files"] == len(files) and entry["bytes"] == sum(f.stat().st_size for f in files)
    before = {f.relative_to(group): f.read_bytes() for f in files}
    shutil.rmtree(group / "0")  # the full-resolution level is gone
    again = cli(*args, "-o", str(dest))
    assert again.exit_code == 0 and "wrote 1 file(s)" in again.output, again.output
    assert {f.relative_to(group): f.read_bytes() for f in group.rglob("*") if f.is_file()} == before
    # the journal line comes before the rename; interrupted between them, the rerun resumes
    mrc = ("export", str(built), "--format", "mrc", "--arrays", "recon,labels", "--index", "0")
    real, seen = export._journal, []

    def journal_then_killed(where, name, holds):
        real(where, name, holds)
        seen.append((where / name).exists())
        if len(seen) == 2:
            raise KeyboardInterrupt  # as a kill right after the line, before the rename

    monkeypatch.setattr(export, "_journal", journal_then_killed)
    cut = cli(*mrc, "-o", str(tmp_path / "em"))
    assert cut.exit_code == 130 and seen == [False, False], cut.output
    monkeypatch.setattr(export, "_journal", real)
    resumed = cli(*mrc, "-o", str(tmp_path / "em"))
    assert resumed.exit_code == 0 and "wrote 1 file(s)" in resumed.output and "skipped 1" in resumed.output


def test_tilt_series_angles_are_shared_by_formats_and_need_the_angles_array(built, tmp_path, monkeypatch):
    import simaq_factory.store.export as export

    dest = tmp_path / "ts"
    for fmt in ("mrc", "tiff"):  # one .tlt beside both stacks (the second export refused it as a clash)
        result = cli("export", str(built), "--format", fmt, "--arrays", "sinogram", "--index", "0", "-o", str(dest))
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in dest.iterdir()) == [".simaq-export.jsonl", "sample_000000_sinogram.mrc",
                                                      "sample_000000_sinogram.tif", "sample_000000_sinogram.tlt"]
    real = export.dataset_specs
    monkeypatch.setattr(export, "dataset_specs", lambda r: {k: v for k, v in real(r).items() if k != "angles"})
    for fmt in ("mrc", "ome-zarr"):  # said why, not "not exportable" or "use mrc or tiff"
        result = cli("export", str(built), "--format", fmt, "--arrays", "sinogram", "-o", str(tmp_path / "n"))
        assert result.exit_code == 2 and result.stderr == (
            "error: --arrays: 'sinogram': a tilt series is exported with its angles, and this dataset stores "
            "none (dataset.outputs.angles: false)\n"), result.output


def test_freeze_percentiles_come_from_a_bounded_sample(built, tmp_path, monkeypatch):
    """The percentile sample has at most STATS_VALUES values per array whatever the dataset's size
    (it kept every 7th in-view voxel of every sample: ~240 GB for 2000 samples at 512³)."""
    import simaq_factory.store.freeze as freeze_mod

    for n, shape in ((2000, (512, 512, 512)), (4, (32, 32, 32)), (10**5, (64, 64, 64))):
        stride = freeze_mod.stats_stride(n, shape)
        kept = n * shape[0] * len(range(0, int(freeze_mod._fov(shape).sum()), stride))
        assert stride >= freeze_mod.STATS_STRIDE and kept <= max(freeze_mod.STATS_VALUES, n * shape[0]), (n, shape)
    assert freeze_mod.stats_stride(4, (32, 32, 32)) == freeze_mod.STATS_STRIDE  # small datasets as before
    monkeypatch.setattr(freeze_mod, "STATS_VALUES", 4000)
    out = copy_of(built, tmp_path)
    assert cli("freeze", str(out)).exit_code == 0
    stats = json.loads((out / "dataset.zarr" / "zarr.json").read_text())["attributes"]["stats"]
    g = zarr.open_group(out / "dataset.zarr", mode="r")
    n, shape = g["phantom"].shape[0], g["phantom"].shape[1:]
    stride = freeze_mod.stats_stride(n, shape)
    assert stride > freeze_mod.STATS_STRIDE and stats["percentile_sampling"].startswith(f"every {stride}th ")
    fov = freeze_mod._fov(shape)
    for name in ("phantom", "recon"):  # the oracle: the documented sample, gathered directly
        values = np.concatenate([g[name][i][:, fov][:, ::stride].ravel() for i in range(n)])
        assert values.size <= 4000
        expected = np.percentile(values.astype(np.float32), freeze_mod.PERCENTILES).round(5).tolist()
        assert list(stats["percentiles"][name].values()) == expected


def test_an_interrupt_stops_the_hashing_threads_at_once(monkeypatch):
    """Ctrl-C while shard files are hashed on threads: the files not yet started are not hashed
    (an executor's plain shutdown would first hash every queued file of a large dataset)."""
    import threading
    import time

    import simaq_factory.store.dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "hash_threads", lambda: 2)
    done = []
    lock = threading.Lock()

    def hash_one(path):
        if path == 3:
            raise KeyboardInterrupt
        time.sleep(0.01)
        with lock:
            done.append(path)
        return str(path)

    monkeypatch.setattr(dataset_mod, "sha256_file", hash_one)
    with pytest.raises(KeyboardInterrupt):
        dataset_mod.sha256_files(list(range(200)))
    assert len(done) < 50, len(done)


def test_deep_reads_see_what_checksums_cannot_and_freeze_refuses_it(built, tmp_path):
    """A label outside the label set, or a NaN, written with its checksum updated: plain verify
    passes (checksums match), verify --deep names the array and samples, and freeze (which reads
    deep) refuses to seal it."""
    for name, value, problem in (("labels", 7, "labels samples 0-1: values [7] outside the label set"),
                                 ("recon", float("nan"), "recon samples 0-1: non-finite values")):
        out = copy_of(built, tmp_path / name)
        tamper_labels_and_rechecksum(out, name, value)
        assert cli("verify", str(out)).exit_code == 0
        deep = cli("verify", str(out), "--deep")
        assert deep.exit_code == 1 and f"problem: {problem}" in deep.output, deep.output
        # the files match their checksums, so a build would skip them: the hint says how to redo them
        assert "remove provenance/shard-000000.json and run `simaq-factory build`" in deep.stderr, deep.stderr
        sealed = cli("freeze", str(out))
        assert sealed.exit_code == 1 and problem in sealed.stderr, sealed.output
        assert not (out / "SHA256SUMS").exists() and status_of(out) != "frozen"


def status_of(out: Path) -> str:
    return str(zarr.open_group(out / "dataset.zarr", mode="r").attrs["status"])


def test_an_edited_provenance_record_is_a_damaged_shard_that_build_redoes(built, tmp_path):
    """A record edited by hand (here a cell's LAC) no longer matches its own digest: status and
    verify call the shard damaged without regenerating anything, and build redoes it."""
    out = copy_of(built, tmp_path)
    record = out / "provenance" / "shard-000001.json"
    prov = json.loads(record.read_text())
    assert prov[RECORD_DIGEST] == record_digest(prov)
    older = dict(prov)
    del older[RECORD_DIGEST]  # a record as an older version wrote it: accepted, with a note
    record.write_text(json.dumps(older, indent=1))
    ok = cli("verify", str(out))
    assert ok.exit_code == 0 and "note: 1 shard record(s) carry no digest of themselves" in ok.output, ok.output
    prov["sample_records"][0]["phantom_spec"]["cells"][0]["lac"] += 0.05
    record.write_text(json.dumps(prov, indent=1))
    result = cli("verify", str(out))
    assert result.exit_code == 1
    assert "shard 1 (samples 2-3): provenance record does not match its digest" in result.output, result.output
    assert "damaged: 1 shard(s)" in cli("status", str(out)).output
    rebuilt = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert rebuilt.exit_code == 0 and "wrote 1 shard(s), skipped 1" in rebuilt.output, rebuilt.output
    assert cli("verify", str(out), "--regen", "1").exit_code == 0
    def without_timings(path: Path) -> list:
        return [{k: v for k, v in r.items() if k != "timings_s"}
                for r in json.loads(path.read_text())["sample_records"]]

    assert without_timings(record) == without_timings(built / "provenance" / "shard-000001.json")


def test_a_provenance_record_of_another_recipe_is_not_a_done_shard(built, tmp_path):
    out = copy_of(built, tmp_path)
    record = out / "provenance" / "shard-000000.json"
    prov = json.loads(record.read_text())
    prov["recipe_id"] = "0" * 64  # copied from another dataset: its checksums still match the files
    record.write_text(json.dumps(prov))
    result = cli("verify", str(out))
    assert result.exit_code == 1
    assert "shard 0 (samples 0-1): provenance belongs to another recipe" in result.output
    rebuilt = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert rebuilt.exit_code == 0 and "wrote 1 shard(s), skipped 1" in rebuilt.output, rebuilt.output
    assert cli("verify", str(out)).exit_code == 0


def test_sha256sums_entries_outside_the_dataset_are_problems(frozen, tmp_path):
    out = copy_of(frozen, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the dataset")
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    with open(out / "SHA256SUMS", "a") as f:
        f.write(f"{digest}  ../outside.txt\n")
    result = cli("verify", str(out))
    assert result.exit_code == 1 and "../outside.txt lies outside the dataset" in result.output, result.output


def test_build_refuses_a_non_empty_directory_that_holds_no_dataset(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    result = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert result.exit_code == 2
    assert result.stderr == f"error: {out}: output directory is not empty and holds no simaq-factory dataset\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_deep_read_names_an_undecodable_shard_whose_checksum_was_updated(built, tmp_path):
    out = copy_of(built, tmp_path)
    shard = out / "dataset.zarr" / "recon" / "c" / "0" / "0" / "0" / "0"
    shard.write_bytes(b"\0" * 64 + shard.read_bytes()[64:])  # the shard's chunk index survives, the data not
    record = out / "provenance" / "shard-000000.json"
    prov = json.loads(record.read_text())
    prov["checksums"]["recon"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    record.write_text(json.dumps(resealed(prov)))
    assert cli("verify", str(out)).exit_code == 0
    deep = cli("verify", str(out), "--deep")
    assert deep.exit_code == 1 and "problem: recon samples 0-1: unreadable (" in deep.output, deep.output
    assert deep.output.count("problem:") == 1, deep.output


def test_a_missing_optional_package_is_named_with_its_extra_before_any_work(built, tmp_path, monkeypatch):
    from simaq_factory.errors import MissingExtra, optional
    from simaq_train.data.volumes import check_output_path

    monkeypatch.setitem(sys.modules, "tifffile", None)  # import tifffile -> ImportError
    result = cli("export", str(built), "--format", "tiff", "-o", str(tmp_path / "ex"))
    assert result.exit_code == 1, result.output
    assert result.stderr == ("error: export --format tiff needs the Python package tifffile: "
                             "pip install 'simaq-factory[io]'\n")
    assert not (tmp_path / "ex").exists()
    with pytest.raises(MissingExtra, match=r"^writing seg\.tif needs the Python package tifffile"):
        check_output_path(tmp_path / "seg.tif")  # predict: before the model runs
    monkeypatch.setitem(sys.modules, "skimage.filters", None)
    with pytest.raises(MissingExtra, match=r"scikit-image: pip install 'simaq-factory\[baseline\]'$"):
        optional("skimage.filters", "simaq-train baseline")
    # score opens every prediction before scoring any: an MRC folder after a Zarr one is refused first
    monkeypatch.setitem(sys.modules, "mrcfile", None)
    folder = tmp_path / "mrcpred"
    folder.mkdir()
    (folder / "sample_000000_recon.mrc").write_bytes(b"\0" * 1024)
    scored = cli("score", "--gt", str(built), "--pred", str(built), "--pred", str(folder), "-o", str(tmp_path / "rep"))
    assert scored.exit_code == 1, scored.output
    assert scored.stderr.strip().splitlines()[-1] == ("error: reading .mrc predictions needs the Python package "
                                                     "mrcfile: pip install 'simaq-factory[io]'")
    assert not (tmp_path / "rep").exists()


def test_a_resume_with_other_software_says_the_dataset_will_mix_renderings(partial, tmp_path, monkeypatch, caplog):
    """A resume after the checkout moved (or torch was upgraded) rendered the rest of the shards
    with other software under the same dataset card, without a word."""
    import logging

    import simaq_factory.orchestrate.driver as driver
    from simaq_factory.versions import software_versions

    out = tmp_path / "out"
    shutil.copytree(partial, out)
    real = software_versions()
    monkeypatch.setattr(driver, "software_versions", lambda: {**real, "torch": "9.9.9"})
    with caplog.at_level(logging.WARNING, logger=driver.__name__):
        r = cli("build", SMOKE, *small_banks.ARGS, "-o", str(out), "--cluster", "inline")
    assert r.exit_code == 0, r.output
    warned = [rec.getMessage() for rec in caplog.records if "mixes renderings" in rec.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"1 shard(s) done were rendered by simaq-factory {real['simaq-factory']}")
    assert f"torch {real['torch']} (first: shard 0), the rest will be by" in warned[0] and "torch 9.9.9" in warned[0]


def test_verify_json_lists_the_shard_of_a_faulty_provenance_record(built, tmp_path):
    """problem_shards names every shard a problem is about: a record listing its samples out of
    order (or lacking fields) is one, though its files match their checksums."""
    out = copy_of(built, tmp_path)
    path = out / "provenance" / "shard-000001.json"
    prov = json.loads(path.read_text())
    prov["sample_records"] = prov["sample_records"][::-1]
    path.write_text(json.dumps(resealed(prov)))
    ver = cli("verify", str(out), "--json")
    report = json.loads(ver.stdout)
    assert ver.exit_code == 1 and report["problem_shards"] == [1], report
    assert any(p.startswith("shard 1: provenance covers samples") for p in report["problems"]), report["problems"]


# --- progress of the long hand-over commands -------------------------------------------------------

def _phase_lines(text: str, command: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"{command}: ")]


def test_long_commands_show_their_phases_on_stderr_not_stdout(built, tmp_path, monkeypatch):
    from simaq_factory.cli.progress import PhaseBar

    monkeypatch.setattr(PhaseBar, "QUIET_S", 0.0)  # every phase shown, every step (not a terminal)
    monkeypatch.setattr(PhaseBar, "EVERY_S", 0.0)
    result = cli("verify", str(built), "--deep", "--regen", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True  # stdout stays one JSON document
    lines = _phase_lines(result.stderr, "verify")
    assert lines[0] == "verify: shard checksums [" + "." * 30 + "] 0/2"
    assert [line.split(" [")[0] + " " + line.split("] ")[1] for line in lines] == [
        "verify: shard checksums 0/2", "verify: shard checksums 1/2", "verify: shard checksums 2/2",
        "verify: decoding shards 0/2", "verify: decoding shards 1/2", "verify: decoding shards 2/2",
        "verify: re-rendering samples 0/1", "verify: re-rendering samples 1/1"]
    assert lines[-1] == "verify: re-rendering samples [" + "#" * 30 + "] 1/1"
    out = copy_of(built, tmp_path)
    result = cli("freeze", str(out))
    assert result.exit_code == 0, result.output
    phases = list(dict.fromkeys(line.split(" [")[0] for line in _phase_lines(result.stderr, "freeze")))
    assert phases == ["freeze: shard checksums", "freeze: decoding shards", "freeze: previews", "freeze: hashing files"]
    assert _phase_lines(result.stderr, "freeze")[-1].endswith("] " + "{0}/{0}".format(
        len((out / "SHA256SUMS").read_text().splitlines()) - 12))  # all but the 12 shard files verify hashed
    result = cli("export", str(out), "--format", "tiff", "-o", str(tmp_path / "tiff"), "--index", "1")
    assert result.exit_code == 0, result.output
    assert _phase_lines(result.stderr, "export")[-1].endswith("] 3/3")  # recon, labels, phantom


def test_quick_commands_print_no_progress(built):
    for args in (("verify", str(built)), ("status", str(built))):
        result = cli(*args)
        assert result.exit_code == 0 and result.stderr == "", (args, result.stderr)


def test_phase_bar_off_a_terminal_prints_a_line_at_most_every_every_s(monkeypatch, capsys):
    import simaq_factory.cli.progress as progress

    clock = iter([0.0, 0.5, 2.0, 10.0, 33.0, 34.0, 35.0, 35.2])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    bar = progress.PhaseBar("verify")
    for phase, done, total in [("hashing", 0, 100), ("hashing", 10, 100), ("hashing", 20, 100),
                               ("hashing", 50, 100), ("hashing", 60, 100), ("hashing", 100, 100),
                               ("decoding", 0, 5), ("decoding", 5, 5)]:
        bar(phase, done, total)
    err = capsys.readouterr().err.splitlines()
    # quiet for the first QUIET_S s, then a line, the next EVERY_S s later, and the end; a phase
    # done within QUIET_S prints nothing
    assert [line.split("] ")[1] for line in err] == ["20/100", "60/100", "100/100"]
