"""Damage to a dataset's own files that checksums do not cover: the recipe files, the dataset card,
the noise banks' group metadata, provenance records that no longer read, paths of the wrong kind.
``status`` and ``verify`` name each, a build of the same recipe repairs what it can, and the
read-only commands neither show damaged data as if it were whole nor write into a frozen dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
BUILD = ("build", SMOKE, *small_banks.ARGS, "--cluster", "inline")


def cli(*args: object):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("damage") / "base"
    result = cli(*BUILD, "-o", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def sealed(base, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sealed") / "fz"
    shutil.copytree(base, out)
    assert cli("freeze", out).exit_code == 0
    return out


def copy(src: Path, tmp_path: Path, name: str = "ds") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def rebuild_and_verify(out: Path) -> None:
    result = cli(*BUILD, "-o", out)
    assert result.exit_code == 0 and "skipped 2 already done" in result.output, result.output
    ok = cli("verify", out)
    assert ok.exit_code == 0, ok.output


def test_an_edited_resolved_recipe_is_named_and_rewritten_by_build(base, tmp_path):
    # the recorded recipe says ram-lak, the data were reconstructed with the recipe's filter: provenance
    # that lies; status, verify and freeze said nothing (only --regen saw the samples differ)
    out = copy(base, tmp_path)
    resolved = out / "recipe.resolved.json"
    edit_json(resolved, lambda p: p["recipe"]["reconstruction"].update(filter="ram-lak"))
    st = cli("status", out)
    assert "verdict: damaged: 1 metadata file(s)" in st.output, st.output
    assert f"problem: {resolved}: its recipe hashes to " in st.output and "edited since the build" in st.output
    assert cli("verify", out).exit_code == 1
    refused = cli("freeze", out)
    assert refused.exit_code == 1 and not (out / "SHA256SUMS").exists(), refused.output
    rebuild_and_verify(out)
    assert json.loads(resolved.read_text())["recipe"]["reconstruction"]["filter"] != "ram-lak"


def test_a_card_that_disagrees_with_the_recipe_is_named_and_rewritten_by_build(base, tmp_path):
    out = copy(base, tmp_path)
    card = out / "dataset.zarr" / "zarr.json"
    edit_json(card, lambda m: m["attributes"].update(recipe_id="f" * 64, n_samples=2))
    result = cli("verify", out)
    assert result.exit_code == 1
    assert f"problem: {card}: the dataset card disagrees with the recipe: recipe_id " in result.output, result.output
    assert "n_samples 2 (recipe: 4)" in result.output
    rebuild_and_verify(out)
    attrs = zarr.open_group(out / "dataset.zarr", mode="r").attrs
    assert attrs["n_samples"] == 4 and attrs["recipe_id"] == json.loads((out / "recipe.resolved.json").read_text())[
        "recipe_id"]


def test_lost_recipe_files_and_banks_group_metadata_are_named_and_written_again(base, tmp_path):
    out = copy(base, tmp_path)
    (out / "recipe.yaml").unlink()
    (out / "dataset.zarr" / "banks" / "zarr.json").unlink()  # a Zarr reader no longer sees the banks
    result = cli("verify", out)
    assert result.exit_code == 1
    assert f"problem: {out / 'recipe.yaml'}: the recipe as given to build is missing" in result.output
    assert f"problem: {out / 'dataset.zarr' / 'banks' / 'zarr.json'}: group metadata of the noise banks is missing" \
        in result.output, result.output
    rebuild_and_verify(out)
    assert "banks" in zarr.open_group(out / "dataset.zarr", mode="r")
    # recipe.resolved.json itself: every command names it; a build of the recipe the card records writes it
    (out / "recipe.resolved.json").unlink()
    st = cli("status", out)  # a damaged dataset, not bad input: exit 0 with the verdict
    assert st.exit_code == 0 and "verdict: damaged" in st.output, st.output
    assert f"{out / 'recipe.resolved.json'}" in st.output and "missing" in st.output, st.output
    other = cli(*BUILD, "-o", out, "--set", "seed=9")
    assert other.exit_code == 2 and "holds a dataset of recipe" in other.stderr
    rebuild_and_verify(out)
    # cut short (a full disk, a bad copy): named with the remedy, and the same remedy works
    resolved = out / "recipe.resolved.json"
    resolved.write_text(resolved.read_text()[:100])
    st = cli("status", out)
    assert st.exit_code == 0 and "verdict: damaged" in st.output, st.output
    assert "unreadable resolved recipe" in st.output and "rewrites it" in st.output, st.output
    rebuild_and_verify(out)


def test_a_frozen_dataset_that_lost_its_resolved_recipe_is_not_rewritten(sealed, tmp_path):
    out = copy(sealed, tmp_path)
    (out / "recipe.resolved.json").unlink()
    result = cli(*BUILD, "-o", out)
    assert result.exit_code == 1 and "missing in the frozen dataset" in result.stderr, result.output
    assert not (out / "recipe.resolved.json").exists()


def test_unreadable_records_and_files_of_the_wrong_kind_are_damage_not_errors(base, tmp_path):
    out = copy(base, tmp_path)
    record = out / "provenance" / "shard-000000.json"
    record.write_text(record.read_text()[:100])  # cut short: was "pending / not built yet"
    chunk = out / "dataset.zarr" / "phantom" / "c" / "1" / "0" / "0" / "0"
    chunk.unlink()
    chunk.mkdir()  # was an IsADirectoryError from every command
    st = cli("status", out)
    assert st.exit_code == 0 and "verdict: damaged: 2 shard(s)" in st.output, st.output
    assert "shard 0: provenance record is not valid JSON (truncated or damaged)" in st.output
    assert "shard 1: phantom shard file unreadable (Is a directory)" in st.output
    info = cli("info", out, "--index", "1")
    assert info.exit_code == 1 and "sample 1: shard 0 is damaged: provenance record is not valid JSON" in info.stderr
    verify = cli("verify", out)
    assert verify.exit_code == 1 and "shard 0 (samples 0-1): provenance record is not valid JSON" in verify.output


def test_preview_refuses_damaged_shards_and_nothing_is_written_into_a_frozen_dataset(base, sealed, tmp_path):
    out = copy(base, tmp_path)
    (out / "dataset.zarr" / "recon" / "c" / "1" / "0" / "0" / "0").unlink()  # read back as zeros
    png = tmp_path / "p.png"
    result = cli("preview", out, "--index", "2", "-o", png)
    assert result.exit_code == 1 and not png.exists(), result.output
    assert result.stderr.strip() == (f"error: shard 1 (samples 2-3) of {out} is damaged: recon shard file does not "
                                     "match its checksum; nothing rendered; `simaq-factory build` with the same "
                                     "recipe repairs it")
    assert cli("preview", out, "--index", "0", "-o", png).exit_code == 0  # shard 0 is whole
    before = sorted(p.relative_to(sealed) for p in sealed.rglob("*"))
    for args in (("preview", sealed, "--index", "0", "-o", sealed / "look.png"),
                 ("export", sealed, "--format", "tiff", "-o", sealed / "exports"),
                 ("export", sealed, "--format", "mrc", "-o", sealed)):
        refused = cli(*args)
        assert refused.exit_code == 2 and f"inside the frozen dataset {sealed}" in refused.stderr, refused.output
    assert sorted(p.relative_to(sealed) for p in sealed.rglob("*")) == before
    assert cli("verify", sealed).exit_code == 0


def test_a_damaged_frozen_shard_points_to_a_good_copy_not_to_build(sealed, tmp_path):
    out = copy(sealed, tmp_path)
    (out / "dataset.zarr" / "labels" / "c" / "0" / "0" / "0" / "0").unlink()
    result = cli("export", out, "--format", "mrc", "-o", tmp_path / "ex")
    assert result.exit_code == 1 and "the dataset is frozen: restore it from a good copy" in result.stderr
    (out / "provenance" / "shard-000001.json").unlink()
    again = cli(*BUILD, "-o", out)
    assert again.exit_code == 1 and "(incomplete" not in again.stderr, again.stderr
    assert "their provenance records are gone" in again.stderr or "shard 0" in again.stderr


def test_an_exported_file_cut_short_after_the_export_is_written_again(base, tmp_path):
    dest = tmp_path / "ex"
    args = ("export", base, "--format", "mrc", "--index", "0", "-o", dest)
    assert cli(*args).exit_code == 0
    target = dest / "sample_000000_recon.mrc"
    size = target.stat().st_size
    with open(target, "r+b") as f:
        f.truncate(1000)
    again = cli(*args)
    assert again.exit_code == 0 and "wrote 1 file(s)" in again.output, again.output
    assert target.stat().st_size == size
    assert "wrote 0 file(s)" in cli(*args).output


def test_a_folder_in_place_of_zarr_metadata_is_named_not_an_oserror(base, tmp_path):
    out = copy(base, tmp_path)
    meta = out / "dataset.zarr" / "recon" / "zarr.json"
    meta.unlink()
    meta.mkdir()
    result = cli(*BUILD, "-o", out)
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {meta}: a folder where the Zarr metadata file belongs; remove it and build again\n"
    meta.rmdir()
    rebuild_and_verify(out)


def test_a_file_in_place_of_the_provenance_folder_is_named_by_verify_and_build(base, tmp_path):
    out = copy(base, tmp_path)
    shutil.rmtree(out / "provenance")
    (out / "provenance").write_text("not a folder")
    verify = cli("verify", out)
    assert verify.exit_code == 1 and "shard 0 (samples 0-1): provenance/ is not a folder" in verify.output
    assert f"{out / 'provenance'} is a file where the folder of provenance records belongs" in verify.stderr
    build = cli(*BUILD, "-o", out)  # was a FileExistsError from every shard
    assert build.exit_code == 1 and build.stderr == (
        f"error: {out / 'provenance'}: a file where the folder of the shards' provenance records belongs; "
        "move it away and build again (the shards are then checked and rebuilt)\n"), build.output
    assert (out / "provenance").read_text() == "not a folder"
    (out / "provenance").unlink()
    again = cli(*BUILD, "-o", out)
    assert again.exit_code == 0, again.output
    assert cli("verify", out).exit_code == 0


def test_a_folder_in_place_of_the_export_journal_is_refused_before_writing(base, tmp_path):
    dest = tmp_path / "ex"
    (dest / ".simaq-export.jsonl").mkdir(parents=True)
    result = cli("export", base, "--format", "mrc", "--index", "0", "-o", dest)
    assert result.exit_code == 2 and result.stderr == (
        f"error: {dest / '.simaq-export.jsonl'}: is not a file: this is where export keeps its journal of "
        "finished files; move it away or export to another destination\n"), result.output
    assert [p.name for p in dest.iterdir()] == [".simaq-export.jsonl"]


def test_no_command_writes_into_another_dataset_and_freeze_lists_only_listable_names(base, sealed, tmp_path, caplog):
    """preview/export/score/build checked their destination against their own source dataset only:
    a preview written over another frozen dataset's published preview broke its seal, exit 0."""
    before = {p: p.read_bytes() for p in sealed.rglob("*") if p.is_file()}
    for args in (("preview", base, "--index", "0", "-o", sealed / "previews" / "sample_000000.png"),
                 ("export", base, "--format", "mrc", "--index", "0", "-o", sealed / "exp"),
                 ("score", "--gt", base, "--pred", base, "-o", sealed / "report"),
                 (*BUILD, "-o", sealed / "nested")):
        refused = cli(*args)
        assert refused.exit_code == 2 and f"inside the frozen dataset {sealed}, which refuses" in refused.stderr, \
            refused.output
    assert {p: p.read_bytes() for p in sealed.rglob("*") if p.is_file()} == before
    # freeze: a name SHA256SUMS cannot hold is refused before anything is written; others are named
    out = copy(base, tmp_path)
    odd = out / "notes\nv2.txt"
    odd.write_text("x")
    card = (out / "dataset.zarr" / "zarr.json").read_bytes()
    result = cli("freeze", out)
    assert result.exit_code == 2 and "its name holds a line break or a backslash" in result.stderr, result.output
    assert (out / "dataset.zarr" / "zarr.json").read_bytes() == card and not (out / "SHA256SUMS").exists()
    odd.rename(out / "LICENSE")
    result = cli("freeze", out)
    assert result.exit_code == 0, result.output
    assert "sealing 1 file(s) that are not part of the dataset's layout: LICENSE" in caplog.text
    assert cli("verify", out).exit_code == 0
    # the published previews name the recipe, not the folder they were frozen in
    again = copy(base, tmp_path, "another-name")
    assert cli("freeze", again).exit_code == 0
    assert (again / "previews" / "sample_000000.png").read_bytes() == (out / "previews" / "sample_000000.png").read_bytes()


