"""simaq-train's messages and refusals found by user walkthrough 11: the fit stop line, Ctrl-C before
the first checkpoint, what differs when a resume is refused, validation that scores what evaluate
headlines, a damaged chunk, NRRD output, Zarr groups and datasets given to predict, incomplete
datasets, evaluate's existing report, and path errors before torch is imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import simaq_train.engine.fit as fit_mod
from simaq_train.cli import _fit_outcome, cli
from simaq_train.data.sources import read_annotation
from simaq_train.data.volumes import read_volume_meta
from simaq_train.testing import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_config(path: Path, dataset: Path, out: Path, **optim) -> Path:
    cfg = {
        "seed": 5,
        "data": {"train": [str(dataset)], "val": [str(dataset)], "val_max_samples": 0, "background_drop": 1.0,
                 "fov_margin": 2.0},
        "model": {"init_features": 4, "depth": 2, "out_channels": 0},
        "optim": {"lr": 0.01, "batch_size": 8, "accumulate": 1, "ema_decay": 0.9, "epochs": 1, **optim},
        "run": {"out": str(out), "device": "cpu", "threads": 1, "log_every": 1, "checkpoint_every": 2,
                "progress": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tri(tmp_path_factory) -> Path:
    """A frozen synthetic 16³ dataset of 2 samples, each acquired about z, y and x."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("tri") / "ds", n_samples=2, shape=(16, 16, 16),
                                   tilt_axes=[0, 1, 2], empty_margin=0)


