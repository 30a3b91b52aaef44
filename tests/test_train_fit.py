"""simaq-train end to end on tiny data: fit, exact resume, checkpoint content, evaluate, predict,
and one-line errors for bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import simaq_train.engine.fit as fit_mod
from simaq_factory.cli.main import main as factory
from simaq_train.cli import cli
from simaq_train.data.volumes import read_volume

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A frozen 32³ simaq-factory dataset of 4 samples; an unfrozen copy lies next to it
    (``ds-unfrozen``)."""
    out = tmp_path_factory.mktemp("fitdata") / "ds"
    r = CliRunner().invoke(factory, ["build", SMOKE, "-o", str(out), "--cluster", "inline",
                                     "--set", "dataset.shape=[32,32,32]", "--set", "phantom.scale=0.15",
                                     "--set", "dataset.outputs.sinogram=false", "--set", "dataset.outputs.noisy=false",
                                     *small_banks.ARGS])
    assert r.exit_code == 0, r.output
    shutil.copytree(out, out.with_name("ds-unfrozen"))
    assert CliRunner().invoke(factory, ["freeze", str(out)]).exit_code == 0
    return out


@pytest.fixture(scope="module")
def nucleus_ds(tmp_path_factory) -> Path:
    """A synthetic (16, 32, 32) dataset of 2 samples with a fifth class: one cell (1) of radius 7
    holding a nucleus (4) of radius 3."""
    import zarr

    from simaq_train.testing import write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path_factory.mktemp("nuc") / "ds5", n_samples=2, shape=(16, 32, 32))
    zz, yy, xx = np.ogrid[:16, :32, :32]
    r2 = (zz - 8) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2
    labels = np.where(r2 <= 9, 4, np.where(r2 <= 49, 1, 0)).astype(np.uint8)
    g = zarr.open_group(root / "dataset.zarr", mode="r+")
    g["labels"][:] = np.stack([labels, labels])
    g.attrs["label_map"] = {**g.attrs["label_map"], "4": "nucleus"}
    return root


def write_config(path: Path, dataset: Path, out: Path, **optim) -> Path:
    cfg = {
        "seed": 5,
        "data": {"train": [str(dataset)], "val": [str(dataset)], "val_max_samples": 1, "background_drop": 1.0,
                 "fov_margin": 2.0},
        "augment": {"flip": 0.5, "intensity": 0.5},
        "model": {"init_features": 4, "depth": 2, "out_channels": 0},
        "optim": {"lr": 0.01, "batch_size": 8, "accumulate": 2, "ema_decay": 0.9, "epochs": 3, **optim},
        "run": {"out": str(out), "device": "cpu", "log_every": 1, "checkpoint_every": 2, "progress": False},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def states(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["reader"] == b["reader"]
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(oa[k][name]), torch.as_tensor(ob[k][name]))


def fit_keeping_checkpoint(cfg: Path, step: int, keep: Path):
    """``fit cfg``, keeping a copy of its checkpoint of ``step`` at ``keep`` (as a run killed right
    after writing it would leave it); returns the CLI result."""
    original = fit_mod.save_checkpoint

    def spy(path, payload):
        original(path, payload)
        if payload["step"] == step and not keep.exists():
            shutil.copy(path, keep)

    fit_mod.save_checkpoint = spy
    try:
        return run("fit", cfg)
    finally:
        fit_mod.save_checkpoint = original


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """An uninterrupted run of 6 optimiser steps (crosses an epoch boundary); a copy of its step-4
    checkpoint is kept as if the run had been killed right after writing it."""
    tmp = tmp_path_factory.mktemp("runA")
    cfg = write_config(tmp / "a.yaml", dataset, tmp / "run", max_steps=6)
    r = fit_keeping_checkpoint(cfg, 4, tmp / "step4.pt")
    assert r.exit_code == 0, r.output
    # where it stopped first, then why, the checkpoint, and how to go on
    last = r.output.strip().splitlines()[-1]
    assert last == (f"stopped at epoch 1, step 6 (optim.max_steps=6 reached) -> {tmp / 'run' / 'last.pt'}; "
                    "to continue: --set optim.max_steps=12"), r.output
    again = run("fit", cfg)  # nothing left under the same limit: it says so, and where it resumed
    assert again.exit_code == 0
    assert "(optim.max_steps=6 reached; resumed at step 6) -> " in again.output
    assert again.output.rstrip().endswith("; to continue: --set optim.max_steps=12")
    return tmp


def test_fit_writes_checkpoint_metrics_and_plot(trained, dataset):
    run_dir = trained / "run"
    ck = states(run_dir / "last.pt")
    for key in ("model", "ema", "optimizer", "scaler", "reader", "step", "config", "datasets", "class_names"):
        assert key in ck, key
    assert ck["step"] == 6 and ck["reader"]["epoch"] >= 1  # crossed an epoch boundary
    manifest = hashlib.sha256((dataset / "manifest.jsonl").read_bytes()).hexdigest()
    assert ck["datasets"] == {str(dataset): manifest}
    assert ck["config"]["model"]["out_channels"] == 4  # from the card; nucleus disabled in the recipe
    assert ck["class_names"] == ["background", "cell", "vacuole", "lipid_droplet"]
    # trained on the CPU (amp "auto" resolves to full precision there): inference on any device
    # runs the weights in the precision they were trained in
    assert ck["config"]["optim"]["amp"] == "auto" and ck["trained_amp"] == "off"
    from simaq_train.inference import load_model

    assert load_model(run_dir / "last.pt")[1].optim.amp == "off"
    assert ck["ema"].keys() == ck["model"].keys()
    assert any("running_mean" in k for k in ck["ema"])
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) for r in train)
    assert any(r["kind"] == "val" for r in recs)
    assert (run_dir / "metrics.png").stat().st_size > 0
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 5


def test_stopped_and_resumed_run_matches_uninterrupted(trained, dataset, tmp_path):
    cfg = write_config(tmp_path / "b.yaml", dataset, tmp_path / "run", max_steps=3)
    r = run("fit", cfg)
    assert r.exit_code == 0 and "step 3" in r.output, r.output
    assert states(tmp_path / "run" / "last.pt")["reader"]["position"] > 0  # stopped mid-epoch
    r = run("fit", cfg, "--set", "optim.max_steps=6")
    assert r.exit_code == 0 and "step 6" in r.output, r.output
    assert_same_state(states(tmp_path / "run" / "last.pt"), states(trained / "run" / "last.pt"))


def test_killed_run_resumes_from_its_last_checkpoint(trained, dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(trained / "step4.pt", run_dir / "last.pt")
    shutil.copy(trained / "run" / "metrics.jsonl", run_dir / "metrics.jsonl")  # lines past step 4 too
    cfg = write_config(tmp_path / "c.yaml", dataset, run_dir, max_steps=6)
    r = run("fit", cfg)
    assert r.exit_code == 0, r.output
    assert_same_state(states(run_dir / "last.pt"), states(trained / "run" / "last.pt"))
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated lines after the resume


def test_a_resumed_run_writes_the_metric_lines_of_the_uninterrupted_one(dataset, tmp_path):
    """With checkpoint_every not a multiple of log_every, the first line after a resume averaged
    fewer steps than the uninterrupted run's (its meter started at the checkpoint): a line is now
    also written at each checkpoint, so the lines are the same."""
    keys = ("kind", "step", "epoch", "position", "loss", "iou", "mean_iou", "real_fraction")

    def lines(run_dir: Path) -> list[dict]:
        return [{k: rec.get(k) for k in keys} for rec in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]

    full = tmp_path / "full"
    cfg = yaml.safe_load(write_config(tmp_path / "f.yaml", dataset, full, max_steps=7).read_text())
    cfg["run"].update(log_every=2, checkpoint_every=3)
    cfg["data"]["val"] = []  # training lines are the subject
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
    assert fit_keeping_checkpoint(tmp_path / "f.yaml", 3, tmp_path / "step3.pt").exit_code == 0
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copy(tmp_path / "step3.pt", killed / "last.pt")
    shutil.copy(full / "metrics.jsonl", killed / "metrics.jsonl")  # as the killed run left it, and more
    cfg["run"]["out"] = str(killed)
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(cfg))
    assert run("fit", tmp_path / "k.yaml").exit_code == 0
    want = lines(full)
    steps = [r["step"] for r in want if r["kind"] == "train"]
    assert {2, 3, 4, 6} <= set(steps)  # every log_every steps and at the checkpoint between
    got = lines(killed)
    resumes = [i for i, r in enumerate(got) if r["kind"] == "resume"]  # the resume's own record
    assert len(resumes) == 1 and got[resumes[0]]["step"] == 3 and got[resumes[0] - 1]["step"] == 3
    assert [r for r in got if r["kind"] != "resume"] == want