def test_verify_says_to_finish_an_interrupted_freeze(base, tmp_path):
    out = copy(base, tmp_path)
    assert cli("freeze", out).exit_code == 0
    (out / "SHA256SUMS").unlink()  # as a freeze killed before its last step leaves it
    result = cli("verify", out)
    assert result.exit_code == 1 and result.stderr.strip().endswith(
        f"its freeze was interrupted (SHA256SUMS, written last, is missing): run `simaq-factory freeze {out}` to "
        "complete it"), result.output
    assert cli("freeze", out).exit_code == 0 and cli("verify", out).exit_code == 0


def test_temporary_files_of_killed_writes_are_swept_not_sealed(base, tmp_path):
    """A kill between writing a record's temporary file and renaming it left `.NAME.json.XXXXXXXX.tmp`
    for good (random names are never written again): build resumed past it and freeze sealed it."""
    out = copy(base, tmp_path)
    shard_dir = next(p.parent for p in (out / "dataset.zarr" / "noisy").rglob("*") if p.is_file() and p.name == "0")
    left = [out / "provenance" / ".shard-000001.json.k3v9x2ab.tmp", out / "dataset.zarr" / ".zarr.json.q1w2e3r4.tmp",
            # zarr's own: a shard and the group's zarr.json written, not yet renamed (a full shard's size)
            shard_dir / "0.3f2b9c4d5e6f708192a3b4c5d6e7f809.partial",
            out / "dataset.zarr" / "zarr.0123456789abcdef0123456789abcdef.partial"]
    for path in left:
        path.write_text("")
    mine = out / "notes.tmp"  # not a name of ours: left alone (and sealed, with a warning)
    mine.write_text("x")
    rebuild_and_verify(out)
    assert not any(p.exists() for p in left) and mine.exists()
    left[0].write_text("")
    left[2].write_text("")
    (out / "previews").mkdir(exist_ok=True)
    (out / "previews" / ".sample_000000.png.partial").write_text("")
    assert cli("freeze", out).exit_code == 0
    listed = (out / "SHA256SUMS").read_text()
    assert ".tmp  " not in listed and ".k3v9x2ab.tmp" not in listed and "notes.tmp" in listed
    assert ".partial" not in listed, listed


