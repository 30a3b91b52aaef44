"""``simaq-train``: fit, evaluate, predict (and an intensity-threshold baseline).

Exit codes: 0 success, 1 runtime failure, 2 bad input (one line naming the file, key or flag).
Heavy imports happen inside the commands.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from simaq_factory.cli.progress import bar_line, drawn, end_line, install_end_bar_line
from simaq_factory.errors import PATH, OneLineGroup, handle_errors


class Bar:
    """Progress on stderr: a redrawn one-line bar on a terminal; otherwise (logs, pipes) a plain
    line at most every ``every_s`` seconds, and nothing at all when disabled. A terminal's bar line is
    ended by :meth:`done` (or by a log record / error message: :mod:`simaq_factory.cli.progress`),
    once, and only when one is drawn."""

    def __init__(self, enabled: bool, every_s: float = 30.0) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every_s = every_s
        self._last = -1e9

    def show(self, text: str, fraction: float | None = None) -> None:
        if not self.enabled:
            return
        if fraction is not None:
            n = int(round(20 * min(max(fraction, 0.0), 1.0)))
            text = f"[{'#' * n}{'.' * (20 - n)}] {text}"
        if self.tty:
            click.echo("\r" + text[:150].ljust(150), err=True, nl=False)
            drawn()
            return
        import time

        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            click.echo(text, err=True)

    def done(self) -> None:
        end_line()


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simaq-factory")
@click.option("-v", "--verbose", count=True, help="-v info, -vv debug (tracebacks)")
def cli(verbose: int) -> None:
    """Train, evaluate and apply the 3D→2D U-Net on simaq-factory datasets."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    install_end_bar_line()  # a log record printed while a bar is drawn starts a new line


@cli.command()
@click.argument("config", type=PATH)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key")
@handle_errors(resumes=True)
def fit(config: str, overrides: tuple[str, ...]) -> None:
    """Train the model described by CONFIG (resumes RUN/last.pt when present)."""
    from simaq_train.config import load_config
    from simaq_train.engine.fit import fit as run_fit

    cfg = load_config(config, overrides)
    bar = Bar(cfg.run.progress)

    def progress(rec: dict[str, Any]) -> None:
        if rec["kind"] == "train":
            bar.show(f"epoch {rec['epoch']} batch {rec['position']}/{rec['n_batches']} step {rec['step']} "
                     f"loss {rec['loss']:.4f} mIoU {rec['mean_iou'] or 0:.3f} "
                     f"{rec['samples_per_s']:.1f} samples/s {rec['elapsed_s']:.0f}s",
                     rec["position"] / max(rec["n_batches"], 1))
        else:
            bar.done()
            click.echo(f"validation after epoch {rec['epoch']} ({rec['volumes']} volume(s)): mean foreground IoU "
                       f"{rec['mean_iou_foreground'] or 0:.4f} (mean over volumes, as evaluate's headline; "
                       f"pooled {rec['pooled']['mean_iou_foreground'] or 0:.4f}); mean IoU per class: "
                       + " ".join(f"{k}={v:.3f}" for k, v in rec["iou"].items() if v is not None), err=True)

    try:
        with bar_line():
            res = run_fit(cfg, progress)
    except KeyboardInterrupt:
        bar.done()
        if not (Path(cfg.run.out) / "last.pt").is_file():  # nothing to resume from
            from simaq_factory.errors import fail

            fail("interrupted before the first checkpoint: nothing was saved to resume from; run the same command "
                 "again to start over", 130)
        raise
    bar.done()
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns here: one line, rank 0's
        click.echo(_fit_outcome(res, cfg.optim))


def _fit_outcome(res: Any, o: Any) -> str:
    """Where a fit ended, why, the checkpoint, and how to go on:
    ``stopped at epoch 0, step 5 (optim.max_steps=5 reached) -> RUN/last.pt; to continue: …``."""
    resumed = f"; resumed at step {res.start_step}" if res.start_step else ""
    where = f"at epoch {res.epoch}, step {res.step}"
    if res.finished:
        return f"finished {where} ({res.epoch} epoch(s) done{resumed}) -> {res.checkpoint}"
    if o.max_steps > 0 and res.step >= o.max_steps:
        return (f"stopped {where} (optim.max_steps={o.max_steps} reached{resumed}) -> {res.checkpoint}; "
                f"to continue: --set optim.max_steps={2 * o.max_steps}")
    if o.max_minutes > 0:
        return (f"stopped {where} (optim.max_minutes={o.max_minutes:g} of training used{resumed}) -> "
                f"{res.checkpoint}; to continue: run the same command again (another {o.max_minutes:g} min)")
    why = f" ({resumed[2:]})" if resumed else ""
    return f"stopped {where}{why} -> {res.checkpoint}; to continue: run the same command again"