def test_metric_lines_after_the_checkpoint_go_and_a_start_over_starts_a_fresh_log(trained, dataset, tmp_path):
    lines = [{"kind": "train", "step": 1, "epoch": 0}, {"kind": "train", "step": 2, "epoch": 0},
             {"kind": "val", "step": 2, "epoch": 1}, {"kind": "train", "step": 3, "epoch": 1}]
    path = tmp_path / "metrics.jsonl"
    for ck_epoch, kept in ((0, 2), (1, 3)):  # step 2 checkpointed before / after its epoch's validation
        path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "torn {\n")
        fit_mod._truncate_metrics(path, 2, ck_epoch)
        assert [json.loads(x) for x in path.read_text().splitlines()] == lines[:kept]
    # a run stopped before its first checkpoint left lines: the start-over run does not append to them
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "epoch": 0}) + "\n")
    cfg = write_config(tmp_path / "c.yaml", dataset, run_dir, max_steps=2)
    assert run("fit", cfg).exit_code == 0
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_run_files_that_cannot_be_written_are_refused_before_any_step(trained, dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = write_config(tmp_path / "c.yaml", dataset, run_dir, max_steps=6)
    (run_dir / "last.pt").mkdir()
    r = run("fit", cfg)
    assert r.exit_code == 2 and r.stderr == (f"error: {run_dir / 'last.pt'}: is not a file, and the run "
                                             "writes it; move it away or use another run.out\n"), r.output
    (run_dir / "last.pt").rmdir()
    shutil.copy(trained / "step4.pt", run_dir / "last.pt")
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(json.dumps({"kind": "train", "step": 4, "epoch": 0}) + "\n")
    metrics.chmod(0o444)  # a resumed run appends to it: was a PermissionError, exit 1, after the resume
    try:
        if os.access(metrics, os.W_OK):  # root writes read-only files: nothing to refuse
            return
        r = run("fit", cfg)
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {metrics}: is not writable"), r.output
        assert torch.load(run_dir / "last.pt", weights_only=False)["step"] == 4  # untouched
    finally:
        metrics.chmod(0o644)


def test_a_diverging_run_stops_without_saving_nan_weights(dataset, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", dataset, tmp_path / "run", max_steps=6, lr=1e30, clip=0.0)
    r = run("fit", cfg)
    assert r.exit_code == 1, r.output
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged by step ") and "hold inf or NaN" in line, line
    assert "Lower optim.lr (now 1e+30)" in line
    if (tmp_path / "run" / "last.pt").exists():  # an earlier checkpoint: finite, and the message names it
        ck = states(tmp_path / "run" / "last.pt")
        assert f"keeps step {ck['step']}" in line
        assert all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    else:
        assert "no checkpoint was written" in line


def test_a_damaged_or_newer_checkpoint_is_bad_input(trained, dataset, tmp_path):
    good = states(trained / "step4.pt")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = write_config(tmp_path / "c.yaml", dataset, run_dir, max_steps=6)
    no_config = {k: v for k, v in good.items() if k != "config"}
    no_head = {**good, "model": {k: v for k, v in good["model"].items() if not k.startswith("head.")}}
    for damaged, why in ((no_config, "KeyError: 'config'"), (no_head, "RuntimeError: Error(s) in loading")):
        torch.save(damaged, run_dir / "last.pt")
        r = run("fit", cfg)
        assert r.exit_code == 2, r.output
        assert r.stderr.strip() == (f"error: {run_dir / 'last.pt'}: checkpoint does not match its run ({why}"
                                    + r.stderr.strip().split(why, 1)[1]), r.stderr
        assert "use another run.out, or remove the file to start over" in r.stderr
    torch.save({**good, "version": 99}, tmp_path / "v99.pt")
    r = run("evaluate", tmp_path / "v99.pt", dataset, "-o", tmp_path / "ev")
    assert r.exit_code == 2 and "checkpoint format version 99; this simaq-train reads versions 1 to 1" in r.stderr
    assert not (tmp_path / "ev").exists()


def test_resume_refuses_a_changed_model(trained, dataset, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "run")
    cfg = write_config(tmp_path / "d.yaml", dataset, tmp_path / "run", max_steps=8)
    r = run("fit", cfg, "--set", "model.init_features=8")
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert "different 'model' section (model.init_features: 4 → 8)" in r.output


def test_resume_takes_a_changed_lr_and_weight_decay(trained, dataset, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "run")
    cfg = write_config(tmp_path / "e.yaml", dataset, tmp_path / "run", max_steps=7)
    r = run("fit", cfg, "--set", "optim.lr=0.002", "--set", "optim.weight_decay=0.001")
    assert r.exit_code == 0 and "step 7" in r.output, r.output
    opt = states(tmp_path / "run" / "last.pt")["optimizer"]
    groups = {g["name"]: g for g in opt["param_groups"]}
    assert groups["decay"]["lr"] == groups["no_decay"]["lr"] == 0.002  # was 0.01
    assert groups["decay"]["weight_decay"] == 0.001 and groups["no_decay"]["weight_decay"] == 0.0
    assert {float(st["step"]) for st in opt["state"].values()} == {7.0}  # moments kept, not restarted


def test_an_ema_switched_on_at_resume_starts_from_the_resumed_weights(trained, dataset, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ck = states(trained / "run" / "last.pt")  # step 6; made as if trained without an EMA
    ck["ema"], ck["config"]["optim"]["ema_decay"] = None, 0.0
    torch.save(ck, run_dir / "last.pt")
    cfg = write_config(tmp_path / "g.yaml", dataset, run_dir, max_steps=7)  # ema_decay 0.9
    r = run("fit", cfg)
    assert r.exit_code == 0 and "step 7" in r.output, r.output
    after = states(run_dir / "last.pt")
    w = 1.0 - min(0.9, 7 / 16)  # EMA.decay_at(6): the one update, after optimiser step 7
    for name, p7 in after["model"].items():
        p6, e = ck["model"][name], after["ema"][name]
        if p6.is_floating_point() and not name.endswith(("running_mean", "running_var")):
            assert torch.allclose(e, p6 + w * (p7 - p6), atol=1e-6), name  # not from the initial weights


def test_paths_are_absolute_and_a_run_resumes_across_spellings(trained, dataset, tmp_path, monkeypatch):
    from simaq_train.config import load_config

    monkeypatch.chdir(dataset.parent)
    rel = write_config(tmp_path / "rel.yaml", Path(dataset.name),
                       Path(os.path.relpath(tmp_path / "run", dataset.parent)), max_steps=7)
    cfg = load_config(rel)
    assert cfg.data.train == cfg.data.val == (str(dataset),) and cfg.run.out == str(tmp_path / "run")
    # a checkpoint that recorded the paths as written (relative to the cwd) resumes under absolute ones
    shutil.copytree(trained / "run", tmp_path / "run")
    ck = states(tmp_path / "run" / "last.pt")
    manifest = ck["datasets"][str(dataset)]
    ck["config"]["data"]["train"] = ck["config"]["data"]["val"] = [dataset.name]
    ck["datasets"] = {dataset.name: manifest}
    torch.save(ck, tmp_path / "run" / "last.pt")
    r = run("fit", write_config(tmp_path / "abs.yaml", dataset, tmp_path / "run", max_steps=7))
    assert r.exit_code == 0 and "step 7" in r.output, r.output
    ck = states(tmp_path / "run" / "last.pt")
    assert ck["datasets"] == {str(dataset): manifest} and ck["config"]["data"]["train"] == [str(dataset)]


def test_a_run_resumes_after_its_dataset_is_frozen(dataset, tmp_path, caplog):
    from simaq_factory.store.freeze import freeze_dataset

    ds = Path(shutil.copytree(dataset.with_name("ds-unfrozen"), tmp_path / "ds"))
    cfg = write_config(tmp_path / "f.yaml", ds, tmp_path / "run", max_steps=2)
    r = run("fit", cfg, "--set", "data.val=[]")
    assert r.exit_code == 0 and "step 2" in r.output, r.output
    freeze_dataset(ds)
    caplog.set_level(logging.INFO, logger=fit_mod.__name__)
    r = run("fit", cfg, "--set", "data.val=[]", "--set", "optim.max_steps=3")
    assert r.exit_code == 0 and "step 3" in r.output, r.output
    assert any("was frozen since the run started" in m for m in caplog.messages)
    ckpt = tmp_path / "run" / "last.pt"
    ck = states(ckpt)
    assert ck["datasets"] == {str(ds): hashlib.sha256((ds / "manifest.jsonl").read_bytes()).hexdigest()}
    # a run trained on other contents (a hash that is neither this manifest's nor these arrays') is refused
    ck["datasets"] = {str(ds): "0" * 64}
    torch.save(ck, ckpt)
    r = run("fit", cfg, "--set", "data.val=[]", "--set", "optim.max_steps=4")
    now = hashlib.sha256((ds / "manifest.jsonl").read_bytes()).hexdigest()
    assert r.exit_code == 2 and r.stderr == (  # which dataset, and old → new
        f"error: {ckpt}: existing run was trained on different contents of data.train {ds} (dataset hash "
        f"000000000000… → {now[:12]}…: the folder now holds another dataset); put the dataset back, or use "
        "another run.out\n"), r.output
    ck["datasets"] = {str(tmp_path / "elsewhere"): now}  # a checkpoint without this path
    torch.save(ck, ckpt)
    r = run("fit", cfg, "--set", "data.val=[]", "--set", "optim.max_steps=4")
    assert r.exit_code == 2 and f"existing run was not trained on data.train {ds} (it recorded " \
        f"{tmp_path / 'elsewhere'}); use another run.out" in r.stderr, r.output


def test_a_resume_records_what_it_changed_and_the_config_it_had(trained, dataset, tmp_path):
    """A resume with another lr and validation set (both allowed) overwrote config.json and left no
    trace: the log now has a resume line (old → new, and the earlier config in full), the lr of
    each training line and the datasets each validation line scored."""
    shutil.copytree(trained / "run", tmp_path / "run")
    before = states(tmp_path / "run" / "last.pt")["config"]  # step 6 of 5 per epoch, lr 0.01
    other = dataset.with_name("ds-unfrozen")
    cfg = write_config(tmp_path / "e.yaml", dataset, tmp_path / "run", epochs=2)
    r = run("fit", cfg, "--set", "optim.lr=0.002", "--set", f"data.val=[{other}]", "--set", "data.val_max_samples=2")
    assert r.exit_code == 0 and "resumed at step 6" in r.output, r.output
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    resumes = [x for x in recs if x["kind"] == "resume"]
    assert [x["changed"] for x in resumes[:-1]] == [{}]  # the trained fixture's rerun that had nothing to do
    last = resumes[-1]
    assert (last["step"], last["epoch"], last["position"]) == (6, 1, 2)
    assert last["changed"] == {
        "data.val": {"old": [str(dataset)], "new": [str(other)]},
        "data.val_max_samples": {"old": 1, "new": 2},
        "optim.lr": {"old": 0.01, "new": 0.002},
        "optim.epochs": {"old": 3, "new": 2},
        "optim.max_steps": {"old": 6, "new": 0},
        "run.out": {"old": str(trained / "run"), "new": str(tmp_path / "run")},  # the run was moved here
    }
    assert last["previous_config"] == before
    assert json.loads((tmp_path / "run" / "config.json").read_text())["optim"]["lr"] == 0.002
    lrs = {x["step"]: x["lr"] for x in recs if x["kind"] == "train"}
    assert lrs == {1: 0.01, 2: 0.01, 3: 0.01, 4: 0.01, 5: 0.01, 6: 0.01, 7: 0.002, 8: 0.002, 9: 0.002, 10: 0.002}
    manifest = hashlib.sha256((dataset / "manifest.jsonl").read_bytes()).hexdigest()
    from simaq_train.data.sources import dataset_meta_hash

    val = [(x["step"], x["datasets"], x["max_samples"], x["volumes"]) for x in recs if x["kind"] == "val"]
    assert val == [(5, {str(dataset): manifest}, 1, 1), (10, {str(other): dataset_meta_hash(other)}, 2, 2)]


def test_repeated_or_overlapping_datasets(dataset, tmp_path, caplog):
    """data.train [a, a] used every window twice per epoch (refused, see the bad-input test); a
    validation set that is a training set, by path or by recipe id, is named in a warning."""
    from simaq_train.config import load_config

    link = tmp_path / "link"
    link.symlink_to(dataset)
    r = run("fit", write_config(tmp_path / "a.yaml", dataset, tmp_path / "run"), "--set",
            f"data.train=[{dataset},{link}]")  # one dataset spelt two ways
    assert r.exit_code == 2 and r.stderr == f"error: data.train: {dataset} is listed twice; list each dataset once\n"
    assert not (tmp_path / "run").exists()
    from simaq_train.data.build import check_distinct

    with pytest.raises(fit_mod.BadInput, match=f"data.val: {link} is listed twice \\(as {dataset}\\)"):
        check_distinct([str(dataset), str(link)], "data.val")  # as a config not from load_config has them
    other = dataset.with_name("ds-unfrozen")  # another folder, the same recipe id: the same volumes
    caplog.set_level(logging.WARNING, logger=fit_mod.__name__)
    for val, why in (([], None), ([dataset], "the same dataset"), ([other], "the same recipe id")):
        caplog.clear()
        cfg = load_config(write_config(tmp_path / "b.yaml", dataset, tmp_path / "run"),
                          [f"data.val=[{','.join(map(str, val))}]"])
        fit_mod.Trainer(cfg).release()
        warned = [m for m in caplog.messages if "validation scores training data" in m]
        if why is None:
            assert not warned
        else:
            assert len(warned) == 1 and f"data.val {val[0]} and data.train {dataset} are {why}" in warned[0]
    assert not (tmp_path / "run").exists()


def test_workers_started_while_interrupts_are_held_never_get_ctrl_c():
    """Ctrl-C goes to every process of the terminal's group: a spawned loader worker still
    importing printed a traceback (and the parent "worker killed by signal"). Workers started in
    :func:`fit._interrupts_held` inherit SIGINT blocked; an interrupt of this process meanwhile is
    raised once they are started, not lost."""
    import multiprocessing
    import signal
    import time

    # Python's own handler, as fit runs under (an earlier test's import of dask_jobqueue may have
    # left its sys.exit handler in this process)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _check_interrupts_held(multiprocessing.get_context("spawn"), signal, time)
    finally:
        signal.signal(signal.SIGINT, outer)


def _check_interrupts_held(ctx, signal, time) -> None:
    with fit_mod._interrupts_held():
        worker = ctx.Process(target=time.sleep, args=(60,))
        worker.start()
    try:
        os.kill(worker.pid, signal.SIGINT)  # while it starts up, and after
        worker.join(1.0)
        assert worker.is_alive(), worker.exitcode  # not killed by the interrupt
    finally:
        worker.terminate()
        worker.join()
    body_done = False
    with pytest.raises(KeyboardInterrupt):
        with fit_mod._interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            body_done = True
    assert body_done and signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow  # 15 s: a fresh interpreter and two spawned workers
def test_ctrl_c_while_loader_workers_start_prints_one_line(dataset, tmp_path):
    """SIGINT to the whole process group right after the loader started its two workers (they are
    importing then): one line and exit 130 (was some 35 lines of worker tracebacks)."""
    import subprocess
    import sys

    cfg = write_config(tmp_path / "c.yaml", dataset, tmp_path / "run", max_steps=4)
    driver = (
        "import os, signal, sys\n"
        "import torch.utils.data as d\n"
        "start = d.DataLoader.__iter__\n"
        "def started(self):\n"
        "    it = start(self)\n"
        "    os.killpg(0, signal.SIGINT)\n"
        "    return it\n"
        "d.DataLoader.__iter__ = started\n"
        "from simaq_train.cli import cli\n"
        "cli(sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", driver, "fit", str(cfg), "--set", "data.num_workers=2",
                        "--set", "data.val=[]"],
                       capture_output=True, text=True, env=env, timeout=300, start_new_session=True)
    assert r.returncode == 130 and r.stderr == ("error: interrupted before the first checkpoint: nothing was saved "
                                                "to resume from; run the same command again to start over\n"), r.stderr


def test_loader_workers_train_the_same_weights_as_none(dataset, tmp_path):
    """Two spawned loader workers give the weights, optimiser state and metric lines of none."""
    keys = ("kind", "step", "epoch", "position", "lr", "loss", "iou", "mean_iou", "real_fraction")
    got = {}
    for nw in (0, 2):
        cfg = write_config(tmp_path / f"w{nw}.yaml", dataset, tmp_path / f"w{nw}", max_steps=3)
        r = run("fit", cfg, "--set", f"data.num_workers={nw}", "--set", "data.val=[]")
        assert r.exit_code == 0, r.output
        got[nw] = [{k: x.get(k) for k in keys} for x in map(json.loads, (tmp_path / f"w{nw}" / "metrics.jsonl").open())]
    assert_same_state(states(tmp_path / "w0" / "last.pt"), states(tmp_path / "w2" / "last.pt"))
    assert got[0] == got[2] and len(got[0]) == 3


def test_evaluate_postprocessing_keeps_classes_beyond_the_fourth(nucleus_ds, tmp_path, monkeypatch):
    import zarr

    import simaq_train.inference as inference
    from simaq_train.config import config_from_dict
    from simaq_train.engine.parts import save_checkpoint
    from simaq_train.evaluate import evaluate_checkpoint
    from simaq_train.model import CenterSliceUNet

    cfg = config_from_dict({"data": {"train": [str(nucleus_ds)], "fov_margin": 2.0},
                            "model": {"init_features": 4, "depth": 2, "out_channels": 5}})
    ckpt = tmp_path / "five.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": CenterSliceUNet(cfg.model).state_dict(), "ema": None})
    truth = np.asarray(zarr.open_group(nucleus_ds / "dataset.zarr", mode="r")["labels"][0])
    monkeypatch.setattr(inference, "predict_volume", lambda *a, **k: truth.copy())  # a perfect model
    for post in (False, True):
        rep = evaluate_checkpoint(ckpt, nucleus_ds, max_samples=1, post=post, device="cpu")
        assert rep["class_names"][4] == "nucleus"
        assert rep["pooled"]["iou"]["nucleus"] == pytest.approx(1.0), post