@pytest.fixture(scope="module")
def trained(tri, tmp_path_factory) -> SimpleNamespace:
    """One epoch on ``tri``, validated on ``tri`` itself (every axis: data.axes is 'all')."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = write_config(tmp / "c.yaml", tri, tmp / "run")
    r = run("fit", cfg)
    assert r.exit_code == 0, r.output
    return SimpleNamespace(cfg=cfg, run=tmp / "run", ckpt=tmp / "run" / "last.pt", output=r.output)


# --- C3: the stop line -------------------------------------------------------------------------

def test_the_stop_line_says_where_why_and_then_how_to_continue():
    ck = Path("R/last.pt")
    res = SimpleNamespace(finished=False, epoch=0, step=5, start_step=0, checkpoint=ck)
    steps = SimpleNamespace(epochs=3, max_steps=5, max_minutes=0.0)
    assert _fit_outcome(res, steps) == ("stopped at epoch 0, step 5 (optim.max_steps=5 reached) -> R/last.pt; "
                                        "to continue: --set optim.max_steps=10")
    minutes = SimpleNamespace(epochs=3, max_steps=0, max_minutes=0.08)
    res = SimpleNamespace(finished=False, epoch=0, step=20, start_step=4, checkpoint=ck)
    assert _fit_outcome(res, minutes) == ("stopped at epoch 0, step 20 (optim.max_minutes=0.08 of training used; "
                                          "resumed at step 4) -> R/last.pt; to continue: run the same command "
                                          "again (another 0.08 min)")
    res = SimpleNamespace(finished=True, epoch=3, step=30, start_step=0, checkpoint=ck)
    assert _fit_outcome(res, steps) == "finished at epoch 3, step 30 (3 epoch(s) done) -> R/last.pt"
    # a finished 3-epoch run resumed under optim.epochs=1: the epochs done, not the limit
    res = SimpleNamespace(finished=True, epoch=3, step=30, start_step=30, checkpoint=ck)
    assert _fit_outcome(res, SimpleNamespace(epochs=1, max_steps=0, max_minutes=0.0)) == (
        "finished at epoch 3, step 30 (3 epoch(s) done; resumed at step 30) -> R/last.pt")


def test_fit_prints_the_stop_line(trained):
    assert trained.output.strip().splitlines()[-1].startswith("finished at epoch 1, step ")
    assert trained.output.strip().endswith(f"(1 epoch(s) done) -> {trained.ckpt}")


# --- C4: Ctrl-C before the first checkpoint ----------------------------------------------------

def test_ctrl_c_before_the_first_checkpoint_says_nothing_was_saved(tri, tmp_path, monkeypatch):
    original = fit_mod.Trainer.optimizer_step

    def interrupt_at(step: int):
        def step_or_interrupt(self, micro=None):
            if self.state.step + 1 == step:
                raise KeyboardInterrupt
            original(self, micro)

        return step_or_interrupt

    cfg = write_config(tmp_path / "c.yaml", tri, tmp_path / "run", epochs=3)
    monkeypatch.setattr(fit_mod.Trainer, "optimizer_step", interrupt_at(1))
    r = run("fit", cfg)
    assert r.exit_code == 130 and r.output.count("\n") == 1, r.output
    assert "interrupted before the first checkpoint: nothing was saved to resume from" in r.output
    assert "again to resume" not in r.output and "start over" in r.output
    assert not (tmp_path / "run" / "last.pt").exists()
    # after a checkpoint (step 2), an interrupt does resume
    monkeypatch.setattr(fit_mod.Trainer, "optimizer_step", interrupt_at(3))
    r = run("fit", cfg)
    assert r.exit_code == 130 and "run the same command again to resume" in r.output, r.output
    assert (tmp_path / "run" / "last.pt").is_file()


# --- C5: what differs when a resume is refused -------------------------------------------------

def test_a_refused_resume_says_what_differs(trained, tmp_path):
    shutil.copytree(trained.run, tmp_path / "run")
    cfg = write_config(tmp_path / "c.yaml", Path(yaml.safe_load(trained.cfg.read_text())["data"]["train"][0]),
                       tmp_path / "run", epochs=2)
    for over, needle in (
        ("seed=3", "existing run has a different seed (5 → 3); use another run.out"),
        ("model.init_features=8", "existing run has a different 'model' section (model.init_features: 4 → 8);"),
        ("data.window=5", "existing run has a different data.window (7 → 5);"),
        ("optim.batch_size=4", "existing run has a different optim.batch_size (8 → 4);"),
    ):
        r = run("fit", cfg, "--set", over)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert needle in r.output, (needle, r.output)
        assert "section" not in r.output or over.startswith("model"), r.output


def test_section_differences_are_dotted_and_capped():
    old = {"a": 1, "b": {"c": [1, 2], "d": 1}, "e": 1}
    new = {"a": 2, "b": {"c": [1, 3], "d": 2}, "f": "x" * 80}
    text = fit_mod._differences(old, new, "augment")
    assert text == "augment.a: 1 → 2, augment.b.c: [1, 2] → [1, 3], and 3 more"
    assert fit_mod._differences({"e": 1}, {"f": 2}, "loss", most=5) == "loss.e: 1 → (absent), loss.f: (absent) → 2"
    assert fit_mod._differences(None, 3, "data.crop") == "null → 3"  # a null value is not an absent one
    assert fit_mod._differences(fit_mod._ABSENT, 3, "data.crop") == "(absent) → 3"


# --- C6: validation scores what evaluate headlines ---------------------------------------------

def test_validation_reports_evaluates_headline_statistic_on_every_axis(trained, tri, tmp_path):
    val = [json.loads(x) for x in (trained.run / "metrics.jsonl").read_text().splitlines()
           if json.loads(x)["kind"] == "val"]
    assert len(val) == 1
    rec = val[0]
    assert rec["axes"] == "all" and rec["volumes"] == 2 * 3  # every acquisition axis, as evaluate scores
    r = run("evaluate", trained.ckpt, tri, "-o", tmp_path / "ev", "--batch-size", "8", "--device", "cpu")
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert rep["rows"] == rec["volumes"]
    assert rec["mean_iou_foreground"] == pytest.approx(rep["mean_iou_foreground"], abs=1e-12)
    assert rec["pooled"]["mean_iou_foreground"] == pytest.approx(rep["pooled"]["mean_iou_foreground"], abs=1e-12)
    for name, per in rep["per_class"].items():
        assert rec["iou"][name] == pytest.approx(per["all"]["mean"], abs=1e-12)
    # the log line names the statistic, and the pooled one beside it
    line = next(x for x in trained.output.splitlines() if x.startswith("validation after epoch 1"))
    assert f"mean foreground IoU {rec['mean_iou_foreground']:.4f} (mean over volumes" in line
    assert f"pooled {rec['pooled']['mean_iou_foreground']:.4f}" in line


# --- C7: a damaged chunk -----------------------------------------------------------------------

def test_a_damaged_chunk_names_dataset_array_and_sample(trained, tri, tmp_path):
    ds = tmp_path / "damaged"
    shutil.copytree(tri, ds)
    chunk = ds / "dataset.zarr" / "labels" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    for k in range(len(data) // 4, len(data) - 4):
        data[k] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = run("evaluate", trained.ckpt, ds, "-o", tmp_path / "ev", "--device", "cpu")
    assert r.exit_code == 1, r.output
    err = r.output.strip().splitlines()[-1]
    assert err.startswith("error: ") and "UnreadableData" not in err and "Traceback" not in r.output
    assert "-vv" not in err
    assert f"{ds / 'dataset.zarr' / 'labels'}, sample 1: cannot be read" in err
    assert f"run `simaq-factory verify {ds}`" in err
    assert not (tmp_path / "ev").exists()


def test_a_damaged_chunk_read_by_a_loader_worker_is_one_line(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=2, shape=(16, 16, 16))
    chunk = ds / "dataset.zarr" / "recon" / "c" / "1" / "0" / "0" / "0"  # labels (read first) are fine
    data = bytearray(chunk.read_bytes())
    for k in range(len(data) // 4, len(data) - 4):
        data[k] ^= 0xFF
    chunk.write_bytes(bytes(data))
    cfg = write_config(tmp_path / "c.yaml", ds, tmp_path / "run")
    r = run("fit", cfg, "--set", "data.num_workers=1", "--set", "data.val=[]")
    assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: {ds / 'dataset.zarr' / 'recon'}, sample 1: cannot be read")
    assert f"run `simaq-factory verify {ds}`" in r.output


# --- C8: NRRD output ---------------------------------------------------------------------------

def test_predict_writes_nrrd_in_c_order_with_the_voxel_size(trained, tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    nrrd = pytest.importorskip("nrrd")
    vol = np.random.default_rng(1).normal(size=(16, 12, 20)).astype(np.float32)
    with mrcfile.new(tmp_path / "t.mrc") as f:
        f.set_data(vol)
        f.voxel_size = (3.0, 2.0, 1.5)  # x, y, z
    for out in ("seg.npy", "seg.nrrd", "seg.seg.nrrd"):
        r = run("predict", trained.ckpt, tmp_path / "t.mrc", "-o", tmp_path / out, "--raw", "--device", "cpu")
        assert r.exit_code == 0, r.output
    want = np.load(tmp_path / "seg.npy")
    got = read_volume_meta(tmp_path / "seg.nrrd")
    assert got.data.shape == (16, 12, 20) and got.data.dtype == np.uint8
    assert np.array_equal(got.data, want)
    assert got.voxel_size == (1.5, 2.0, 3.0)  # (z, y, x)
    arr, header = nrrd.read(str(tmp_path / "seg.nrrd"), index_order="C")  # as documented for pynrrd users
    assert np.array_equal(arr, want)
    # a .seg.nrrd is a 3D Slicer segmentation: value c + 1 is the segment named after class c, and
    # the annotation reader (data.real) maps it back to the same class ids, by name
    names = torch.load(trained.ckpt, map_location="cpu", weights_only=False)["class_names"]
    arr, header = nrrd.read(str(tmp_path / "seg.seg.nrrd"), index_order="C")
    assert np.array_equal(arr, want + 1)
    assert [(header[f"Segment{c}_Name"], header[f"Segment{c}_LabelValue"]) for c in range(len(names))] == [
        (n, str(c + 1)) for c, n in enumerate(names)]
    assert np.array_equal(read_annotation(tmp_path / "seg.seg.nrrd", want.shape, names), want)
    r = run("predict", trained.ckpt, tmp_path / "t.mrc", "-o", tmp_path / "seg.nrrd", "--device", "cpu")
    assert r.exit_code == 2 and "seg.nrrd: exists; use --overwrite" in r.output


# --- C15: groups and datasets given to predict -------------------------------------------------

def test_predict_on_a_zarr_group_or_a_dataset_says_what_to_give(trained, tri, tmp_path):
    for path, needle in (
        (tri / "dataset.zarr", "dataset.zarr: is a Zarr group (a simaq-factory dataset's store?), not an array"),
        (tri, f"{tri}: is a simaq-factory dataset, not a volume"),
    ):
        r = run("predict", trained.ckpt, path, "-o", tmp_path / "o.npy")
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert needle in r.output and "simaq-train evaluate" in r.output, r.output
        assert "NodeTypeValidationError" not in r.output
    assert not list(tmp_path.iterdir())


# --- C16: incomplete datasets ------------------------------------------------------------------

def test_a_complete_card_over_a_missing_provenance_record_is_refused(trained, tmp_path):
    import zarr

    ds = write_synthetic_dataset(tmp_path / "inc", n_samples=4, shape=(16, 16, 16), tilt_axes=[0, 1, 2],
                                 frozen=False, samples_per_shard=2)
    zarr.open_group(ds / "dataset.zarr", mode="r+").attrs.update({"samples_per_shard": 2})
    ok = run("evaluate", trained.ckpt, ds, "-o", tmp_path / "ok", "--max-samples", "1", "--device", "cpu")
    assert ok.exit_code == 0, ok.output
    (ds / "provenance" / "shard-000001.json").unlink()
    for args in (("evaluate", trained.ckpt, ds, "-o", tmp_path / "ev"),
                 ("baseline", ds, "-o", tmp_path / "bl")):
        r = run(*args)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert (f"{ds}: dataset card says 'complete' but 1 shard(s) have no provenance record "
                "(first: provenance/shard-000001.json, samples 2-3)") in r.output, r.output
    assert not (tmp_path / "ev").exists() and not (tmp_path / "bl").exists()


# --- C12: evaluate's existing report -----------------------------------------------------------

def test_evaluate_keeps_an_existing_report_unless_overwrite(trained, tri, tmp_path):
    out = tmp_path / "ev"
    out.mkdir()  # an empty folder is fine
    args = ("evaluate", trained.ckpt, tri, "-o", out, "--max-samples", "1", "--device", "cpu")
    assert run(*args).exit_code == 0
    report = out / "evaluation.json"
    report.write_text("{}")
    r = run(*args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"{out}: exists and is not empty" in r.output and "--overwrite" in r.output
    assert report.read_text() == "{}"
    r = run(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["samples"] == 1
    # the Otsu baseline's report likewise
    bl = ("baseline", tri, "-o", tmp_path / "bl", "--max-samples", "1", "--physical-order")
    assert run(*bl).exit_code == 0
    r = run(*bl)
    assert r.exit_code == 2 and f"{tmp_path / 'bl'}: exists and is not empty" in r.output, r.output
    assert run(*bl, "--overwrite").exit_code == 0


# --- C13: paths before torch -------------------------------------------------------------------

def test_bad_paths_are_refused_before_torch_is_imported(trained, tri, tmp_path):
    script = """