@cli.command()
@click.argument("checkpoint", type=PATH)
@click.argument("dataset", type=PATH)
@click.option("-o", "--out", type=PATH, default=None,
              help="report folder  [default: <checkpoint folder>/eval-<dataset folder name>]")
@click.option("--ema/--no-ema", default=True, help="use the EMA weights (default) or the live ones")
@click.option("--max-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="score only the first N samples (0: every sample)")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="windows per forward pass")
@click.option("--postprocess/--raw", default=False,
              help="post-process predictions before scoring, as predict does, or score the raw "
                   "segmentation  [default: --raw]")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--axes", type=click.Choice(["all", "first"]), default="all",
              help="three-axis datasets: score every acquisition axis (a row per sample and axis; "
                   "default) or acquisition 0 only")
@click.option("--overwrite", is_flag=True, help="replace the report in an existing, non-empty OUT")
@handle_errors
def evaluate(checkpoint: str, dataset: str, out: str | None, ema: bool, max_samples: int,
             batch_size: int, postprocess: bool, device: str, axes: str, overwrite: bool) -> None:
    """IoU and Dice per class and per sample of CHECKPOINT on DATASET (JSON and a plot)."""
    # the paths first: torch (below) takes seconds to import
    out_dir = _report_dir(Path(out) if out else Path(checkpoint).parent / f"eval-{Path(dataset).resolve().name}",
                          dataset, overwrite, "evaluation")
    _check_checkpoint_path(checkpoint)
    from simaq_train.evaluate import evaluate_checkpoint, write_report

    bar = Bar(True)
    with bar_line():  # ended before an error / interrupt message too
        rep = evaluate_checkpoint(checkpoint, dataset, use_ema=ema, batch_size=batch_size,
                                  max_samples=max_samples, post=postprocess, device=device, axes=axes,
                                  progress=lambda i, n: bar.show(f"sample {i}/{n}", i / n))
    js, png = write_report(rep, out_dir, "evaluation")
    _print_summary(rep)
    click.echo(f"wrote {js} and {png}")


def _print_summary(rep: dict[str, Any]) -> None:
    per = " ".join(f"{k}={v['all']['mean']:.3f}" for k, v in rep["per_class"].items() if v["all"]["mean"] is not None)
    rows = f" ({rep['rows']} acquisitions)" if rep.get("rows", rep["samples"]) != rep["samples"] else ""
    click.echo(f"{rep['samples']} samples{rows}; mean IoU per class: {per}; "
               f"mean foreground IoU {rep['mean_iou_foreground'] or 0:.4f}")


@cli.command()
@click.argument("checkpoint", type=PATH)
@click.argument("tomogram", type=PATH)
@click.option("-o", "--out", required=True, type=PATH, help="output .tif, .mrc, .nrrd, .zarr or .npy")
@click.option("--ema/--no-ema", default=True, help="use the EMA weights (default) or the live ones")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="windows per forward pass")
@click.option("--edge", type=click.Choice(["reflect", "replicate"]), default=None,
              help="padding of the window at the first and last slices (default: as in training, "
                   "the checkpoint's data.edge_mode; skip: reflect)")
@click.option("--normalize/--no-normalize", default=True,
              help="map intensities as in training (default) or take TOMOGRAM as already normalised")
@click.option("--tilt-axis", type=click.IntRange(0, 2), default=0,
              help="array axis of TOMOGRAM that is the tilt axis (default 0)")
@click.option("--beam-axis", type=click.IntRange(0, 2), default=None,
              help="array axis along which the beam travelled at 0° tilt (default: the lower-numbered "
                   "of the other two); the network sees it along the rows, as in training")