def test_evaluate_postprocess_scores_the_segmentation_predict_writes(nucleus_ds, tmp_path, monkeypatch):
    """A cell blob straddling the field-of-view edge: predict clears outside the FOV before the size
    filter, which then removes the small inside part; evaluate --postprocess must score the same."""
    import zarr

    import simaq_train.inference as inference
    from simaq_train.config import config_from_dict
    from simaq_train.data.normalize import fov_mask
    from simaq_train.engine.parts import save_checkpoint
    from simaq_train.evaluate import evaluate_checkpoint
    from simaq_train.model import CenterSliceUNet

    cfg = config_from_dict({"data": {"train": [str(nucleus_ds)], "fov_margin": 2.0},
                            "model": {"init_features": 4, "depth": 2, "out_channels": 5}})
    ckpt = tmp_path / "five.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": CenterSliceUNet(cfg.model).state_dict(), "ema": None})
    truth = np.asarray(zarr.open_group(nucleus_ds / "dataset.zarr", mode="r")["labels"][0])
    blob = np.zeros(truth.shape, bool)
    blob[4:12, 0:5, 8:24] = True
    fov = fov_mask(truth.shape[1:], 2.0)
    min_vol = 4 / 3 * np.pi * (70.0 * max(truth.shape) / 512) ** 3  # the cell's size filter
    assert (blob & fov).sum() < min_vol < blob.sum() and not (truth[blob] > 0).any()
    pred = truth.copy()
    pred[blob] = 1
    monkeypatch.setattr(inference, "predict_volume", lambda *a, **k: pred.copy())
    raw = evaluate_checkpoint(ckpt, nucleus_ds, max_samples=1, post=False, device="cpu")
    assert raw["pooled"]["iou"]["cell"] < 1.0  # the blob's inside part is a false positive
    post = evaluate_checkpoint(ckpt, nucleus_ds, max_samples=1, post=True, device="cpu")
    assert post["pooled"]["iou"]["cell"] == pytest.approx(1.0)  # removed, as predict would
    seg = inference.segment(CenterSliceUNet(cfg.model), cfg, np.zeros(truth.shape, np.float32), batch_size=4,
                            device=torch.device("cpu"), post=True)
    assert not (seg[blob] == 1).any() and (seg == 1).sum() > 0.9 * (truth == 1).sum()