import sys
from click.testing import CliRunner
from simaq_train.cli import cli
r = CliRunner().invoke(cli, sys.argv[1:])
print(r.exit_code, "torch" in sys.modules, r.output.strip())
"""
    cases = (
        (("predict", trained.ckpt, tmp_path / "nothere.tif", "-o", tmp_path / "o.tif"), "nothere.tif: file not found"),
        (("predict", tmp_path / "none.pt", tmp_path / "nothere.tif", "-o", tmp_path / "o.tif"),
         "none.pt: checkpoint not found"),
        (("evaluate", trained.ckpt, tmp_path / "nothere", "-o", tmp_path / "ev"),
         "nothere: not a simaq-factory dataset (no dataset.zarr)"),
        (("evaluate", tmp_path / "none.pt", tri, "-o", tmp_path / "ev"), "none.pt: checkpoint not found"),
    )
    for args, needle in cases:
        p = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
        code, torch_loaded, out = p.stdout.split(" ", 2)
        assert code == "2" and torch_loaded == "False", p.stdout + p.stderr
        assert needle in out, out
    assert not list(tmp_path.iterdir())


# --- walk 12 C6: MRC placement and axis mapping ------------------------------------------------

def test_predict_keeps_the_mrc_placement_and_honours_its_axis_mapping(trained, tmp_path):
    """The segmentation of an MRC overlays it: same origin and first-voxel indices (a trimmed IMOD
    sub-volume); a file whose MAPC/MAPR/MAPS permute the axes is read in (z, y, x) all the same."""
    mrcfile = pytest.importorskip("mrcfile")
    vol = np.random.default_rng(2).normal(size=(16, 12, 20)).astype(np.float32)  # (z, y, x)
    with mrcfile.new(tmp_path / "std.mrc") as f:
        f.set_data(vol)
        f.voxel_size = (3.0, 2.0, 1.5)
        f.header.origin = (100.0, 200.0, 300.0)
        f.header.nxstart, f.header.nystart, f.header.nzstart = -10, -6, -8
    with mrcfile.new(tmp_path / "perm.mrc") as f:  # sections x, rows y, columns z
        f.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))
        f.header.mapc, f.header.mapr, f.header.maps = 3, 2, 1
    assert np.array_equal(read_volume_meta(tmp_path / "perm.mrc").data, vol)
    for name in ("std", "perm"):
        r = run("predict", trained.ckpt, tmp_path / f"{name}.mrc", "-o", tmp_path / f"{name}-seg.mrc", "--device", "cpu")
        assert r.exit_code == 0, r.output
    with mrcfile.open(tmp_path / "std-seg.mrc") as f, mrcfile.open(tmp_path / "perm-seg.mrc") as g:
        assert np.array_equal(f.data, g.data) and f.data.shape == vol.shape
        h = f.header
        assert (float(h.origin.x), float(h.origin.y), float(h.origin.z)) == (100.0, 200.0, 300.0)
        assert (int(h.nxstart), int(h.nystart), int(h.nzstart)) == (-10, -6, -8)
        assert tuple(float(v) for v in f.voxel_size.tolist()) == (3.0, 2.0, 1.5)


# --- predict shows its progress ------------------------------------------------------------------

def test_predict_reports_its_progress_slice_by_slice(trained, tmp_path):
    """A 1024² tomogram takes minutes on a CPU: predict tells its progress (each batch of slices,
    then post-processing and writing) and draws it on stderr, never on stdout."""
    from simaq_train.inference import predict_tomogram

    vol = np.random.default_rng(2).normal(size=(11, 24, 24)).astype(np.float32)
    np.save(tmp_path / "t.npy", vol)
    told = []
    predict_tomogram(trained.ckpt, tmp_path / "t.npy", tmp_path / "a.npy", batch_size=4, device="cpu",
                     progress=lambda text, fraction: told.append((text, fraction)))
    assert told == [("slice 4/11", 4 / 11), ("slice 8/11", 8 / 11), ("slice 11/11", 1.0),
                    ("post-processing", None), ("writing", None)]
    r = run("predict", trained.ckpt, tmp_path / "t.npy", "-o", tmp_path / "b.npy", "--raw", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("wrote ") and r.stdout.count("\n") == 1
    assert "t.npy: slice 8/11" in r.stderr  # the first batch (of 8) is shown at once
