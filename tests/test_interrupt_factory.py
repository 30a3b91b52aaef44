"""Interrupts (Ctrl-C as a ``KeyboardInterrupt`` raised at a chosen step, or the state a SIGKILL
leaves on disk) of ``score --overwrite``, ``export`` and ``baseline``: what is left is either the
finished result or something the next run completes or clears, never a mix that reads as whole."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import zarr

import simaq_factory.score.baseline as baseline_mod
import simaq_factory.score.run as run_mod
import simaq_factory.store.export as export_mod
from simaq_factory.score.baseline import run_baseline
from simaq_factory.score.run import ScoreResult, check_report_dir, write_outputs
from simaq_factory.store.export import export_dataset

from test_score_cli import SMOKE, TINY, invoke


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("interrupt")
    r = invoke("build", SMOKE, "-o", str(root / "ds"), "--cluster", "inline", *TINY)
    assert r.exit_code == 0, r.output
    return root / "ds"


# --- score --overwrite ------------------------------------------------------------------------

def _result(name: str) -> ScoreResult:
    return ScoreResult(payload={"predictions": {name: {}}}, rows=[{"pred": name, "index": 0}], examples={})


def test_an_interrupted_overwrite_leaves_no_earlier_scores_json_beside_new_files(tmp_path, monkeypatch):
    """The earlier report's scores.json (written last: "this folder is whole") stayed while the new
    figures were written, so Ctrl-C or a kill there left the old scores beside the new figures, CSV
    and HTML, which the next run refused as a finished report."""
    import simaq_factory.score.report as report_mod

    out = tmp_path / "rep"
    out.mkdir()
    for name in ("scores.json", "samples.csv", "report.html", "fig-example.png"):
        (out / name).write_text("A")  # an earlier report, of prediction A
    monkeypatch.setattr(report_mod, "render_report", lambda result: ("page B", {"fig-example.png": b"B"}))
    real = run_mod._write_atomic
    order: list[str] = []

    def write(path: Path, text: str) -> None:
        order.append(path.name)
        if path.name == "samples.csv" and len(order) == 1:
            raise KeyboardInterrupt  # after the figures, before the CSV
        real(path, text)

    monkeypatch.setattr(run_mod, "_write_atomic", write)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(_result("B"), out)
    assert (out / "fig-example.png").read_bytes() == b"B"
    assert not (out / "scores.json").exists()  # reads as an interrupted report, not a finished one
    check_report_dir(out, overwrite=False)  # the same command (without --overwrite) completes it
    write_outputs(_result("B"), out)
    assert order[-1] == "scores.json"  # written last, renamed whole
    assert json.loads((out / "scores.json").read_text())["predictions"] == {"B": {}}
    assert (out / "samples.csv").read_text().startswith("pred,index") and not list(out.glob(".*"))


# --- export -------------------------------------------------------------------------------------

def test_an_interrupted_export_leaves_no_partial_file(ds, tmp_path, monkeypatch):
    """Ctrl-C after a file was written whole, in the journal append before its rename, left the
    whole ``.NAME.partial`` (the cleanup covered the write only)."""
    real = export_mod._journal
    calls = []

    def journal(dest: Path, name: str, holds):  # type: ignore[no-untyped-def]
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(dest, name, holds)

    monkeypatch.setattr(export_mod, "_journal", journal)
    dest = tmp_path / "ex"
    with pytest.raises(KeyboardInterrupt):
        export_dataset(ds, dest, fmt="tiff", arrays=["recon"])
    assert sorted(p.name for p in dest.iterdir()) == [".simaq-export.jsonl", "sample_000000_recon.tif"]
    monkeypatch.undo()
    skipped: list[Path] = []
    written = export_dataset(ds, dest, fmt="tiff", arrays=["recon"], skipped=skipped)
    assert [p.name for p in skipped] == ["sample_000000_recon.tif"] and len(written) == 2


def test_an_export_clears_what_a_killed_export_with_other_options_left(ds, tmp_path):
    """A SIGKILL leaves the whole temporary file of the output being written; only a re-run of the
    same export removed it, one with other --index / --arrays / --format left it for good."""
    dest = tmp_path / "ex"
    dest.mkdir()
    left = [".sample_000002_recon.tif.partial", ".sample_000001_phantom.mrc.partial",
            ".sample_000001_recon_axis2.tif.partial"]
    for name in left:
        (dest / name).write_bytes(b"x" * 1000)
    (dest / ".sample_000001_recon.ome.zarr.partial" / "0").mkdir(parents=True)
    (dest / "notes.partial").write_text("not ours")  # other names are left alone
    export_dataset(ds, dest, fmt="tiff", indices=[0], arrays=["labels"])
    assert sorted(p.name for p in dest.iterdir()) == [".simaq-export.jsonl", "notes.partial",
                                                      "sample_000000_labels.tif"]


# --- baseline ------------------------------------------------------------------------------------

def test_a_baseline_killed_before_its_final_rename_is_finished_not_recomputed(ds, tmp_path, monkeypatch, caplog):
    """The last step removed progress.json, then renamed ``.PRED.partial`` to PRED: a kill between
    the two left a complete output without progress.json, which the next run discarded with the
    warning "another configuration" (it was the same) and reconstructed every sample again."""
    pred = tmp_path / "b.zarr"
    real = os.replace

    def replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == pred:
            raise KeyboardInterrupt  # progress.json is gone, the rename not done
        real(src, dst)

    monkeypatch.setattr(baseline_mod.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        run_baseline(ds, pred, "fbp-ramlak")
    monkeypatch.undo()
    tmp = tmp_path / ".b.zarr.partial"
    assert not pred.exists() and not (tmp / "progress.json").exists()
    assert zarr.open_group(tmp, mode="r").attrs["status"] == "complete"
    with caplog.at_level(logging.WARNING, logger="simaq_factory.score.baseline"):
        report = run_baseline(ds, pred, "fbp-ramlak")
    assert (report["built"], report["skipped"]) == (0, 3)
    assert not caplog.records, caplog.text
    assert not tmp.exists() and zarr.open_group(pred, mode="r").attrs["status"] == "complete"
    # another configuration's complete output is still no result of this one: started over
    pred2 = tmp_path / "h.zarr"
    os.rename(pred, tmp_path / ".h.zarr.partial")
    with caplog.at_level(logging.WARNING, logger="simaq_factory.score.baseline"):
        report = run_baseline(ds, pred2, "fbp-hamming")
    assert report["built"] == 3 and "another configuration" in caplog.text