def test_baseline_scores_every_class_of_the_dataset(nucleus_ds):
    from simaq_train.evaluate import otsu_baseline

    rep = otsu_baseline(nucleus_ds, fov_margin=2.0, max_samples=1, search_order=False)
    assert rep["class_names"] == ["background", "cell", "vacuole", "lipid_droplet", "nucleus"]
    assert rep["pooled"]["iou"]["nucleus"] == 0.0  # never predicted: four intensity levels


def test_evaluate_writes_json_and_plot(trained, dataset, tmp_path, monkeypatch):
    r = run("evaluate", trained / "run" / "last.pt", dataset, "-o", tmp_path / "ev")
    assert r.exit_code == 0, r.output
    # the default report folder is named after the dataset folder, also when it is given as '.'
    (tmp_path / "ck").mkdir()
    shutil.copy(trained / "run" / "last.pt", tmp_path / "ck" / "last.pt")
    monkeypatch.chdir(dataset)
    assert run("evaluate", tmp_path / "ck" / "last.pt", ".", "--max-samples", "1").exit_code == 0
    assert (tmp_path / "ck" / f"eval-{dataset.name}" / "evaluation.json").is_file()
    rep = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert rep["samples"] == 4 and rep["class_names"][1:] == ["cell", "vacuole", "lipid_droplet"]
    cells = [json.loads(x)["n_cells"] for x in (dataset / "manifest.jsonl").read_text().splitlines()]
    assert [s["n_cells"] for s in rep["per_sample"]] == cells
    for s in rep["per_sample"]:
        assert set(s["iou"]) == set(s["dice"]) == set(rep["class_names"])
        assert all(v is None or 0.0 <= v <= 1.0 for v in s["iou"].values())
    assert set(rep["per_class"]["cell"]) >= {"all", "dice_all"} | {f"cells={n}" for n in set(cells)}
    assert (tmp_path / "ev" / "evaluation_iou.png").stat().st_size > 0
    r = run("baseline", dataset, "-o", tmp_path / "bl")
    assert r.exit_code == 0, r.output
    # its progress on stderr (off a terminal: the first line, then one every 30 s)
    assert r.stderr.splitlines() == ["[#" + "." * 19 + "] multiotsu4 (1/4): volume 1/4"]
    bl = json.loads((tmp_path / "bl" / "baseline.json").read_text())
    # the level -> class order is searched on the evaluated data (optimistic for the baseline)
    assert sorted(bl["best_order"]) == [0, 1, 2, 3] and bl["order_chosen_on_evaluated_data"] is True
    assert bl["best_order_names"] == [bl["class_names"][c] for c in bl["best_order"]]
    variants = {"multiotsu4", "otsu_then_multiotsu3", "raw_multiotsu4", "raw_otsu_then_multiotsu3"}
    assert bl["best_variant"] in variants and "optimistic" in bl["note"]
    assert bl["mean_iou_foreground"] >= bl["physical_order"]["mean_iou_foreground"]
    r = run("baseline", dataset, "-o", tmp_path / "bp", "--physical-order")
    assert r.exit_code == 0, r.output
    bp = json.loads((tmp_path / "bp" / "baseline.json").read_text())
    assert bp["best_order"] == [0, 2, 1, 3] and bp["order_chosen_on_evaluated_data"] is False