def test_sigterm_is_an_interrupt_with_its_clean_up_and_exit_143(capsys):
    """SLURM, Kubernetes and `kill` send SIGTERM: it skipped every clean-up (temporary files stayed)."""
    import os
    import signal
    import time

    from simaq_factory.errors import handle_errors

    cleaned = []

    @handle_errors(resumes=True)
    def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            cleaned.append(True)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        command()
    assert exit_.value.code == 143 and cleaned == [True]
    assert capsys.readouterr().err == "error: terminated (SIGTERM); interrupted; run the same command again to resume\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interrupt_during_asynchronous_io_prints_one_line():
    """zarr writes through an asyncio loop in another thread: an interrupt mid-write left its
    pending tasks to be destroyed at exit, and asyncio logged each ("Task was destroyed but it is
    pending!") after the one-line message, with 'coroutine ... was never awaited' warnings."""
    import subprocess
    import sys

    script = """
import asyncio, atexit, logging, threading, time
from simaq_factory.errors import handle_errors
logging.basicConfig()
loop = asyncio.new_event_loop()
thread = threading.Thread(target=loop.run_forever, daemon=True)
thread.start()
def close():  # as zarr closes its I/O loop at exit
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
atexit.register(close)
async def write():
    await asyncio.sleep(60)
async def gather():
    await asyncio.gather(*(write() for _ in range(5)))
@handle_errors(resumes=True)
def command():
    asyncio.run_coroutine_threadsafe(gather(), loop)
    time.sleep(0.3)
    raise KeyboardInterrupt
command()
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130
    assert r.stderr == "error: interrupted; run the same command again to resume\n", r.stderr


def test_a_runtime_failure_says_where_minus_vv_goes():
    """-vv is the group's flag: 'simaq-factory build ... -vv' is refused by click, so the hint of an
    unexpected failure shows it before the command, and -vv there raises the traceback."""
    import logging

    import click
    from click.testing import CliRunner

    from simaq_factory.errors import handle_errors

    @click.group()
    @click.option("-v", "--verbose", count=True)
    def tool(verbose: int) -> None:
        logging.getLogger().setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)

    @tool.command()
    @handle_errors
    def crunch() -> None:
        raise ZeroDivisionError("boom")

    level = logging.getLogger().level
    try:
        r = CliRunner().invoke(tool, ["crunch"], prog_name="simaq-factory")
        assert r.exit_code == 1
        assert r.stderr == "error: ZeroDivisionError: boom (run 'simaq-factory -vv crunch ...' for the traceback)\n"
        r = CliRunner().invoke(tool, ["-vv", "crunch"], prog_name="simaq-factory")
        assert isinstance(r.exception, ZeroDivisionError)
    finally:
        logging.getLogger().setLevel(level)