@click.option("--postprocess/--raw", default=True,
              help="smoothing, hole filling, small-object removal (default) or the raw segmentation")
@click.option("--post-scale", type=float, default=None,
              help="scale of the reference's 512³ post-processing sizes (default: max(shape)/512)")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--overwrite", is_flag=True,
              help="replace an existing OUT file, or an OUT .zarr that predict wrote (never the input, "
                   "nor a folder holding anything else)")
@handle_errors
def predict(checkpoint: str, tomogram: str, out: str, ema: bool, batch_size: int, edge: str | None,
            normalize: bool, tilt_axis: int, beam_axis: int | None, postprocess: bool, post_scale: float | None,
            device: str, overwrite: bool) -> None:
    """Segment TOMOGRAM (TIFF, MRC, NRRD, NPY or Zarr) with CHECKPOINT into OUT (uint8 class ids;
    TIFF, MRC, NRRD, NPY or Zarr by suffix).

    OUT is 3D: singleton axes of TOMOGRAM (e.g. (1, 1, Z, Y, X)) are dropped, the rest keeps its
    shape and orientation."""
    from simaq_train.data.volumes import check_output_path

    # the paths first: torch (below) takes seconds to import
    check_output_path(out, overwrite=overwrite, source=tomogram)
    _check_checkpoint_path(checkpoint)
    if not Path(tomogram).exists():
        raise_bad(tomogram, "file not found")
    from simaq_train.inference import predict_tomogram

    bar = Bar(True)
    with bar_line():  # ended before an error / interrupt message too
        res = predict_tomogram(checkpoint, tomogram, out, use_ema=ema, batch_size=batch_size, edge_mode=edge,
                               post=postprocess, post_scale=post_scale, tilt_axis=tilt_axis,
                               beam_axis=beam_axis, normalize=normalize, device=device, overwrite=overwrite,
                               progress=lambda text, fraction: bar.show(f"{Path(tomogram).name}: {text}",
                                                                        fraction))
    counts = ", ".join(f"{n} {c}" for n, c in zip(res["class_names"], res["voxels_per_class"]))
    click.echo(f"wrote {res['output']} {'x'.join(map(str, res['shape']))} (z, y, x); voxels per class: {counts}")


@cli.command()
@click.argument("dataset", type=PATH)
@click.option("-o", "--out", type=PATH, required=True, help="report folder")
@click.option("--max-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="score only the first N samples (0: every sample)")
@click.option("--fov-margin", type=float, default=5.0, show_default=True,
              help="field-of-view margin in voxels, as the reader's data.fov_margin (simaq-factory "
                   "score defaults to 2)")
@click.option("--search-order/--physical-order", default=True,
              help="try all 24 mappings of intensity levels to classes and keep the best on DATASET "
                   "(an oracle choice, optimistic for the baseline; default) or only the physical order")
@click.option("--axes", type=click.Choice(["all", "first"]), default="all",
              help="three-axis datasets: score every acquisition axis (a row per sample and axis; "
                   "default) or acquisition 0 only")
@click.option("--overwrite", is_flag=True, help="replace the report in an existing, non-empty OUT")
@handle_errors
def baseline(dataset: str, out: str, max_samples: int, fov_margin: float, search_order: bool,
             axes: str, overwrite: bool) -> None:
    """Multi-Otsu intensity-threshold baseline on DATASET's normalised reconstructions."""
    out_dir = _report_dir(Path(out), dataset, overwrite, "baseline")
    from simaq_train.evaluate import otsu_baseline, write_report

    bar = Bar(True)
    with bar_line():  # ended before an error / interrupt message too
        rep = otsu_baseline(dataset, fov_margin=fov_margin, max_samples=max_samples, search_order=search_order,
                            axes=axes, progress=bar.show)
    js, png = write_report(rep, out_dir, "baseline")
    _print_summary(rep)
    phys = rep["physical_order"]
    click.echo(f"best baseline: {rep['best_variant']} with levels (dark to bright) -> "
               f"{', '.join(rep['best_order_names'])} (chosen on this data: optimistic for the baseline); "
               f"physical order: {phys['variant']} mean foreground IoU {phys['mean_iou_foreground'] or 0:.4f}")
    click.echo(f"wrote {js} and {png}")


@cli.command()
@click.option("--features", type=click.IntRange(min=1), default=64, show_default=True,
              help="model.init_features (paper 64)")
@click.option("--depth", type=click.IntRange(min=1), default=5, show_default=True, help="model.depth (paper 5)")
@click.option("--size", type=click.IntRange(min=16), default=512, show_default=True, help="in-plane size H = W")
@click.option("--window", type=click.IntRange(min=1), default=7, show_default=True,
              help="slices per input window (data.window)")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="windows per step")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True,
              help="timed steps (after 3 warm-up steps)")
