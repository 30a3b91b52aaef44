"""Dataset integrity across commands: logs never change a frozen dataset, a resumed build is
"building" until it ends, and an interrupted freeze can be completed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

import simaq_factory.orchestrate.driver as driver
from simaq_factory.cli.main import main
from simaq_factory.errors import BadInput

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
TINY = ["--set", "dataset.shape=[32,32,32]", "--set", "dataset.chunk_z=4", "--set", "phantom.scale=0.15",
        "--set", "dataset.n_samples=2", "--set", "dataset.samples_per_shard=1",
        "--set", "dataset.outputs.sinogram=false", "--set", "dataset.outputs.noisy=false", *small_banks.ARGS]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, [str(a) for a in args])


def build(out: Path, *extra: str) -> None:
    r = invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY, *extra)
    assert r.exit_code == 0, r.output


def status(out: Path) -> str:
    return str(zarr.open_group(out / "dataset.zarr", mode="r").attrs["status"])


def test_a_frozen_dataset_stays_verified_while_the_same_process_builds_another(tmp_path):
    build(tmp_path / "a")
    assert invoke("freeze", tmp_path / "a").exit_code == 0
    # the worker's log handler must not follow into b
    build(tmp_path / "b", "--set", "seed=3", "--set", "phantom.nucleus.enabled=true")
    r = invoke("verify", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert not any(line.startswith("logs/") for line in (tmp_path / "a" / "SHA256SUMS").read_text().splitlines())
    assert (tmp_path / "a" / "SHA256SUMS").read_text().count("\n") > 5
    # the label map names the nucleus only where it is enabled (design §5)
    maps = [dict(zarr.open_group(tmp_path / d / "dataset.zarr", mode="r").attrs["label_map"]) for d in "ab"]
    assert sorted(maps[0]) == ["0", "1", "2", "3"] and maps[1]["4"] == "nucleus"


def test_a_resumed_build_is_building_until_it_finishes(tmp_path, monkeypatch):
    from simaq_train.data.sources import open_dataset

    out = tmp_path / "ds"
    build(out)
    assert status(out) == "complete"
    next(iter((out / "provenance").glob("*.json"))).unlink()  # one shard is pending again

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003 - the process dies in the middle of a shard
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_shard", killed)
    r = invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY)
    assert r.exit_code != 0
    assert status(out) == "building"  # not the "complete" of the first build
    with pytest.raises(BadInput, match="building"):
        open_dataset(out)
    monkeypatch.undo()
    build(out)
    assert status(out) == "complete"


def test_an_inline_shard_failure_leaves_its_traceback_in_the_driver_log(tmp_path, monkeypatch):
    """A failed shard of an inline build: one line on the console, its traceback in OUT/logs (the
    summary line was all there was to debug with)."""
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise TypeError("'float' object cannot be interpreted as an integer")

    monkeypatch.setattr(driver, "run_shard", broken)
    out = tmp_path / "ds"
    r = invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    log_text = "".join(p.read_text() for p in (out / "logs").glob("driver*.log"))
    assert "shard 0 failed: TypeError" in log_text and "Traceback" in log_text and "in broken" in log_text


def test_an_interrupted_freeze_is_completed_by_freezing_again(tmp_path):
    out = tmp_path / "ds"
    build(out)
    assert invoke("freeze", out).exit_code == 0
    (out / "SHA256SUMS").unlink()  # killed after the card said frozen, before SHA256SUMS (written last)
    assert status(out) == "frozen"
    r = invoke("freeze", out)
    assert r.exit_code == 0, r.output
    assert (out / "SHA256SUMS").is_file() and status(out) == "frozen"
    assert invoke("verify", out).exit_code == 0
    r = invoke("freeze", out)
    assert r.exit_code == 0 and "already frozen" in r.output
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["index"] == 0


def test_a_freeze_killed_while_writing_sha256sums_leaves_none_and_is_completed(tmp_path, monkeypatch):
    import simaq_factory.store.verify as verify  # freeze's SHA256SUMS hashes through verify.file_digests

    out = tmp_path / "ds"
    build(out)
    calls = []
    real = verify.sha256_files

    def dies_midway(paths, progress=None):  # noqa: ANN001, ANN202 - Ctrl-C on the fifth file SHA256SUMS hashes
        digests = []
        for p in paths:
            calls.append(p)
            if len(calls) == 5:
                raise KeyboardInterrupt
            digests += real([p])
        return digests

    monkeypatch.setattr(verify, "sha256_files", dies_midway)
    r = invoke("freeze", out)
    assert r.exit_code == 130 and len(calls) == 5
    assert not (out / "SHA256SUMS").exists() and status(out) == "frozen"  # no partial seal is trusted
    assert invoke("verify", out).exit_code == 1
    monkeypatch.undo()
    r = invoke("freeze", out)  # "run the same command again": it completes
    assert r.exit_code == 0, r.output
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert ".SHA256SUMS.partial" not in listed and not (out / ".SHA256SUMS.partial").exists()
    assert invoke("verify", out).exit_code == 0


def test_verify_names_files_a_frozen_dataset_does_not_list(tmp_path):
    out = tmp_path / "ds"
    build(out)
    assert invoke("freeze", out).exit_code == 0
    sums = out / "SHA256SUMS"
    lines = sums.read_text().splitlines()
    sums.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # cut short, as an older freeze could
    r = invoke("verify", out)
    assert r.exit_code == 1 and "not listed in SHA256SUMS" in r.output, r.output
    assert lines[len(lines) // 2].split("  ", 1)[1] in r.output
    sums.write_text("\n".join(lines) + "\n")
    (out / "notes.txt").write_text("added after freeze")
    r = invoke("verify", out)
    assert r.exit_code == 1 and "notes.txt: not listed" in r.output


def test_out_recipe_yaml_records_the_command_line_overrides(tmp_path):
    out = tmp_path / "ds"
    build(out)
    text = (out / "recipe.yaml").read_text()
    assert text.startswith(Path(SMOKE).read_text().rstrip("\n"))  # the file itself, verbatim
    assert "#   --set dataset.shape=[32,32,32]" in text and "#   --set phantom.scale=0.15" in text


def test_provenance_names_the_source_commit_of_a_checkout():
    import shutil
    import subprocess

    from simaq_factory.versions import software_versions

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("git cannot read this checkout")
    assert software_versions()["simaq-factory-commit"] == head.stdout.strip()
    # uncommitted changes to tracked files are recorded: the commit alone is not what built it
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    assert software_versions()["simaq-factory-modified"] is bool(dirty.stdout.strip())


def test_recon_bytes_do_not_depend_on_the_workers_thread_count(tmp_path):
    for t in (1, 2):
        build(tmp_path / f"t{t}", "--set", f"execution.threads_per_worker={t}")
    g1, g2 = (zarr.open_group(tmp_path / f"t{t}" / "dataset.zarr", mode="r") for t in (1, 2))
    for name in ("phantom", "labels", "recon"):
        assert g1[name][...].tobytes() == g2[name][...].tobytes(), name
    threads = {json.loads(p.read_text())["torch_threads"] for t in (1, 2)
               for p in (tmp_path / f"t{t}" / "provenance").glob("*.json")}
    assert threads == {1, 2}


def test_a_finished_build_run_again_starts_no_cluster(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    build(out)

    def no_cluster(**kwargs):  # noqa: ANN003, ANN202
        raise AssertionError("a cluster was started for a build with nothing to do")

    monkeypatch.setattr(driver, "open_cluster", no_cluster)
    r = invoke("build", SMOKE, "-o", out, *TINY)  # --cluster local (the default)
    assert r.exit_code == 0, r.output
    assert "wrote 0 shard(s), skipped 2 already done" in r.output and status(out) == "complete"
    next(iter((out / "provenance").glob("*.json"))).unlink()  # now there is work: the cluster is asked for
    r = invoke("build", SMOKE, "-o", out, *TINY)
    assert r.exit_code != 0 and "a cluster was started" in r.output


def test_build_over_an_interrupted_freeze_is_refused_and_freeze_completes_it(tmp_path):
    """Card frozen, SHA256SUMS (written last) missing: only freeze may finish it; a build is refused
    (exit 2, saying it is frozen) and leaves the card as freeze wrote it; freeze then completes it."""
    out, one = tmp_path / "ds", ("--set", "dataset.n_samples=1")
    build(out, *one)
    assert invoke("freeze", out).exit_code == 0
    (out / "SHA256SUMS").unlink()  # killed after the card said frozen, before SHA256SUMS
    card_before = (out / "dataset.zarr" / "zarr.json").read_text()
    r = invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY, *one)
    assert r.exit_code == 2, r.output
    assert "an interrupted freeze; run `simaq-factory freeze" in r.output, r.output
    assert status(out) == "frozen" and (out / "dataset.zarr" / "zarr.json").read_text() == card_before
    assert not (out / "SHA256SUMS").exists()
    assert "verdict: incomplete: freeze interrupted (no SHA256SUMS); run freeze again" in invoke("status", out).output
    r = invoke("freeze", out)
    assert r.exit_code == 0, r.output
    assert (out / "SHA256SUMS").is_file() and status(out) == "frozen"
    assert invoke("verify", out).exit_code == 0


def test_a_damaged_frozen_dataset_is_not_called_complete(tmp_path):
    """Re-running build or freeze on a frozen dataset checks the shard files first: one flipped byte
    makes both fail (exit 1) naming the shard, instead of "complete and frozen; nothing to do"."""
    out = tmp_path / "ds"
    build(out)
    assert invoke("freeze", out).exit_code == 0
    victim = next(p for p in sorted((out / "dataset.zarr" / "labels").rglob("*"))
                  if p.is_file() and p.name != "zarr.json")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    for args in (("build", SMOKE, "-o", out, "--cluster", "inline", *TINY), ("freeze", out)):
        r = invoke(*args)
        assert r.exit_code == 1, (args[0], r.output)
        assert "is frozen but damaged" in r.stderr and "labels shard file does not match its checksum" in r.stderr
        assert "nothing to do" not in r.output
    assert status(out) == "frozen"
    r = invoke("verify", out)  # one sample per shard here: named as such
    assert r.exit_code == 1 and "shard 0 (sample 0): labels shard file does not match its checksum" in r.output
    st = invoke("status", out)
    assert "sealed files: not hashed here; `simaq-factory verify` checks every file SHA256SUMS lists" in st.output


def test_a_frozen_dataset_with_an_edited_sealed_file_is_not_called_complete(tmp_path):
    """The small files SHA256SUMS lists (manifest.jsonl, which checkpoints pin, the card, the
    records) are checked too before build or freeze says there is nothing to do."""
    out = tmp_path / "ds"
    build(out)
    assert invoke("freeze", out).exit_code == 0
    assert invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY).exit_code == 0
    (out / "manifest.jsonl").write_text("{}\n")
    for args in (("build", SMOKE, "-o", out, "--cluster", "inline", *TINY), ("freeze", out)):
        r = invoke(*args)
        assert r.exit_code == 1, (args[0], r.output)
        assert "is frozen but damaged: 1 sealed file(s) (manifest.jsonl: sha256 differs from SHA256SUMS" in r.stderr


def test_a_build_stopped_before_its_noise_banks_is_incomplete_not_damaged(tmp_path, monkeypatch):
    """Ctrl-C while the banks are made: nothing is damaged, the banks are simply not there yet."""
    out = tmp_path / "ds"

    def stopped(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "_prepare_banks", stopped)
    assert invoke("build", SMOKE, "-o", out, "--cluster", "inline", *TINY).exit_code == 130
    monkeypatch.undo()
    st = invoke("status", out)
    assert "verdict: incomplete: 2 shard(s), noise banks pending" in st.output, st.output
    assert "noise banks: pending" in st.output and "damaged:" not in st.output
    build(out)
    assert "verdict: complete" in invoke("status", out).output