def test_predict_round_trips_shapes_and_formats(trained, tmp_path, caplog):
    import mrcfile
    import nrrd
    import tifffile

    rng = np.random.default_rng(0)
    tomo = rng.normal(0.3, 0.05, (9, 30, 34)).astype(np.float32)  # in-plane not a multiple of 2
    tifffile.imwrite(tmp_path / "t.tif", tomo)
    with mrcfile.new(tmp_path / "t.mrc") as f:
        f.set_data(tomo)
        f.voxel_size = 10.0
    nrrd.write(str(tmp_path / "t.nrrd"), tomo, index_order="C")
    ckpt = trained / "run" / "last.pt"
    for src, dst in (("t.tif", "a.tif"), ("t.mrc", "b.mrc"), ("t.nrrd", "c.zarr"), ("t.tif", "d.npy")):
        r = run("predict", ckpt, tmp_path / src, "-o", tmp_path / dst, "--batch-size", "4")
        assert r.exit_code == 0, r.output
        seg = read_volume(tmp_path / dst)
        assert seg.shape == tomo.shape and seg.max() < 4, dst
        assert seg.dtype in (np.uint8, np.int8)
        counts = np.bincount(seg.ravel(), minlength=4)
        assert f"voxels per class: background {counts[0]}, cell {counts[1]}, vacuole {counts[2]}" in r.output
        assert f" {'x'.join(map(str, tomo.shape))} (z, y, x); " in r.output  # as info and -v print shapes
    with mrcfile.open(tmp_path / "b.mrc") as f:
        assert float(f.voxel_size.x) == pytest.approx(10.0)
    np.save(tmp_path / "t5.npy", tomo[None, None])  # singleton axes are dropped (documented)
    r = run("predict", ckpt, tmp_path / "t5.npy", "-o", tmp_path / "t5-seg.npy", "--raw")
    assert r.exit_code == 0, r.output
    assert read_volume(tmp_path / "t5-seg.npy").shape == tomo.shape
    r = run("predict", ckpt, tmp_path / "t.tif", "-o", tmp_path / "e.tif", "--raw", "--tilt-axis", "2",
            "--edge", "replicate")
    assert r.exit_code == 0, r.output
    assert read_volume(tmp_path / "e.tif").shape == tomo.shape
    # orientation: a transposed copy, with its tilt and beam axes named, gives the transposed result
    assert run("predict", ckpt, tmp_path / "t.tif", "-o", tmp_path / "f.npy", "--raw").exit_code == 0
    tifffile.imwrite(tmp_path / "tt.tif", np.transpose(tomo, (1, 2, 0)))  # (y, x, z): tilt 2, beam 0
    r = run("predict", ckpt, tmp_path / "tt.tif", "-o", tmp_path / "g.npy", "--raw", "--tilt-axis", "2",
            "--beam-axis", "0")
    assert r.exit_code == 0, r.output
    assert np.array_equal(read_volume(tmp_path / "g.npy"), np.transpose(read_volume(tmp_path / "f.npy"), (1, 2, 0)))
    # --no-normalize takes a volume normalised as in training: the same segmentation
    from simaq_train.data.normalize import quantile_normalize

    margin = states(ckpt)["config"]["data"]["fov_margin"]
    np.save(tmp_path / "tn.npy", quantile_normalize(tomo, margin))
    r = run("predict", ckpt, tmp_path / "tn.npy", "-o", tmp_path / "h.npy", "--raw", "--no-normalize")
    assert r.exit_code == 0, r.output
    assert np.array_equal(read_volume(tmp_path / "h.npy"), read_volume(tmp_path / "f.npy"))
    assert "--no-normalize, but" not in caplog.text
    # a raw volume passed with --no-normalize by mistake is segmented, with a warning that says so
    r = run("predict", ckpt, tmp_path / "t.tif", "-o", tmp_path / "rn.npy", "--raw", "--no-normalize")
    assert r.exit_code == 0 and "--no-normalize, but the field of view has mean 0.3" in caplog.text, caplog.text


def test_predict_pads_the_ends_as_the_model_was_trained(trained, tmp_path, monkeypatch):
    import simaq_train.inference as inference

    ck = states(trained / "run" / "last.pt")
    ck["config"]["data"]["edge_mode"] = "replicate"
    torch.save(ck, tmp_path / "rep.pt")
    np.save(tmp_path / "t.npy", np.random.default_rng(1).normal(size=(9, 32, 32)).astype(np.float32))
    seen = []
    real = inference.predict_volume
    monkeypatch.setattr(inference, "predict_volume", lambda *a, **k: seen.append(k["edge_mode"]) or real(*a, **k))
    for ckpt, flags, want in (("rep.pt", [], "replicate"), ("rep.pt", ["--edge", "reflect"], "reflect"),
                              (trained / "run" / "last.pt", [], "reflect")):
        r = run("predict", tmp_path / ckpt, tmp_path / "t.npy", "-o", tmp_path / "s.npy", "--raw", "--overwrite",
                *flags)
        assert r.exit_code == 0, r.output
        assert seen.pop() == want


def test_predict_never_replaces_existing_data_silently(trained, dataset, tmp_path):
    """An existing output is refused without --overwrite; with it a file, or a Zarr array predict
    wrote, is replaced, but never the input itself, a dataset's store or a folder of other files."""
    ckpt = trained / "run" / "last.pt"
    tomo = np.random.default_rng(2).normal(size=(5, 24, 24)).astype(np.float32)
    np.save(tmp_path / "t.npy", tomo)
    notes = tmp_path / "notes.zarr"
    notes.mkdir()
    (notes / "thesis.txt").write_text("precious")
    store = tmp_path / "ds"
    shutil.copytree(dataset, store)
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    for args, needle in (
        (("-o", notes), "notes.zarr: exists; use --overwrite"),
        (("-o", notes, "--overwrite"), "not a Zarr array written by predict"),
        (("-o", store / "dataset.zarr", "--overwrite"), "not a Zarr array written by predict"),
        (("-o", tmp_path / "t.npy", "--overwrite"), "t.npy: is the input tomogram"),
    ):
        r = run("predict", ckpt, tmp_path / "t.npy", "--raw", *args)
        assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1, (args, r.output)
    assert (notes / "thesis.txt").read_text() == "precious" and sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before
    assert np.array_equal(np.load(tmp_path / "t.npy"), tomo)
    # predict's own outputs: refused again without --overwrite, replaced with it
    for name in ("s.zarr", "s.npy"):
        assert run("predict", ckpt, tmp_path / "t.npy", "-o", tmp_path / name, "--raw").exit_code == 0
        first = read_volume(tmp_path / name)
        r = run("predict", ckpt, tmp_path / "t.npy", "-o", tmp_path / name, "--raw")
        assert r.exit_code == 2 and f"{name}: exists; use --overwrite" in r.output, r.output
        r = run("predict", ckpt, tmp_path / "t.npy", "-o", tmp_path / name, "--raw", "--overwrite")
        assert r.exit_code == 0, r.output
        assert np.array_equal(read_volume(tmp_path / name), first)
    assert not list(tmp_path.glob(".*tmp*"))


def test_predict_says_how_much_of_a_slab_lies_outside_the_segmented_disc(trained, tmp_path, caplog):
    tomo = np.random.default_rng(6).normal(size=(5, 24, 72)).astype(np.float32)
    np.save(tmp_path / "slab.npy", tomo)
    r = run("predict", trained / "run" / "last.pt", tmp_path / "slab.npy", "-o", tmp_path / "o.npy", "--raw")
    assert r.exit_code == 0, r.output
    seg = np.load(tmp_path / "o.npy")
    assert seg.shape == tomo.shape and not seg[:, :, :20].any()  # outside the disc: background
    assert "slices of 24 x 72 voxels" in caplog.text and "% of the volume outside it is labelled background" in caplog.text


