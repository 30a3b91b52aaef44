"""``simaq-factory score`` and ``simaq-factory baseline``: the benchmark harness (docs/benchmarking.md).

Registered on the main group with ``main.add_command(score)`` and ``main.add_command(baseline)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from simaq_factory.cli.progress import bar_line, drawn, end_line
from simaq_factory.errors import PATH, check_output_dir, handle_errors

__all__ = ["baseline", "score"]


def _progress(label: str):  # type: ignore[no-untyped-def]
    """The build's progress bar (``[####....] done/total label``): in place on a terminal, else a
    line every tenth. On a terminal the line stays open until the last step (or
    :func:`~simaq_factory.cli.progress.end_line`)."""
    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        filled = int(30 * done / max(total, 1))
        line = f"[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {label}"
        if tty:
            click.echo("\r" + line.ljust(70), nl=False, err=True)
            drawn()
            if done == total:
                end_line()
        elif done == total or done % max(1, total // 10) == 0:
            click.echo(line, err=True)

    return show


@click.command()
@click.option("--gt", "gt", required=True, type=PATH, help="Dataset directory (simaq-factory build -o).")
@click.option("--pred", "preds", required=True, multiple=True, type=PATH,
              help="Prediction: a Zarr with 'recon' and/or 'labels' (N, Z, Y, X), or (N, 3, Z, Y, X) for "
                   "three-axis datasets, or a folder of TIFF/MRC volumes named by sample index. Repeat to "
                   "compare; the first is the reference.")
@click.option("-o", "--out", "report_dir", default=None, type=PATH,
              help="Report directory [default: <first PRED>-scores next to it]; an existing, non-empty "
                   "one is refused unless --overwrite.")
@click.option("--only", type=click.Choice(["auto", "recon", "labels"]), default="auto", show_default=True,
              help="Score only reconstructions or only segmentations.")
@click.option("--fit", type=click.Choice(["affine", "none"]), default="affine", show_default=True,
              help="Map each reconstruction by least-squares a*pred+b onto the phantom first (affine), "
                   "or score raw values (none).")
@click.option("--fov-margin", "fov_margin", type=float, default=2.0, show_default=True,
              help="Score reconstructions and segmentations inside the disk of radius n//2 - this "
                   "(voxels) about the tilt axis (labels outside count as ignored); 2 is the projector's "
                   "input support, larger values also drop FBP's edge artifacts. simaq-train evaluate "
                   "and baseline default to 5 (data.fov_margin): pass 5 to compare with them.")
@click.option("--span-bin", "span_bin", type=float, default=10.0, show_default=True,
              help="Width (degrees) of the tilt-span bins of the breakdown.")
@click.option("--overwrite", is_flag=True,
              help="Replace the report in an existing report directory (one that holds only a "
                   "report of score: scores.json, samples.csv, report.html, fig-*.png).")
@handle_errors
def score(gt: str, preds: tuple[str, ...], report_dir: str | None, only: str, fit: str,
          span_bin: float, fov_margin: float, overwrite: bool) -> None:
    """Score reconstructions (NRMSE, PSNR, SSIM) and segmentations (IoU, Dice) against ground truth.

    Writes scores.json, samples.csv and report.html into the report directory.
    """
    from simaq_factory.score.run import check_report_dir, write_outputs
    from simaq_factory.score.run import score as run_score

    paths = [Path(p) for p in preds]
    first = paths[0].resolve()  # "." or "..": no name of its own; the report goes beside the folder
    out = Path(report_dir) if report_dir else first.parent / f"{first.name.removesuffix('.zarr')}-scores"
    check_output_dir(out)  # a directory, writable (or creatable), before scoring, not after
    check_report_dir(out, overwrite)  # never an earlier report (unless --overwrite) or others' files
    with bar_line():  # ended before an error / interrupt message too
        result = run_score(Path(gt), paths, only=only, fit=fit, span_bin_deg=span_bin,
                           fov_margin=fov_margin, progress=_progress("scored"))
    written = write_outputs(result, out)
    for name, p in result.payload["predictions"].items():
        summary = p["overall"]
        # fixed decimals, so rows compare by eye (PSNR in dB to 0.01; infinite PSNR prints "inf")
        digits = {"nrmse": 3, "psnr": 2, "ssim": 3, "mean_iou": 3}
        parts = [f"{m} {summary[m]['median']:.{d}f}" for m, d in digits.items()
                 if m in summary and summary[m]["median"] is not None]
        unit = "acquisition(s) (sample, axis)" if len(result.payload["ground_truth"]["tilt_axes"]) > 1 else "sample(s)"
        click.echo(f"{name}: {p['n_scored']} {unit}, median " + ", ".join(parts))
    click.echo(f"wrote {written['json']}, {written['csv'].name}, {written['html'].name} (+ fig-*.png)")


@click.command()
@click.argument("gt", type=PATH)
@click.option("--method", required=True, metavar="NAME",
              help="fbp-ramlak or fbp-hamming (filtered back-projection with that filter), sirt or "
                   "cgls (iterative; see --iterations, --nonneg). Any of them works on any dataset that "
                   "stores its sinogram and angles.")
@click.option("-o", "--out", "pred", required=True, type=PATH, help="Output Zarr (the prediction).")
@click.option("--iterations", type=int, default=None, help="Iterations of sirt/cgls (default: theirs).")
@click.option("--nonneg/--no-nonneg", default=None,
              help="sirt/cgls: clamp to >= 0 [default: theirs; sirt yes, cgls no].")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@handle_errors(resumes=True)
def baseline(gt: str, method: str, pred: str, iterations: int | None, nonneg: bool | None,
             device: str) -> None:
    """Reconstruct every sample of dataset GT from its stored sinogram and angles only."""
    from simaq_factory.score.inputs import open_ground_truth

    # the paths first, before torch is imported (seconds): a mistyped one is answered at once
    open_ground_truth(Path(gt))
    out = Path(pred)  # built next to itself (.PRED.partial): its folder must be writable, before any work
    check_output_dir(out.parent if str(out.parent) else Path("."), str(out))

    from simaq_factory.device import resolve_device
    from simaq_factory.score.baseline import run_baseline

    dev = resolve_device(device, "--device")
    with bar_line():  # ended before an error / interrupt message too
        report = run_baseline(Path(gt), Path(pred), method, iterations=iterations, nonneg=nonneg, device=dev,
                              progress=_progress(method))
    click.echo(f"{method}: reconstructed {report['built']} sample(s), {report['skipped']} already done, "
               f"in {report['seconds']:.1f} s -> {report['path']}")
