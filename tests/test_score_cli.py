"""``baseline`` and ``score`` end to end on a tiny dataset built through the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
import torch
import zarr
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.score.baseline import available_methods, run_baseline

import small_banks  # tests/small_banks.py

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "recipes" / "smoke.yaml")
TINY = ["--set", "dataset.shape=[32,32,32]", "--set", "dataset.chunk_z=4", "--set", "phantom.scale=0.15",
        "--set", "dataset.n_samples=3", "--set", "dataset.samples_per_shard=2", *small_banks.ARGS]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args))


def assert_bad_input(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    r = invoke("build", SMOKE, "-o", str(root / "ds"), "--cluster", "inline", *TINY)
    assert r.exit_code == 0, r.output
    for m in ("fbp-ramlak", "fbp-hamming"):
        r = invoke("baseline", str(root / "ds"), "--method", m, "-o", str(root / f"{m}.zarr"))
        assert r.exit_code == 0, r.output
    return root


def test_fbp_hamming_baseline_reproduces_the_dataset_recon(work):
    # the dataset's recon is hamming FBP of the same stored sinogram with the same nominal angles
    ds = zarr.open_group(work / "ds" / "dataset.zarr", mode="r")
    pred = zarr.open_group(work / "fbp-hamming.zarr", mode="r")
    assert pred["recon"].shape == ds["recon"].shape and pred["recon"].dtype == np.float32
    np.testing.assert_allclose(pred["recon"][...], ds["recon"][...], atol=1e-5)
    attrs = dict(pred.attrs)
    assert attrs["method"] == "fbp-hamming" and attrs["status"] == "complete"
    assert attrs["source"]["recipe_id"] == dict(ds.attrs)["recipe_id"]
    assert attrs["reconstruction"]["filter"] == "hamming"
    assert not list(work.glob(".*.partial"))


def test_score_two_baselines_writes_json_csv_html(work):
    out = work / "report"
    r = invoke("score", "--gt", str(work / "ds"), "--pred", str(work / "fbp-ramlak.zarr"),
               "--pred", str(work / "fbp-hamming.zarr"), "-o", str(out))
    assert r.exit_code == 0, r.output
    payload = json.loads((out / "scores.json").read_text())
    assert list(payload["predictions"]) == ["fbp-ramlak", "fbp-hamming"]
    p = payload["predictions"]["fbp-hamming"]
    assert p["n_scored"] == 3 and p["overall"]["ssim"]["n"] == 3
    assert sum(g["n_samples"] for g in p["by_n_cells"].values()) == 3
    assert sum(g["n_samples"] for g in p["by_span_deg"].values()) == 3
    assert f"[{'#' * 30}] 6/6 scored" in r.output  # the build's progress bar
    o = p["overall"]  # the console summary: fixed decimals per metric
    assert (f"fbp-hamming: 3 sample(s), median nrmse {o['nrmse']['median']:.3f}, psnr {o['psnr']['median']:.2f}, "
            f"ssim {o['ssim']['median']:.3f}") in r.output
    comp = payload["comparison"]["metrics"]
    assert set(comp) == {"nrmse", "psnr", "ssim"} and comp["ssim"]["best"] in payload["predictions"]
    assert "fbp-hamming" in comp["nrmse"]["vs_reference"]
    lines = (out / "samples.csv").read_text().splitlines()
    assert len(lines) == 1 + 6 and lines[0].startswith("pred,index,n_cells,span_deg,")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "fbp-ramlak" in html


def test_score_folders_of_tiff_and_mrc(work):
    ds = zarr.open_group(work / "ds" / "dataset.zarr", mode="r")
    folder = work / "files"
    (folder / "labels").mkdir(parents=True)
    (folder / "recon").mkdir()
    for i in (0, 2):  # a subset of the samples
        tifffile.imwrite(folder / "labels" / f"{i:06d}.tif", np.where(ds["labels"][i] == 255, 0, ds["labels"][i]))
        with mrcfile.new(folder / "recon" / f"sample_{i}.mrc") as mrc:
            mrc.set_data(ds["phantom"][i])
    out = work / "files-report"
    r = invoke("score", "--gt", str(work / "ds"), "--pred", str(folder), "-o", str(out), "--fit", "none")
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "scores.json").read_text())["samples"]
    assert [row["index"] for row in rows] == [0, 2]
    for row in rows:
        assert row["nrmse"] == 0.0 and row["ssim"] == pytest.approx(1.0) and row["psnr"] == "inf"
        assert row["iou_cell"] == 1.0 and row["dice_background"] == 1.0 and "iou_nucleus" not in row
    r = invoke("score", "--gt", str(work / "ds"), "--pred", str(folder), "-o", str(out), "--only", "labels",
               "--overwrite")  # the report of the previous run is replaced only when asked to
    assert r.exit_code == 0 and "nrmse" not in json.loads((out / "scores.json").read_text())["samples"][0]


def test_baseline_resumes_after_interruption(work, tmp_path):
    pred = tmp_path / "ramlak.zarr"
    calls = []

    def stop_after_one(done: int, total: int) -> None:
        calls.append(done)
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_baseline(work / "ds", pred, "fbp-ramlak", progress=stop_after_one)
    assert not pred.exists() and (tmp_path / ".ramlak.zarr.partial").is_dir()
    report = run_baseline(work / "ds", pred, "fbp-ramlak", device=torch.device("cpu"))
    assert (report["built"], report["skipped"]) == (2, 1)
    fresh = zarr.open_group(work / "fbp-ramlak.zarr", mode="r")["recon"][...]
    assert np.array_equal(zarr.open_group(pred, mode="r")["recon"][...], fresh)
    again = invoke("baseline", str(work / "ds"), "--method", "fbp-ramlak", "-o", str(pred))
    assert again.exit_code == 0 and "0 sample(s), 3 already done" in again.output


def test_bad_inputs_exit_2_with_one_line(work, tmp_path):
    ds = str(work / "ds")
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(tmp_path / "nope")), "nope", "not found")
    assert_bad_input(invoke("score", "--gt", str(tmp_path / "nods"), "--pred", str(work / "fbp-ramlak.zarr")),
                     "no such dataset")
    (tmp_path / "afile").write_text("x")
    for cmd in (["score", "--gt", str(tmp_path / "afile"), "--pred", str(work / "fbp-ramlak.zarr")],
                ["baseline", str(tmp_path / "afile"), "--method", "sirt", "-o", str(tmp_path / "b.zarr")]):
        assert_bad_input(invoke(*cmd), "afile", "is a file, not a dataset directory")
    wrong = zarr.open_group(tmp_path / "wrong.zarr", mode="w", zarr_format=3)
    wrong.create_array("recon", shape=(3, 32, 32, 31), dtype="float32")
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(tmp_path / "wrong.zarr")), "recon", "shape")
    (tmp_path / "tifs").mkdir()
    tifffile.imwrite(tmp_path / "tifs" / "7.tif", np.zeros((32, 32, 32), np.float32))
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(tmp_path / "tifs")), "7.tif", "outside")
    assert_bad_input(invoke("baseline", ds, "--method", "art", "-o", str(tmp_path / "x.zarr")),
                     "--method", "fbp-ramlak")
    assert_bad_input(invoke("baseline", ds, "--method", "fbp-ramlak", "-o", str(work / "fbp-hamming.zarr")),
                     "already exists")
    nosino = tmp_path / "nosino"
    shutil.copytree(work / "ds", nosino)
    shutil.rmtree(nosino / "dataset.zarr" / "sinogram")
    assert_bad_input(invoke("baseline", str(nosino), "--method", "fbp-ramlak", "-o", str(tmp_path / "y.zarr")),
                     "sinogram")
    assert not (tmp_path / "y.zarr").exists() and not (tmp_path / "x.zarr").exists()
    (tmp_path / "afile").write_text("x")
    scored: list[str] = []  # the report path is checked before any sample is scored
    with pytest.MonkeyPatch.context() as mp:
        import simaq_factory.score.run as run_mod

        mp.setattr(run_mod, "score", lambda *a, **k: scored.append("scored"))
        assert_bad_input(invoke("score", "--gt", ds, "--pred", str(work / "fbp-ramlak.zarr"), "-o",
                                str(tmp_path / "afile")), "afile", "not a directory")
    assert scored == []


def test_available_methods_follow_the_reconstruction():
    methods = available_methods()
    assert methods[:2] == ["fbp-ramlak", "fbp-hamming"]
    assert set(methods) <= {"fbp-ramlak", "fbp-hamming", "sirt", "cgls"}


def test_predictions_are_checked_against_the_dataset_and_named_files_only(work, tmp_path):
    import shutil

    ds = zarr.open_group(work / "ds" / "dataset.zarr", mode="r")
    other = tmp_path / "other.zarr"  # a baseline of another dataset
    shutil.copytree(work / "fbp-hamming.zarr", other)
    g = zarr.open_group(other, mode="r+")
    g.attrs["source"] = {**dict(g.attrs["source"]), "recipe_id": "0" * 64}
    assert_bad_input(invoke("score", "--gt", str(work / "ds"), "--pred", str(other), "-o", str(tmp_path / "r")),
                     "another dataset")
    assert not (tmp_path / "r").exists()
    named = tmp_path / "named"
    named.mkdir()
    tifffile.imwrite(named / "recon_v2.tif", ds["phantom"][0])  # not a sample index: refused, not sample 2
    assert_bad_input(invoke("score", "--gt", str(work / "ds"), "--pred", str(named), "-o", str(tmp_path / "r")),
                     "recon_v2.tif", "sample index")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "0.tif", ds["phantom"][0])
    tifffile.imwrite(mixed / "1.tif", np.asarray(ds["labels"][1]))
    assert_bad_input(invoke("score", "--gt", str(work / "ds"), "--pred", str(mixed), "-o", str(tmp_path / "r")),
                     "mixes integer")
    bytes8 = tmp_path / "bytes8"  # 8-bit reconstructions: scored as such when the user says so
    bytes8.mkdir()
    ph = np.asarray(ds["phantom"][0])
    tifffile.imwrite(bytes8 / "0.tif", np.round(255 * ph / ph.max()).astype(np.uint8))
    r = invoke("score", "--gt", str(work / "ds"), "--pred", str(bytes8), "-o", str(tmp_path / "r8"), "--only", "recon")
    assert r.exit_code == 0, r.output
    row = json.loads((tmp_path / "r8" / "scores.json").read_text())["samples"][0]
    assert row["ssim"] > 0.9 and "iou_cell" not in row
    signed = tmp_path / "signed"  # int16 reconstructions (IMOD mode 1): taken for labels, and said so
    signed.mkdir()
    tifffile.imwrite(signed / "0.tif", (np.round(1000 * ph / ph.max()) - 500).astype(np.int16))
    assert_bad_input(invoke("score", "--gt", str(work / "ds"), "--pred", str(signed), "-o", str(tmp_path / "r")),
                     "labels must be integers >= 0, got -500",
                     "taken for segmentations because they hold integers: for reconstructions pass --only recon")
    masks = tmp_path / "masks"  # a boolean mask is meant as a segmentation, and is not one
    masks.mkdir()
    tifffile.imwrite(masks / "0.tif", np.asarray(ds["labels"][0]) > 0)
    assert_bad_input(invoke("score", "--gt", str(work / "ds"), "--pred", str(masks), "-o", str(tmp_path / "r")),
                     "0.tif: a boolean mask, not class ids")
    assert not (tmp_path / "r").exists()


def test_duplicate_names_and_wide_span_bins(work, tmp_path):
    pred = str(work / "fbp-hamming.zarr")
    r = invoke("score", "--gt", str(work / "ds"), "--pred", pred, "--pred", pred, "-o", str(tmp_path / "r"),
               "--span-bin", "400")
    assert r.exit_code == 0, r.output
    out = json.loads((tmp_path / "r" / "scores.json").read_text())
    assert sorted(out["predictions"]) == ["fbp-hamming", "fbp-hamming-2"]
    assert all(k.startswith("-") for k in out["predictions"]["fbp-hamming"]["by_span_deg"])


def test_recon_predictions_must_be_real_numbers(work, tmp_path):
    ds = zarr.open_group(work / "ds" / "dataset.zarr", mode="r")
    recon = np.asarray(ds["recon"][...])
    for name, data in (("complex", recon.astype(np.complex64)), ("bool", recon > recon.mean())):
        g = zarr.open_group(tmp_path / f"{name}.zarr", mode="w")
        g.create_array("recon", data=data)
        r = invoke("score", "--gt", str(work / "ds"), "--pred", str(tmp_path / f"{name}.zarr"),
                   "-o", str(tmp_path / f"r-{name}"))
        assert_bad_input(r, f"{name}.zarr/recon", "real numbers", str(data.dtype))
        assert not (tmp_path / f"r-{name}").exists()


def test_unusable_report_and_baseline_paths_are_refused_before_any_work(work, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_bad_input(invoke("score", "--gt", str(work / "ds"), "--pred", str(work / "fbp-ramlak.zarr"),
                            "-o", "/proc/simaq-scores"), "/proc/simaq-scores", "cannot create the output directory")
    assert_bad_input(invoke("baseline", str(work / "ds"), "--method", "fbp-ramlak", "-o",
                            str(tmp_path / "afile" / "b.zarr")), "afile is not a directory")
    if "sirt" in available_methods():
        assert_bad_input(invoke("baseline", str(work / "ds"), "--method", "sirt", "--iterations", "-1", "-o",
                                str(tmp_path / "s.zarr")), "--iterations")
    assert not list(tmp_path.glob(".*partial")) and (tmp_path / "afile").read_text() == "x"


def test_an_interrupted_report_leaves_no_scores_json(work, tmp_path, monkeypatch):
    import simaq_factory.score.report as report_mod

    def dies(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - killed while drawing the figures
        raise KeyboardInterrupt

    out = tmp_path / "rep"
    args = ("score", "--gt", str(work / "ds"), "-o", str(out))
    assert invoke(*args, "--pred", str(work / "fbp-hamming.zarr")).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(report_mod, "render_report", dies)
    r = invoke(*args, "--pred", str(work / "fbp-ramlak.zarr"), "--overwrite")
    assert r.exit_code == 130
    # rendered before anything is written: the earlier report is left whole, not mixed with this one
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    out2 = tmp_path / "rep2"
    r = invoke("score", "--gt", str(work / "ds"), "--pred", str(work / "fbp-ramlak.zarr"), "-o", str(out2))
    assert r.exit_code == 130
    assert not (out2 / "scores.json").exists()  # written last, whole: its presence means a finished report
    assert [p.name for p in out2.iterdir() if p.name.startswith(".")] == []
    # killed after some files (a SIGKILL leaves its temporary file too): the same command completes it
    monkeypatch.undo()
    again = ("score", "--gt", str(work / "ds"), "--pred", str(work / "fbp-ramlak.zarr"), "-o", str(out2))
    assert invoke(*again).exit_code == 0
    (out2 / "scores.json").unlink()
    (out2 / ".report.html.tmp-99999").write_text("half")
    r = invoke(*again)
    assert r.exit_code == 0, r.output  # was "already holds a score report; use --overwrite"
    assert (out2 / "scores.json").is_file() and not list(out2.glob(".*"))
    assert_bad_input(invoke(*again), "already holds a score report; use --overwrite")  # a finished one


def test_external_prediction_mistakes_are_named(work, tmp_path, caplog, monkeypatch):
    """From an audit scoring outside software's outputs: each of these was silent or a traceback."""
    import tifffile

    ds = str(work / "ds")
    recon = zarr.open_group(work / "fbp-hamming.zarr", mode="r")["recon"][...]
    # a non-finite --span-bin, and a margin that leaves no field of view (were: exit 1, empty medians)
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(work / "fbp-hamming.zarr"), "--span-bin", "inf"),
                     "--span-bin", "finite")
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(work / "fbp-hamming.zarr"), "--fov-margin", "15.3"),
                     "--fov-margin", "leaves no voxel")
    # a Zarr whose recon is a group (an OME-Zarr export is one; was an AttributeError)
    g = zarr.open_group(tmp_path / "grp.zarr", mode="w")
    g.create_group("recon")
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(tmp_path / "grp.zarr")), "recon", "is a Zarr group")
    # a broken link among the files (was skipped: one sample fewer, exit 0)
    links = tmp_path / "links"
    links.mkdir()
    tifffile.imwrite(links / "0.tif", recon[0], photometric="minisblack")
    (links / "1.tif").symlink_to(tmp_path / "gone.tif")
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(links)), "1.tif", "broken symbolic link")
    # volumes beside recon/ (were ignored)
    mixed = tmp_path / "mixed"
    (mixed / "recon").mkdir(parents=True)
    tifffile.imwrite(mixed / "recon" / "0.tif", recon[0], photometric="minisblack")
    tifffile.imwrite(mixed / "1.tif", recon[1], photometric="minisblack")
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(mixed)), "1.tif", "move it into recon/ or labels/")
    # a Zarr sample never written reads as the fill value: scored, with a warning naming it
    part = zarr.open_group(tmp_path / "part.zarr", mode="w")
    arr = part.create_array("recon", shape=recon.shape, dtype=recon.dtype, chunks=(1, *recon.shape[1:]))
    arr[0] = recon[0]
    r = invoke("score", "--gt", ds, "--pred", str(tmp_path / "part.zarr"), "-o", str(tmp_path / "rp"))
    assert r.exit_code == 0, r.output
    assert "part: 2 sample(s) hold a constant reconstruction (1, 2)" in caplog.text
    # a damaged TIFF: our one line, without tifffile's own ERROR line before it
    cut = tmp_path / "cut"
    cut.mkdir()
    tifffile.imwrite(tmp_path / "whole.tif", recon[0], photometric="minisblack")
    (cut / "0.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:5000])
    caplog.clear()
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(cut)), "0.tif", "cannot read")
    assert not [rec for rec in caplog.records if rec.name == "tifffile"]
    # --pred . is named after the folder (was an empty name and a report folder "-scores")
    (links / "1.tif").unlink()
    monkeypatch.chdir(links)
    r = invoke("score", "--gt", ds, "--pred", ".", "-o", str(tmp_path / "dot"))
    assert r.exit_code == 0, r.output
    assert list(json.loads((tmp_path / "dot" / "scores.json").read_text())["predictions"]) == ["links"]