def test_predict_warns_before_the_work_when_memory_looks_short(trained, tmp_path, caplog, monkeypatch):
    from simaq_train import bench

    tomo = np.random.default_rng(7).normal(size=(6, 24, 24)).astype(np.float32)
    np.save(tmp_path / "t.npy", tomo)
    monkeypatch.setattr(bench, "host_memory_available", lambda: tomo.size * 40 + 1)  # enough
    r = run("predict", trained / "run" / "last.pt", tmp_path / "t.npy", "-o", tmp_path / "a.npy", "--raw")
    assert r.exit_code == 0, r.output
    assert "may be killed" not in caplog.text
    monkeypatch.setattr(bench, "host_memory_available", lambda: tomo.size * 20)  # too little: a warning, same result
    r = run("predict", trained / "run" / "last.pt", tmp_path / "t.npy", "-o", tmp_path / "b.npy", "--raw")
    assert r.exit_code == 0, r.output
    assert "6x24x24 voxels need about" in caplog.text and "the process may be killed" in caplog.text
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))


def test_predict_refuses_unusable_values_and_volumes(trained, tmp_path, caplog):
    ckpt = trained / "run" / "last.pt"
    rng = np.random.default_rng(3)
    tomo = rng.normal(size=(5, 24, 24)).astype(np.float32)
    np.save(tmp_path / "t.npy", tomo)
    np.save(tmp_path / "zero.npy", np.zeros((0, 24, 24), np.float32))
    np.save(tmp_path / "nan.npy", np.full((5, 24, 24), np.nan, np.float32))
    blank = np.full((5, 24, 24), 3.0, np.float32)
    blank[:, 0, 0] = np.nan  # one value throughout the field of view, whatever lies outside it
    np.save(tmp_path / "blank.npy", blank)  # was "segmented" into cells and droplets, exit 0
    for args, needle in (
        (("t.npy", "--post-scale", "inf"), "--post-scale: must be > 0 and finite"),
        (("zero.npy",), "zero.npy: empty volume"),
        (("nan.npy",), "nan.npy: no finite voxel in the field of view"),
        (("blank.npy",), "blank.npy: its field of view holds one value (3.0) throughout: a blank volume"),
    ):
        r = run("predict", ckpt, tmp_path / args[0], "-o", tmp_path / "o.npy", *args[1:])
        assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1, (args, r.output)
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))
    # a few non-finite voxels are left out of the normalisation and set to 0 (the normalised median)
    from simaq_train.data.normalize import fov_mask, quantile_normalize

    holed = tomo.copy()
    holed[0, 12, 12], holed[1, 10, 11], holed[2, 13, 9] = np.nan, np.inf, -np.inf
    valid = np.isfinite(holed)
    norm = quantile_normalize(holed, 2.0, valid=valid)
    assert np.isfinite(norm).all() and (norm[~valid] == 0).all()
    disc = np.broadcast_to(fov_mask((24, 24), 2.0), holed.shape) & valid
    ref = quantile_normalize(tomo, 2.0)  # the finite voxels keep their order and spread symmetrically
    assert np.array_equal(np.argsort(norm[disc]), np.argsort(ref[disc]))
    assert abs(float(norm[disc].mean())) < 1e-3
    np.save(tmp_path / "holed.npy", holed)
    r = run("predict", ckpt, tmp_path / "holed.npy", "-o", tmp_path / "h.npy", "--raw")
    assert r.exit_code == 0, r.output
    assert read_volume(tmp_path / "h.npy").shape == tomo.shape


def test_unusable_output_paths_are_refused_before_any_work(trained, dataset, tmp_path, monkeypatch):
    import simaq_train.evaluate as evaluate

    def no_work(*a, **k):
        raise AssertionError("the work started before the output path was checked")

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", no_work)
    monkeypatch.setattr(evaluate, "otsu_baseline", no_work)
    (tmp_path / "afile").write_text("x")
    ckpt = trained / "run" / "last.pt"
    for args, needle in (
        (("evaluate", ckpt, dataset, "-o", tmp_path / "afile" / "sub"), "afile is not a directory"),
        (("baseline", dataset, "-o", tmp_path / "afile" / "bl"), "afile is not a directory"),
        (("evaluate", ckpt, dataset, "-o", "/proc/simaq-ev"), "/proc/simaq-ev: cannot create the output directory"),
    ):
        r = run(*args)
        assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1, (args, r.output)
    assert (tmp_path / "afile").read_text() == "x"


def test_set_errors_name_the_flag_at_fault(dataset, tmp_path):
    c = write_config(tmp_path / "c.yaml", dataset, tmp_path / "r1")
    for sets, needle in (
        (("optim.lr=[1",), "--set optim.lr=[1: not valid YAML"),
        (("optim=3", "optim.max_steps=1"), "--set optim=3: optim is a section"),
        (("=3",), "--set =3: empty key"),
    ):
        r = run("fit", c, *[x for s in sets for x in ("--set", s)])
        assert r.exit_code == 2 and r.output.count("\n") == 1 and needle in r.output, (sets, r.output)
    assert not (tmp_path / "r1").exists()


