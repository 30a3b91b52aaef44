"""Several commands writing one output at once: two exports into one destination, a fit reading a
dataset that freeze is sealing, two predicts to one output. The second writer is refused (exit 2)
or sees the first one's whole result, never half of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simaq_factory.store.export import MARKER

from test_score_cli import SMOKE, TINY, invoke

fcntl = pytest.importorskip("fcntl")


def cli(*args: object):  # type: ignore[no-untyped-def]
    return invoke(*map(str, args))


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("concurrent")
    r = invoke("build", SMOKE, "-o", str(root / "ds"), "--cluster", "inline", *TINY)
    assert r.exit_code == 0, r.output
    return root / "ds"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- export ----------------------------------------------------------------------------------

def test_a_second_export_into_a_destination_an_export_holds_is_refused_and_touches_nothing(ds, tmp_path):
    """Two exports into one destination (a re-submitted job, or jobs with disjoint --index sets and
    one -o) removed each other's temporary files as leftovers: an OME-Zarr sample renamed into place
    without its image and listed as complete, files vanishing under their writer. While one export
    holds the destination, another is refused with one line and exit 2, and leaves the holder's
    temporary file in place."""
    dest = tmp_path / "ex"
    assert cli("export", ds, "--format", "tiff", "-o", dest, "--index", "0").exit_code == 0
    fd = os.open(dest / MARKER, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an export writing ``dest`` now
        (dest / ".sample_000001_recon.ome.zarr.partial" / "0").mkdir(parents=True)  # what it writes
        (dest / ".sample_000001_recon.tif.partial").write_bytes(b"x" * 100)
        before = _snapshot(dest)
        names = sorted(p.name for p in dest.iterdir())
        for extra in ((), ("--format", "ome-zarr", "--index", "1"), ("--index", "2", "--overwrite")):
            args = ("--format", "tiff", *extra) if not extra or extra[0] != "--format" else extra
            r = cli("export", ds, "-o", dest, *args)
            assert r.exit_code == 2, (extra, r.output)
            who = f" (process {os.getpid()})" if Path("/proc/locks").is_file() else ""
            assert r.stderr == (f"error: {dest}: another export{who} is writing to it; wait for it to end "
                                "or export to another destination\n"), r.stderr
            assert _snapshot(dest) == before and sorted(p.name for p in dest.iterdir()) == names
    finally:
        os.close(fd)  # the holder ends: the next export takes over and clears its leftovers
    r = cli("export", ds, "--format", "tiff", "-o", dest)
    assert r.exit_code == 0 and "wrote 6 file(s)" in r.output and "skipped 3" in r.output, r.output
    assert not list(dest.glob(".*.partial"))


def test_a_killed_export_does_not_block_the_next_which_clears_its_leftovers(ds, tmp_path):
    """The lock is a flock: it ends with its process, so a SIGKILLed export holds nothing, and what
    it left is removed by the next export into the destination."""
    dest = tmp_path / "ex"
    dest.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(dest / MARKER)!r}, os.O_RDWR | os.O_CREAT | os.O_APPEND)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
         f"open({str(dest / '.sample_000000_recon.tif.partial')!r}, 'wb').write(b'x' * 100)\n"
         "print('held', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        r = cli("export", ds, "--format", "tiff", "-o", dest, "--index", "0")
        assert r.exit_code == 2 and "another export" in r.stderr, r.output
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    r = cli("export", ds, "--format", "tiff", "-o", dest, "--index", "0")
    assert r.exit_code == 0 and "wrote 3 file(s)" in r.output, r.output
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, *(f"sample_000000_{a}.tif"
                                                               for a in ("labels", "phantom", "recon"))]


# --- freeze ----------------------------------------------------------------------------------

def test_freeze_writes_its_manifest_whole_or_not_at_all(ds, tmp_path, monkeypatch):
    """freeze wrote manifest.jsonl in place while the card still said "complete": a `simaq-train fit`
    started meanwhile hashed the part written so far into its checkpoint, and no resume of that run
    ever matched the dataset again. It is written to a temporary name and renamed: a failure in the
    middle of it leaves no manifest.jsonl and no temporary file; what a kill there leaves is removed
    by the next freeze, not sealed in."""
    import shutil

    import simaq_factory.store.freeze as freeze_mod
    from simaq_factory.store.outdir import sweep_temp_files

    out = tmp_path / "ds"
    shutil.copytree(ds, out)
    real = freeze_mod._Stats.finish

    def finish(self, where):  # type: ignore[no-untyped-def]
        manifest, stats = real(self, where)
        return [manifest[0], {"unwritable": object()}, *manifest[1:]], stats  # fails at the second row

    monkeypatch.setattr(freeze_mod._Stats, "finish", finish)
    with pytest.raises(TypeError, match="not JSON serializable"):
        freeze_mod.freeze_dataset(out, previews=0)
    assert not (out / freeze_mod.MANIFEST).exists() and not list(out.glob(".manifest*"))
    monkeypatch.undo()
    for name in (".manifest.jsonl.partial", ".DATASET.md.partial"):  # a freeze killed while writing it
        (out / name).write_text("{}\n")
    # swept by the next build or freeze (which takes its lock), not left for verify to report
    assert sorted(p.name for p in sweep_temp_files(out)) == [".DATASET.md.partial", ".manifest.jsonl.partial"]
    (out / ".manifest.jsonl.partial").write_text("{}\n")
    freeze_mod.freeze_dataset(out, previews=0)
    assert len((out / freeze_mod.MANIFEST).read_text().splitlines()) == 3
    assert not list(out.glob(".*.partial"))
    assert ".manifest.jsonl.partial" not in (out / "SHA256SUMS").read_text()
    assert cli("verify", out).exit_code == 0


# --- simaq-train predict ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["seg.npy", "seg.tif", "seg.zarr"])
def test_a_predict_output_that_appears_while_another_is_written_is_not_replaced(tmp_path, monkeypatch, name):
    """Two `simaq-train predict` to one output without --overwrite: both passed the check for an
    existing output before writing, and the one that finished second renamed its result over the
    first one's (a Zarr: removed it). The result is now placed without replacing anything: the
    second gets "exists; use --overwrite" (exit 2), the first one's result stays, nothing of the
    second is left behind. With --overwrite it replaces it, as before."""
    import numpy as np

    import simaq_train.data.volumes as volumes
    from simaq_factory.errors import BadInput

    if name.endswith(".tif"):
        pytest.importorskip("tifffile")
    out = tmp_path / name
    first, second = np.zeros((4, 8, 8), np.uint8), np.ones((4, 8, 8), np.uint8)
    real = volumes._write_to

    def the_other_finishes_meanwhile(tmp, suf, volume, *rest):  # type: ignore[no-untyped-def]
        real(tmp, suf, volume, *rest)
        real(tmp.with_name(".other"), suf, first, *rest)  # the other predict, started at the same time,
        os.rename(tmp.with_name(".other"), out)  # finishes first and places its result

    monkeypatch.setattr(volumes, "_write_to", the_other_finishes_meanwhile)
    with pytest.raises(BadInput, match="exists; use --overwrite"):
        volumes.write_volume(out, second)
    np.testing.assert_array_equal(volumes.read_volume(out), first)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file or folder left
    monkeypatch.undo()
    volumes.write_volume(out, second, overwrite=True)  # asked for: replaced
    np.testing.assert_array_equal(volumes.read_volume(out), second)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_predict_output_is_placed_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    """Placing a file without replacing links it in; a filesystem that refuses hard links (some
    network and FUSE ones) still gets its result, by a last check and a rename."""
    import errno

    import numpy as np

    import simaq_train.data.volumes as volumes

    def no_links(src, dst):  # type: ignore[no-untyped-def]
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    vol = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8)
    volumes.write_volume(tmp_path / "seg.npy", vol)
    np.testing.assert_array_equal(volumes.read_volume(tmp_path / "seg.npy"), vol)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.npy"]
