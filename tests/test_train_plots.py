"""metrics.png: validation lines of different validation sets are separate curves."""

from __future__ import annotations

import json

from simaq_train.plots import metrics_figure, plot_metrics


def _train(step):
    return {"kind": "train", "step": step, "epoch": 0, "loss": 1.0 / step, "mean_iou": 0.1 * step}


def _val(step, datasets, cap=None, axes=("z",), iou=0.5):
    return {"kind": "val", "step": step, "epoch": 0, "datasets": datasets, "max_samples": cap,
            "axes": list(axes), "mean_iou_foreground": iou}


def _val_lines(fig):
    ax = fig.axes[1]
    return {line.get_label(): [int(x) for x in line.get_xdata()] for line in ax.get_lines()
            if line.get_label().startswith(("val", "validation"))}


def test_one_validation_set_is_one_curve():
    recs = [_train(1), _val(1, {"/d/a": "h1"}), _train(2), _val(2, {"/d/a": "h1"})]
    assert _val_lines(metrics_figure(recs)) == {"validation (mean over volumes)": [1, 2]}


def test_validation_sets_changed_at_resumes_are_separate_curves():
    recs = [_train(1), _val(1, {"/d/a": "h1"}), _val(2, {"/d/a": "h1"}),
            {"kind": "resume", "step": 2, "epoch": 1},
            _val(3, {"/d/b": "h2"}), _val(4, {"/d/b": "h2"}),
            {"kind": "resume", "step": 4, "epoch": 2},
            _val(5, {"/d/b": "h2"}, cap=4)]
    fig = metrics_figure(recs)
    assert _val_lines(fig) == {"val: a; all samples": [1, 2], "val: b; all samples": [3, 4],
                               "val: b; max 4 samples": [5]}
    resumed = [line for line in fig.axes[1].get_lines() if line.get_linestyle() == ":"]
    assert sorted(int(line.get_xdata()[0]) for line in resumed) == [2, 4]


def test_rebuilt_dataset_under_the_same_name_is_its_own_curve():
    recs = [_val(1, {"/d/a": "h1"}), _val(2, {"/d/a": "h2"})]
    assert _val_lines(metrics_figure(recs)) == {"val: a (set 1)": [1], "val: a (set 2)": [2]}


def test_plot_metrics_writes_a_png_and_skips_empty_logs(tmp_path):
    log = tmp_path / "metrics.jsonl"
    assert plot_metrics(log, tmp_path / "m.png") is None  # no log yet
    log.write_text(json.dumps({"kind": "resume", "step": 0, "epoch": 0}) + "\n")
    assert plot_metrics(log, tmp_path / "m.png") is None and not (tmp_path / "m.png").exists()
    log.write_text("".join(json.dumps(r) + "\n" for r in [_train(1), _val(1, {"/d/a": "h"})]))
    assert plot_metrics(log, tmp_path / "m.png") == tmp_path / "m.png"
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