@click.option("--amp", type=click.Choice(["auto", "off", "fp16", "bf16"]), default="auto", show_default=True,
              help="mixed precision (optim.amp): auto = fp16 on CUDA, off on CPU")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")
@handle_errors
def bench(features: int, depth: int, size: int, window: int, batch_size: int, steps: int, amp: str,
          device: str) -> None:
    """Time training steps (forward, Dice-Focal loss, backward, Adam) on random data; print JSON."""
    from simaq_factory.versions import load_average, run_record
    from simaq_train.bench import bench_train_step

    params = {"features": features, "depth": depth, "size": size, "window": window, "batch_size": batch_size,
              "steps": steps, "amp": amp, "device": device}
    load_at_start = load_average()
    res = bench_train_step(**params)
    click.echo(json.dumps({**res, **run_record(params, None if res["device"] == "cpu" else res["device"],
                                               load_at_start)}))


def _report_dir(out: Path, dataset: str, overwrite: bool, stem: str) -> Path:
    """Before any work (evaluate, baseline): ``out`` usable as the report folder, never an earlier
    report replaced without ``overwrite``, and ``dataset`` a simaq-factory dataset; BadInput else.

    ``stem`` names the command's report (``evaluation``, ``baseline``: ``STEM.json``, ``STEM_iou.png``,
    written by :func:`simaq_train.evaluate.write_report` under temporary names, the JSON last). What
    an interrupted run of the command left (its temporary files, which a SIGKILL does not remove, or
    the plot without the JSON) is no report: the folder is accepted and those temporary files are
    removed (was: refused as "not empty (an earlier report?)", so a killed run blocked its re-run)."""
    from simaq_factory.errors import check_output_dir

    out_dir = check_output_dir(out)
    entries = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    leftovers = [n for n in entries if _is_report_leftover(n, stem)]
    kept = [n for n in entries if n not in leftovers and n != f"{stem}_iou.png"]
    if kept and not overwrite:
        if f"{stem}.json" in kept:
            raise_bad(str(out_dir), f"exists and is not empty (it holds an earlier report, {stem}.json); "
                      "use --overwrite to replace it")
        raise_bad(str(out_dir), f"exists and is not empty (it holds {kept[0]}{', …' if len(kept) > 1 else ''}, "
                  "which is no report of this command); use --overwrite to write into it, or choose another -o")
    if not (Path(dataset) / "dataset.zarr").is_dir():
        raise_bad(dataset, "not a simaq-factory dataset (no dataset.zarr)")
    for name in leftovers:  # an interrupted run's temporary files; this run writes its own
        (out_dir / name).unlink(missing_ok=True)
    return out_dir


def _is_report_leftover(name: str, stem: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`simaq_train.evaluate.write_report` for ``stem``
    (``.STEM.tmp-PID.json``, ``.STEM_iou.tmp-PID.png``)."""
    for prefix, suffix in ((f".{stem}.tmp-", ".json"), (f".{stem}_iou.tmp-", ".png")):
        if name.startswith(prefix) and name.endswith(suffix) and name[len(prefix):-len(suffix)].isdigit():
            return True
    return False


def _check_checkpoint_path(checkpoint: str) -> None:
    p = Path(checkpoint)
    if p.is_dir():
        raise_bad(checkpoint, "is a directory, not a checkpoint file (a run folder holds it as last.pt)")
    if not p.is_file():
        raise_bad(checkpoint, "checkpoint not found")


def raise_bad(what: str, message: str) -> None:
    from simaq_factory.errors import BadInput

    raise BadInput(what, message)


def main() -> None:
    cli(prog_name="simaq-train")


if __name__ == "__main__":
    main()