def test_exported_files_score_as_what_their_names_say(work, tmp_path, caplog):
    """export --format mrc names its files sample_000007_recon.mrc / _labels.mrc: score reads such a
    folder as reconstructions and segmentations (the exported labels are the ground truth: IoU 1)."""
    ds = str(work / "ds")
    exp = tmp_path / "exp"
    assert invoke("export", ds, "--format", "mrc", "-o", str(exp), "--arrays", "recon,labels").exit_code == 0
    r = invoke("score", "--gt", ds, "--pred", str(exp), "-o", str(tmp_path / "rep"))
    assert r.exit_code == 0, r.output
    p = json.loads((tmp_path / "rep" / "scores.json").read_text())["predictions"]["exp"]
    assert sorted(p["kinds"]) == ["labels", "recon"] and p["n_scored"] == 3
    assert p["overall"]["mean_iou"]["median"] == 1.0
    r = invoke("score", "--gt", ds, "--pred", str(exp), "--only", "labels", "-o", str(tmp_path / "rep2"))
    assert r.exit_code == 0 and json.loads((tmp_path / "rep2" / "scores.json").read_text())[
        "predictions"]["exp"]["kinds"] == ["labels"]
    (exp / "0.mrc").write_bytes((exp / "sample_000000_recon.mrc").read_bytes())
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(exp)), "mixes files named by index only")
    # 8-bit reconstructions in a flat folder are integers, so segmentations: scored, with a warning
    import tifffile

    recon = zarr.open_group(work / "ds" / "dataset.zarr", mode="r")["recon"][...]
    u8 = tmp_path / "u8"
    u8.mkdir()
    for i in range(3):
        v = recon[i]
        tifffile.imwrite(u8 / f"{i}.tif", np.round(254 * (v - v.min()) / (v.max() - v.min())).astype(np.uint8),
                         photometric="minisblack")
    r = invoke("score", "--gt", ds, "--pred", str(u8), "-o", str(tmp_path / "rep3"))
    assert r.exit_code == 0, r.output
    assert "u8: 3 segmentation(s) hold ids beyond the dataset's classes 0..3" in caplog.text
    assert "pass --only recon" in caplog.text


