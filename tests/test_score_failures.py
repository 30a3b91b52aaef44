"""``score`` / ``baseline`` on damaged stores (exit 1, naming the array and sample), their report
and path checks (exit 2, nothing written), on a tiny dataset built through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from simaq_factory.score.baseline import available_methods

from test_score_cli import REPO, SMOKE, TINY, invoke


def error_line(result, code: int) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def zero_bytes_mid_file(path: Path, n: int = 16) -> None:
    """Overwrite ``n`` bytes in the middle of ``path`` (a compressed chunk no longer decodes)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(n)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("failures")
    r = invoke("build", SMOKE, "-o", str(root / "ds"), "--cluster", "inline", *TINY)
    assert r.exit_code == 0, r.output
    return root / "ds"


def _copy(ds: Path, dest: Path) -> Path:
    shutil.copytree(ds, dest)
    return dest


def test_score_on_an_undecodable_phantom_chunk_names_array_and_sample_and_exits_1(ds, tmp_path):
    bad = _copy(ds, tmp_path / "bad")
    zero_bytes_mid_file(bad / "dataset.zarr" / "phantom" / "c" / "1" / "0" / "0" / "0")  # sample 2's shard
    out = tmp_path / "rep"
    line = error_line(invoke("score", "--gt", str(bad), "--pred", str(bad), "-o", str(out)), 1)
    assert f"{bad}/dataset.zarr/phantom, sample 2: chunk cannot be decoded" in line, line
    assert f"run `simaq-factory verify {bad}`" in line, line
    assert "(run with -vv" not in line  # a message of ours, not an anonymous library error
    assert not out.exists()


def test_score_on_an_undecodable_prediction_chunk_names_it_and_exits_1(ds, tmp_path):
    pred = tmp_path / "pred.zarr"
    g = zarr.open_group(pred, mode="w", zarr_format=3)
    g.create_array("recon", data=np.random.default_rng(0).random((3, 32, 32, 32), dtype=np.float32),
                   chunks=(1, 32, 32, 32))
    chunk = pred / "recon" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])  # truncated: zstd cannot decode it
    line = error_line(invoke("score", "--gt", str(ds), "--pred", str(pred), "-o", str(tmp_path / "rep")), 1)
    assert f"{pred}/recon, sample 1: chunk cannot be decoded" in line, line
    assert not (tmp_path / "rep").exists()


def test_baseline_on_an_undecodable_sinogram_chunk_exits_1_and_leaves_nothing(ds, tmp_path):
    bad = _copy(ds, tmp_path / "bad")
    shard = bad / "dataset.zarr" / "sinogram" / "c" / "0" / "0" / "0" / "0"  # samples 0 and 1
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated: its index fails its crc
    pred = tmp_path / "p.zarr"
    line = error_line(invoke("baseline", str(bad), "--method", "fbp-ramlak", "-o", str(pred)), 1)
    assert f"{bad}/dataset.zarr/sinogram, sample 0: chunk cannot be decoded" in line, line
    assert f"simaq-factory verify {bad}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no PRED, no .PRED.partial


def test_baseline_on_a_sinogram_that_no_longer_matches_its_checksum_exits_1(ds, tmp_path):
    # a flipped byte can decode to NaN rather than fail: the shard's checksum tells a damaged store
    # from a dataset that was written with NaN projections (bad input, see test_score_baselines)
    bad = _copy(ds, tmp_path / "bad")
    g = zarr.open_group(bad / "dataset.zarr", mode="r+")
    sino = g["sinogram"][1]
    sino[0, 3] = np.nan
    g["sinogram"][1] = sino
    pred = tmp_path / "p.zarr"
    line = error_line(invoke("baseline", str(bad), "--method", "fbp-hamming", "-o", str(pred)), 1)
    assert f"{bad}/dataset.zarr/sinogram, sample 1:" in line and "does not match its checksum" in line, line
    assert f"simaq-factory verify {bad}" in line
    assert "NaN" in line
    # sample 0 was reconstructed before the failure: the partial output stays, to resume from
    assert not pred.exists() and (tmp_path / ".p.zarr.partial").is_dir()


def test_score_refuses_to_replace_a_report_unless_overwrite(ds, tmp_path):
    out = tmp_path / "rep"
    first = invoke("score", "--gt", str(ds), "--pred", str(ds), "-o", str(out))
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "scores.json" in before
    again = error_line(invoke("score", "--gt", str(ds), "--pred", str(ds), "-o", str(out)), 2)
    assert str(out) in again and "--overwrite" in again
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    (out / "fig-stale.png").write_bytes(b"an earlier report's figure")
    r = invoke("score", "--gt", str(ds), "--pred", str(ds), "-o", str(out), "--overwrite", "--only", "labels")
    assert r.exit_code == 0, r.output
    payload = json.loads((out / "scores.json").read_text())
    assert list(payload["predictions"].values())[0]["kinds"] == ["labels"]  # the new report
    assert not (out / "fig-stale.png").exists()


def test_score_never_writes_into_a_folder_holding_other_files(ds, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    for extra in ((), ("--overwrite",)):
        line = error_line(invoke("score", "--gt", str(ds), "--pred", str(ds), "-o", str(out), *extra), 2)
        assert str(out) in line and "notes.txt" in line, line
    assert sorted(os.listdir(out)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("score", "--gt", str(ds), "--pred", str(ds), "-o", str(empty), "--only", "labels")
    assert r.exit_code == 0, r.output
    assert (empty / "scores.json").exists()


@pytest.mark.parametrize("where", ["nothere", "notads"])
def test_baseline_checks_the_dataset_path_before_importing_torch(tmp_path, where):
    (tmp_path / "notads").mkdir()
    code = ("import sys\nfrom simaq_factory.cli.main import main\n"
            "try:\n    main(['baseline', sys.argv[1], '--method', 'sirt', '-o', sys.argv[2]])\n"
            "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / where), str(tmp_path / "x.zarr")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.stdout.strip() == "exit 2 False", (r.stdout, r.stderr)
    assert where in r.stderr and ("no such dataset" in r.stderr or "not a simaq-factory dataset" in r.stderr)
    assert not (tmp_path / "x.zarr").exists()


def test_baseline_help_names_every_method_without_conditions():
    r = invoke("baseline", "--help")
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "where the reconstruction supports" not in text
    for m in available_methods():
        assert m in text, m
    assert "any dataset that stores its sinogram and angles" in text