def test_bad_input_is_one_line_and_writes_nothing(trained, dataset, nucleus_ds, tmp_path):
    from simaq_train.testing import write_synthetic_dataset

    ckpt = trained / "run" / "last.pt"
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((8, 8), np.float32))
    (tmp_path / "bad.yaml").write_text("data: {train: [x]}\nmodel: {widht: 3}\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "f.zarr").write_text("x")
    tiny = write_synthetic_dataset(tmp_path / "tiny", n_samples=1, shape=(8, 4, 4))  # no FOV at margin 2
    c = write_config(tmp_path / "c.yaml", dataset, tmp_path / "r1")
    tiny_bench = ("--size", "16", "--features", "4", "--depth", "2", "--batch-size", "1", "--steps", "1")
    bad_config = [  # (override of c.yaml, expected key and message)
        ("seed=-1", "seed: must be in [0, 2**63)"),
        ("optim.lr=.inf", "optim.lr: expected a finite number, got inf"),  # trained NaN weights, exit 0
        ("augment.brightness=.inf", "augment.brightness: expected a finite number"),  # crashed mid-run
        ("augment.flip=1.5", "augment.flip: must be in [0, 1]"),
        ("augment.rot90=-0.1", "augment.rot90: must be in [0, 1]"),
        ("augment.intensity=2", "augment.intensity: must be in [0, 1]"),
        ("augment.contrast=1", "augment.contrast: must be in [0, 1)"),
        ("augment.brightness=-1", "augment.brightness: must be >= 0"),
        ("augment.noise_std=-1", "augment.noise_std: must be >= 0"),
        ("loss.alpha=-1", "loss.alpha: must be >= 0"),
        ("loss.gamma=-1", "loss.gamma: must be >= 0"),
        ("loss.dice_weight=-1", "loss.dice_weight: must be >= 0"),
        ("loss.dice_eps=0", "loss.dice_eps: must be > 0"),
        ("loss.ignore_index=4", "loss.ignore_index: must be 255"),
        ("data.val_max_samples=-1", "data.val_max_samples: must be >= 0"),
        ("run.threads=-1", "run.threads: must be >= 0"),
        ("run.device=gpu", "run.device: unknown device 'gpu'"),
        (f"run.out={tmp_path / 'file'}", f"run.out: {tmp_path / 'file'} exists and is not a folder"),
        (f"run.out={tmp_path / 'file' / 'run'}", f"run.out: {tmp_path / 'file'} exists and is not a folder"),
        (f"data.val=[{tiny}]", f"data.val: {tiny}: field-of-view margin 2.0 leaves no field of view"),
        (f"data.val=[{nucleus_ds}]", f"data.val: {nucleus_ds}: labels[0]: label value 4 >= model.out_channels=4"),
        # every window twice per epoch, or a volume counted twice in the score
        (f"data.train=[{dataset},{dataset}]", f"data.train: {dataset} is listed twice; list each dataset once"),
        (f"data.val=[{dataset},{dataset}]", f"data.val: {dataset} is listed twice; list each dataset once"),
    ]
    cases = [(("fit", c, "--set", over), needle) for over, needle in bad_config] + [
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.tif", "--post-scale", "0"),
         "--post-scale: must be > 0"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "f.zarr"), "f.zarr: exists and is not a folder"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "file" / "o.tif"), "file is not a folder"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.tif", "--device", "gpu"),
         "--device: unknown device 'gpu'"),
        (("evaluate", ckpt, dataset, "-o", tmp_path / "ev", "--device", "gpu"), "--device: unknown device"),
        (("evaluate", ckpt, nucleus_ds, "-o", tmp_path / "ev"), "labels[0]: label value 4 >= model.out_channels=4"),
        (("evaluate", ckpt, tiny, "-o", tmp_path / "ev"),
         f"data.fov_margin: {tiny}: field-of-view margin 2.0 leaves no field of view"),
        (("baseline", dataset, "-o", tmp_path / "bl", "--fov-margin", "20"),
         f"--fov-margin: {dataset}: field-of-view margin 20.0 leaves no field of view"),
        (("baseline", dataset, "-o", tmp_path / "bl", "--fov-margin", "-1"),
         "--fov-margin: must be a finite number >= 0, got -1.0"),
        (("baseline", dataset, "-o", tmp_path / "bl", "--fov-margin", "nan"),  # was exit 1, an IndexError
         "--fov-margin: must be a finite number >= 0, got nan"),
        (("predict", tmp_path, tmp_path / "flat.tif", "-o", tmp_path / "o.tif"),
         f"{tmp_path}: is a directory, not a checkpoint file"),
        (("evaluate", tmp_path, dataset), f"{tmp_path}: is a directory, not a checkpoint file"),
        (("bench", *tiny_bench, "--device", "gpu"), "--device: unknown device"),
        (("bench", *tiny_bench, "--window", "6"), "--window: must be odd"),
        # the paper's GPU step on CPU was left to the kernel's OOM killer (exit 137, no word)
        (("bench", "--size", "4096", "--batch-size", "64", "--device", "cpu"),
         "--batch-size: a CPU step of this model on 64 x 7 x 4096² windows needs about"),
        (("fit", tmp_path / "missing.yaml"), "missing.yaml: config file not found"),
        (("fit", tmp_path), f"{tmp_path}: is a directory, not a config file"),
        (("fit", tmp_path / "bad.yaml"), "model.widht: unknown key"),
        (("fit", c, "--set", "optim.lr=fast"),
         "optim.lr: expected a number"),
        (("fit", write_config(tmp_path / "d.yaml", tmp_path / "nodata", tmp_path / "r2")),
         "nodata: not a simaq-factory dataset"),
        (("evaluate", tmp_path / "none.pt", dataset), "none.pt: checkpoint not found"),
        (("evaluate", ckpt, tmp_path / "nodata"), "nodata: not a simaq-factory dataset"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.tif"), "flat.tif: expected a 3D volume"),
        (("predict", ckpt, tmp_path / "nope.mrc", "-o", tmp_path / "o.tif"), "nope.mrc: file not found"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.png"), "o.png: unsupported output format"),
        (("predict", tmp_path / "bad.yaml", tmp_path / "flat.tif", "-o", tmp_path / "o.tif"),
         "bad.yaml: not a readable checkpoint (not a file torch.save wrote)"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.tif", "--tilt-axis", "3"), "--tilt-axis"),
        (("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.tif", "--tilt-axis", "1", "--beam-axis", "1"),
         "--beam-axis: expected one of [0, 2]"),
        (("fit", tmp_path / "c.yaml", "--bogus"), "No such option '--bogus'"),
    ]
    # checkpoints that do not fit their model name what is wrong: the missing weight, the bad key
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    torch.save(dict(ck, model={k: v for k, v in ck["model"].items() if k != "head.bias"}, ema=None),
               tmp_path / "w.pt")
    torch.save(dict(ck, config={**ck["config"], "model": {**ck["config"]["model"], "depth": 0}}), tmp_path / "c.pt")
    cases += [
        (("predict", tmp_path / "w.pt", tmp_path / "flat.tif", "-o", tmp_path / "o.tif"),
         'w.pt: checkpoint does not match its model (RuntimeError: Error(s) in loading state_dict for '
         'CenterSliceUNet: Missing key(s) in state_dict: "head.bias"'),
        (("predict", tmp_path / "c.pt", tmp_path / "flat.tif", "-o", tmp_path / "o.tif"),
         "c.pt: its config is invalid: model.depth: must be >= 1"),
    ]
    if not torch.cuda.is_available():
        cases.append((("predict", ckpt, tmp_path / "flat.tif", "-o", tmp_path / "o.tif", "--device", "cuda"),
                      "--device: 'cuda' requested but CUDA is not available here"))
    for args, needle in cases:
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert needle in r.output, (needle, r.output)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()
    assert not list(tmp_path.glob("o.*")) and not list(tmp_path.glob(".o.*"))
    assert not (tmp_path / "ev").exists() and not (tmp_path / "bl").exists()
    assert (tmp_path / "file").read_text() == (tmp_path / "f.zarr").read_text() == "x"


def test_shard_files_that_fail_their_checksums_are_not_read_as_data(trained, dataset, tmp_path):
    """A damaged shard file that still decodes (here: two valid shard files swapped) was read as
    data by evaluate and fit, exit 0, even in a frozen dataset; each shard file is now checked
    against its provenance record when first read."""
    damaged = tmp_path / "ds"
    shutil.copytree(dataset.with_name("ds-unfrozen"), damaged)
    a, b = (damaged / "dataset.zarr" / "recon" / "c" / str(k) / "0" / "0" / "0" for k in (0, 1))
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    ev = run("evaluate", trained / "run" / "last.pt", damaged, "-o", tmp_path / "ev")
    assert ev.exit_code == 1, ev.output
    assert f"{a} (shard 0, sample 0) does not match the checksum in its provenance record" in ev.output
    assert f"simaq-factory verify {damaged}" in ev.output
    cfg = write_config(tmp_path / "c.yaml", damaged, tmp_path / "run", max_steps=1)
    r = run("fit", cfg)
    assert r.exit_code == 1 and "does not match the checksum in its provenance record" in r.output, r.output
    assert run("evaluate", trained / "run" / "last.pt", dataset.with_name("ds-unfrozen"),
               "-o", tmp_path / "ev2").exit_code == 0  # the intact dataset reads


def test_each_shard_file_is_hashed_once_per_source_not_per_loader_worker(dataset, monkeypatch):
    """The checksum check hashed every recon shard again in each DataLoader worker, every epoch;
    it is done once when the source opens, and a worker's copy reads without hashing."""
    import pickle

    from simaq_factory.store import dataset as store_dataset
    from simaq_train.data.sources import FactorySource

    calls = []
    real = store_dataset.sha256_file
    monkeypatch.setattr(store_dataset, "sha256_file", lambda p: (calls.append(p), real(p))[1])
    # every open hashes (the digest cache would remember the files an earlier test's source hashed)
    monkeypatch.setenv(store_dataset.DIGEST_CACHE_ENV, "off")
    src = FactorySource(dataset, n_classes=4, fov_margin=2.0)
    n_shards = len(list((dataset / "provenance").glob("shard-*.json")))
    assert n_shards >= 2 and len(calls) == len(set(calls)) == 2 * n_shards  # labels and recon, once each
    worker = pickle.loads(pickle.dumps(src))
    worker.index()
    for v in range(len(worker)):
        worker.load(v)
    assert len(calls) == 2 * n_shards


def test_a_second_fit_on_a_run_in_training_is_refused(trained, dataset, tmp_path):
    """Two fits on one run.out (a rerun while the first still trains: both appended metrics and
    replaced last.pt through one temporary name) — the second is refused, naming the first."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(trained / "step4.pt", run_dir / "last.pt")
    before = (run_dir / "last.pt").read_bytes()
    cfg = write_config(tmp_path / "c.yaml", dataset, run_dir, max_steps=6)
    held = fit_mod.RunLock(run_dir)  # the first fit
    try:
        r = run("fit", cfg)
    finally:
        held.release()
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"another simaq-train fit (process {os.getpid()}) is training in it now" in r.output
    assert (run_dir / "last.pt").read_bytes() == before and not (run_dir / "metrics.jsonl").exists()
    assert run("fit", cfg).exit_code == 0  # once it has ended


def test_a_run_resumes_only_with_the_number_of_processes_that_trained_it(trained, dataset, tmp_path):
    """Each epoch's order and the global batch depend on the world size: a checkpoint of one
    process resumed by two was an internal ValueError mid-epoch, or silently another plan."""
    from simaq_train.config import load_config

    run_dir = tmp_path / "run"
    shutil.copytree(trained / "run", run_dir)
    cfg = load_config(write_config(tmp_path / "c.yaml", dataset, run_dir, max_steps=12))
    assert states(run_dir / "last.pt")["world_size"] == 1
    with pytest.raises(fit_mod.BadInput, match=r"trained by 1 process\(es\) and this fit has 2: .*resume with "
                       r"one process"):
        fit_mod.Trainer(cfg, fit_mod.Dist(0, 2, 0))
    assert fit_mod.RunLock(run_dir).release() is None  # the refused trainer let go of the run


def test_ranks_follow_their_launcher_also_when_it_is_pid_1(monkeypatch):
    """Under torchrun each rank asks for SIGTERM when its launcher dies, and checks that it has not
    died already: by a change of parent, not "parent is PID 1" (torchrun is PID 1 as a container's
    entrypoint, and every rank killed itself at start)."""
    import ctypes
    import signal

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    requests, kills = [], []

    class Libc:
        def prctl(self, *args):
            requests.append(args)
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc())
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(os, "getppid", lambda: 1)  # torchrun is PID 1
    fit_mod._die_with_launcher()
    assert requests == [(1, signal.SIGTERM, 0, 0, 0)] and kills == []
    parents = iter([4242, 1])  # the launcher died between the look and the request
    monkeypatch.setattr(os, "getppid", lambda: next(parents))
    fit_mod._die_with_launcher()
    assert kills == [(os.getpid(), signal.SIGTERM)]


@pytest.mark.parametrize("env,needle", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE: is 2 in the environment but RANK, MASTER_ADDR, MASTER_PORT are not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "but MASTER_PORT is not set: start distributed"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE: environment variable is 'two'"),
])
def test_a_stray_world_size_is_refused_before_any_rendezvous(dataset, tmp_path, monkeypatch, env, needle):
    """A WORLD_SIZE left from an outer job made a lone fit wait for peers that never come (2 h,
    deaf to SIGTERM) or fail with torch's ValueError, exit 1."""
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    r = run("fit", write_config(tmp_path / "c.yaml", dataset, tmp_path / "run", max_steps=1))
    assert r.exit_code == 2 and needle in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_distributed_fit_on_cpu_with_two_ranks(tmp_path):
    """torchrun with 2 ranks (gloo): every rank takes the same number of steps; rank 0 writes."""
    import math
    import os
    import subprocess
    import sys

    from simaq_train.config import load_config
    from simaq_train.data.build import build_stream, resolve_classes
    from simaq_train.testing import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "ds", n_samples=4, shape=(16, 32, 32), seed=3)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "seed": 1, "data": {"train": [str(ds)], "background_drop": 0.5, "fov_margin": 2.0},
        "model": {"init_features": 4, "depth": 2, "out_channels": 0},
        "optim": {"batch_size": 4, "accumulate": 2, "epochs": 2, "lr": 0.01},
        "run": {"out": str(tmp_path / "run"), "device": "cpu", "threads": 1, "log_every": 1, "progress": False}}))
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "simaq_train.cli", "fit", str(cfg_path)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = resolve_classes(load_config(cfg_path))
    st = build_stream(cfg, 0, 2)[0]
    want = sum(math.ceil(len(range(0, len(st.plan(e)), 2)) / 2) for e in range(2))
    # one stop line (rank 0's), not one per rank
    assert r.stdout.count(f"finished at epoch 2, step {want} (2 epoch(s) done) -> ") == 1, r.stdout
    ck = states(tmp_path / "run" / "last.pt")
    assert ck["step"] == want and ck["reader"] == {"epoch": 2, "position": 0}
    assert ck["world_size"] == 2
    # one process may not continue it: refused before any step, naming how to resume
    again = subprocess.run([sys.executable, "-m", "simaq_train", "fit", str(cfg_path), "--set", "optim.epochs=3"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 2 and "resume with torchrun --nproc_per_node=2" in again.stderr, again.stderr


def test_resume_loads_a_grad_scaler_state_only_where_it_applies():
    """A run started without fp16 scaling (CPU, AMP off, bf16) saves an empty scaler state, which an
    enabled scaler refuses: resuming such a run with fp16 on CUDA starts from a fresh scale."""
    from simaq_train.engine.fit import load_scaler_state

    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**10)
    load_scaler_state(enabled, torch.amp.GradScaler("cpu", enabled=False).state_dict())  # {}: no error
    assert enabled.get_scale() == 2.0**10
    donor = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**5)
    load_scaler_state(enabled, donor.state_dict())
    assert enabled.get_scale() == 2.0**5
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    load_scaler_state(disabled, donor.state_dict())  # ignored
    assert not disabled.is_enabled()