def test_only_scores_one_kind_without_checking_the_other_and_odd_fits_are_named(work, tmp_path, caplog):
    """--only recon read and refused the prediction's labels too (a three-axis dataset, whose own
    labels are (N, Z, Y, X), could never be a prediction); a reconstruction the affine fit reduces to
    its mean (scale 0: uncorrelated, or anti-correlated as SIRT under the ice slab) scores as a blank
    volume would, now with a warning; export's per-axis file names are named as such."""
    ds = str(work / "ds")
    phantom = zarr.open_group(work / "ds" / "dataset.zarr", mode="r")["phantom"][...]
    z = zarr.open_group(tmp_path / "rl.zarr", mode="w")
    z.create_array("recon", data=-phantom)  # anti-correlated: fit scale 0
    z.create_array("labels", data=np.zeros(phantom.shape, np.float32))  # not a segmentation
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(tmp_path / "rl.zarr")),
                     "labels must be integers, got float32 (or score its recon alone: --only recon)")
    r = invoke("score", "--gt", ds, "--pred", str(tmp_path / "rl.zarr"), "--only", "recon", "-o", str(tmp_path / "r"))
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "r" / "scores.json").read_text())["samples"]
    assert {row["fit_scale"] for row in rows} == {0.0}
    assert "rl: 3 sample(s) are uncorrelated or anti-correlated with the phantom" in caplog.text
    only_labels = invoke("score", "--gt", ds, "--pred", str(tmp_path / "rl.zarr"), "--only", "labels")
    assert_bad_input(only_labels, "labels must be integers, got float32")
    assert "--only recon" not in only_labels.output
    axes = tmp_path / "axes"
    axes.mkdir()
    tifffile.imwrite(axes / "sample_000000_recon_axis1.tif", phantom[0])
    assert_bad_input(invoke("score", "--gt", ds, "--pred", str(axes)),
                     "is one acquisition axis of export's three-axis output")


def test_report_plots_say_how_many_infinite_values_they_cannot_draw():
    from simaq_factory.score.report import _title

    rows = [{"pred": "a", "psnr": math.inf}, {"pred": "a", "psnr": 12.0}, {"pred": "b", "psnr": math.inf}]
    assert _title(rows, ["a", "b"], "psnr") == "psnr\n(2 infinite, not drawn)"
    assert _title(rows, ["a"], "psnr") == "psnr\n(1 infinite, not drawn)"
    assert _title(rows, ["a", "b"], "nrmse") == "nrmse"
