"""The digest cache: status, a resumed build and the training reader hash only the shard files that
changed since they were last hashed; verify hashes every byte and tells the cache what it found."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import simaq_factory.store.dataset as dataset
from simaq_factory.cli.main import main

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
N_SHARD_FILES = 12  # 6 arrays x 2 shards


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digests") / "out"
    result = cli("build", SMOKE, *small_banks.ARGS, "-o", out, "--cluster", "inline")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Shard files hashed (read) from now on; the cache takes files as settled however recent."""
    monkeypatch.setattr(dataset, "RACY_NS", -10**18)
    calls: list[Path] = []
    real = dataset.sha256_file

    def counting(path):  # noqa: ANN001, ANN202
        if "dataset.zarr" in Path(path).parts:
            calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(dataset, "sha256_file", counting)
    return calls


def _shard_file(out: Path) -> Path:
    return next(p for p in sorted((out / "dataset.zarr" / "recon" / "c").rglob("*")) if p.is_file())


def test_status_and_resume_hash_only_what_changed_verify_every_byte(built, tmp_path, hashed):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    assert "2 done, 0 pending" in cli("status", out).output
    assert len(hashed) == N_SHARD_FILES  # a new path: nothing cached
    hashed.clear()
    assert "2 done, 0 pending" in cli("status", out).output
    assert hashed == []
    assert "skipped 2" in cli("build", SMOKE, *small_banks.ARGS, "-o", out, "--cluster", "inline").output
    assert hashed == []
    assert cli("verify", out).exit_code == 0
    assert len(hashed) == N_SHARD_FILES  # verify reads every byte
    # a write to a file is seen, even with its size and modification time put back: the change
    # time moves
    hashed.clear()
    victim = _shard_file(out)
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    status = cli("status", out)
    assert "1 damaged" in status.output and "recon shard file does not match its checksum" in status.output
    assert hashed == [victim]


def test_damage_that_leaves_the_timestamps_is_found_by_verify_and_then_known(built, tmp_path, hashed):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    assert "2 done" in cli("status", out).output
    cache = dataset.DigestCache(out)
    victim = _shard_file(out)
    key = victim.relative_to(out).as_posix()
    good = cache.entries[key][4]
    # bit rot, simulated: the bytes change under a cache entry that still names the file as it is
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    st = victim.stat()
    cache.entries[key] = [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, good]
    cache.changed = True
    cache.save()
    assert "2 done" in cli("status", out).output  # the quick check trusts the file's identity
    verify = cli("verify", out)
    assert verify.exit_code == 1 and "recon shard file does not match its checksum" in verify.output
    assert "1 damaged" in cli("status", out).output  # verify told the cache
    rebuilt = cli("build", SMOKE, *small_banks.ARGS, "-o", out, "--cluster", "inline")
    assert rebuilt.exit_code == 0 and "wrote 1 shard(s)" in rebuilt.output, rebuilt.output
    assert cli("verify", out).exit_code == 0


def test_the_cache_lives_outside_the_dataset_and_can_be_turned_off(built, tmp_path, hashed, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(built, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    cli("status", out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    path = dataset.DigestCache(out).path
    assert path is not None and path.is_file() and not path.is_relative_to(out)
    doc = json.loads(path.read_text())
    assert doc["dataset"] == str(out.resolve()) and len(doc["files"]) == N_SHARD_FILES
    monkeypatch.setenv(dataset.DIGEST_CACHE_ENV, "off")
    hashed.clear()
    cli("status", out)
    assert len(hashed) == N_SHARD_FILES