class _RunsCode:
    """Unpickling this calls os.system: what a crafted .pt does with weights_only=False."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    from simaq_factory.errors import BadInput
    from simaq_train.engine.parts import CHECKPOINT_FORMAT, load_checkpoint

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(BadInput, match=r"not a readable checkpoint \(it holds Python objects beyond tensors"):
        load_checkpoint(evil)
    assert not marker.exists()
    # a cut or empty file says so
    good = tmp_path / "good.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "w": torch.zeros(1000)}, good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(BadInput, match=r"cut\.pt: not a readable checkpoint \(truncated or damaged"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(BadInput, match=r"not a readable checkpoint \(empty file\)"):
        load_checkpoint(tmp_path / "empty.pt")


def test_bench_prints_its_figures_with_the_run_record():
    """``simaq-train bench``'s JSON line carries what every benchmark record does (the command, time,
    machine, software, parameters), as docs/performance.md says, besides its figures."""
    from click.testing import CliRunner

    from simaq_train.cli import cli

    args = ["bench", "--size", "16", "--features", "4", "--depth", "2", "--batch-size", "2", "--steps", "1",
            "--window", "3", "--device", "cpu"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["parameters"] == {"features": 4, "depth": 2, "size": 16, "window": 3, "batch_size": 2, "steps": 1,
                                 "amp": "auto", "device": "cpu"}
    assert rec["input"] == [2, 1, 3, 16, 16] and rec["seconds_per_step"] > 0 and rec["model_parameters"] > 0
    assert rec["gpu"] is None and rec["peak_memory_gib"] is None and rec["logical_cores"] >= 1
    assert rec["versions"]["torch"] and rec["timestamp_utc"].endswith("+00:00")
    # the machine state the benchmarks/ scripts record too (what moves the figures besides the code)
    assert set(rec["environment"]) == {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE"}
    assert all(key in rec for key in ("cpu_affinity", "load_average_start", "load_average_end",
                                      "transparent_hugepage"))


def test_benchmark_scripts_record_the_same_fields_as_simaq_train_bench():
    """One record for every benchmark: the benchmarks/ scripts' run record has the fields of
    ``simaq-train bench``'s (``versions.run_record``), plus the comparison libraries' versions."""
    import argparse
    import importlib.util

    from simaq_factory.versions import run_record

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "_common.py"
    spec = importlib.util.spec_from_file_location("bench_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    ours = common.run_record(argparse.Namespace(size=8), None, extra=1)
    theirs = run_record({"size": 8}, None, None)
    assert set(ours) == set(theirs) and ours["parameters"] == {"size": 8, "extra": 1}
    assert {"scikit-image", "astra-toolbox"} <= set(ours["versions"]) and set(theirs["versions"]) < set(ours["versions"])


def test_step_memory_estimate_grows_with_the_window_area_and_batch():
    from simaq_train.bench import step_bytes
    from simaq_train.model import ModelConfig

    cfg = ModelConfig(init_features=8, depth=3)
    small, big, batch = (step_bytes(cfg, window=7, size=s, batch_size=b) for s, b in ((64, 1), (128, 1), (64, 4)))
    weights = step_bytes(cfg, window=7, size=64, batch_size=0)
    assert weights > 0 and (big - weights) == pytest.approx(4 * (small - weights), rel=0.02)
    assert (batch - weights) == pytest.approx(4 * (small - weights), rel=1e-6)


@pytest.mark.parametrize("package,prog", [("simaq_factory", "simaq-factory"), ("simaq_train", "simaq-train")])
def test_python_dash_m_runs_each_tool(package, prog):
    """``python -m simaq_factory`` / ``python -m simaq_train``, as job scripts call tools."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", package, "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(f"{prog}, version "), r.stderr
