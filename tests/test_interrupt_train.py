"""Interrupts of ``simaq-train evaluate`` / ``baseline`` (the files a SIGKILL leaves in the report
folder) and of ``predict --overwrite`` onto an existing ``.zarr`` (Ctrl-C as a ``KeyboardInterrupt``
raised at the final rename): the next run goes ahead, and an earlier result is never lost."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from simaq_factory.errors import BadInput
from simaq_train.cli import _report_dir, cli
from simaq_train.data.volumes import write_volume


@pytest.fixture()
def fake_ds(tmp_path) -> Path:
    (tmp_path / "ds" / "dataset.zarr").mkdir(parents=True)
    return tmp_path / "ds"


def _run(stem: str, ds: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    """``evaluate`` (of a checkpoint that is not there) or ``baseline`` (of a dataset that cannot be
    opened): each fails right after the report folder is checked, naming what it fails on."""
    args = (["evaluate", str(out.parent / "none.pt"), str(ds)] if stem == "evaluation" else ["baseline", str(ds)])
    return CliRunner().invoke(cli, [*args, "-o", str(out), *extra])


@pytest.mark.parametrize("stem", ["evaluation", "baseline"])
def test_what_a_killed_report_left_does_not_block_the_rerun(fake_ds, tmp_path, stem):
    """A SIGKILL between writing the temporary JSON and renaming it left ``.STEM.tmp-PID.json`` (and
    maybe the plot): the re-run was refused as "not empty (an earlier report?)"."""
    out = tmp_path / "rep"
    out.mkdir()
    for name in (f".{stem}.tmp-9930.json", f".{stem}_iou.tmp-9930.png"):
        (out / name).write_text("half")
    (out / f"{stem}_iou.png").write_bytes(b"plot without its report")
    r = _run(stem, fake_ds, out)
    assert r.exit_code == 2 and str(out) not in r.output, r.output  # the folder passed; the next check failed
    assert sorted(os.listdir(out)) == [f"{stem}_iou.png"]  # the temporary files swept; the plot is replaced
    # a finished report, or files of something else, still need --overwrite
    (out / f"{stem}.json").write_text("{}")
    r = _run(stem, fake_ds, out)
    assert r.exit_code == 2 and f"{out}: exists and is not empty (it holds an earlier report, {stem}.json); " \
        "use --overwrite" in r.output, r.output
    (out / f"{stem}.json").unlink()
    (out / "notes.txt").write_text("keep")
    r = _run(stem, fake_ds, out)
    assert r.exit_code == 2 and f"{out}: exists and is not empty (it holds notes.txt" in r.output, r.output
    assert "earlier report" not in r.output
    other = "baseline" if stem == "evaluation" else "evaluation"
    (out / "notes.txt").unlink()
    (out / f".{other}.tmp-1.json").write_text("half")  # another command's: not this one's leftover
    with pytest.raises(BadInput, match="--overwrite"):
        _report_dir(out, str(fake_ds), False, stem)
    assert (out / f".{other}.tmp-1.json").exists()


def test_an_interrupted_zarr_overwrite_keeps_the_earlier_result(tmp_path, monkeypatch):
    """The earlier Zarr was removed before the new one was renamed in: Ctrl-C between the two left
    no output at all."""
    out = tmp_path / "seg.zarr"
    first = np.ones((4, 8, 8), np.uint8)
    write_volume(out, first)
    real = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(src).name.startswith(".seg.zarr.tmp-") and Path(dst) == out:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_volume(out, np.full((4, 8, 8), 2, np.uint8), overwrite=True)
    monkeypatch.undo()
    assert np.array_equal(zarr.open_array(out, mode="r")[...], first)
    assert os.listdir(tmp_path) == ["seg.zarr"]  # neither the new temporary nor the old one aside
    # a kill after the earlier one was renamed aside leaves it hidden; the next write removes it
    os.rename(out, tmp_path / ".seg.zarr.old-4242")
    write_volume(out, np.full((4, 8, 8), 3, np.uint8))
    write_volume(out, np.full((4, 8, 8), 2, np.uint8), overwrite=True)
    assert int(zarr.open_array(out, mode="r")[0, 0, 0]) == 2
    assert os.listdir(tmp_path) == ["seg.zarr"]
