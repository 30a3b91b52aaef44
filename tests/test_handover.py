"""Hand-over commands: verify, freeze, preview, export (round trips against the stored arrays)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("handover") / "out"
    result = cli("build", SMOKE, "-o", str(out), "--cluster", "inline")
    assert result.exit_code == 0, result.output
    return out


def copy_of(built: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(built, dst)
    return dst


def test_verify_ok_deep_and_regen(built):
    result = cli("verify", str(built), "--deep", "--regen", "2")
    assert result.exit_code == 0, result.output
    assert "4 sample(s) verified (deep), regenerated samples [0, 3]" in result.output


def test_verify_names_damaged_shard_and_build_repairs(built, tmp_path):
    out = copy_of(built, tmp_path)
    shard = out / "dataset.zarr" / "labels" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0x01
    shard.write_bytes(bytes(raw))
    result = cli("verify", str(out))
    assert result.exit_code == 1
    assert "shard 1 (samples 2-3): labels shard file does not match its checksum" in result.output
    assert cli("build", SMOKE, "-o", str(out), "--cluster", "inline").exit_code == 0
    assert cli("verify", str(out)).exit_code == 0


def test_verify_regen_detects_tampered_but_rechecksummed_data(built, tmp_path):
    """A shard rewritten with wrong labels (and its checksum updated) still fails regeneration."""
    out = copy_of(built, tmp_path)
    g = zarr.open_group(out / "dataset.zarr", mode="r+")
    labels = g["labels"][0:2]
    labels[0, 0, 0, 0] = 3
    g["labels"][0:2] = labels
    prov_path = out / "provenance" / "shard-000000.json"
    prov = json.loads(prov_path.read_text())
    shard = out / "dataset.zarr" / "labels" / "c" / "0" / "0" / "0" / "0"
    prov["checksums"]["labels"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    prov_path.write_text(json.dumps(prov))
    assert cli("verify", str(out)).exit_code == 0  # checksums alone cannot see it
    result = cli("verify", str(out), "--regen", "4")
    assert result.exit_code == 1 and "sample 0: regenerated labels differs" in result.output


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
    assert abs(fractions["vacuole"] - (labels == 2).mean()) < 1e-9
    # every file is listed with its digest
    listed = dict(line.split("  ", 1)[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert set(listed) == files
    for rel, digest in listed.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    md = (out / "DATASET.md").read_text()
    assert card["recipe_id"] in md and "Per-class voxel fractions" in md
    again = cli("build", SMOKE, "-o", str(out), "--cluster", "inline")
    assert again.exit_code == 2 and "frozen" in again.stderr
    assert cli("freeze", str(out)).exit_code == 2


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
    clash = cli("export", str(built), "--format", "tiff", "-o", str(dest), "--index", "1")
    assert clash.exit_code == 2 and "--overwrite" in clash.stderr
    assert cli("export", str(built), "--format", "tiff", "-o", str(dest), "--arrays", "sinogram").exit_code == 2


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
