"""``simaq-factory``: a thin click layer over library functions.

Exit codes: 0 success, 1 runtime failure, 2 bad input (one line naming the field, file or flag).
Heavy imports (torch, dask) happen inside the commands, so ``--help`` and errors are fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import click

from simaq_factory.cli.progress import (
    PhaseBar,
    bar_line,
    drawn,
    end_line,
    install_console_filter,
    install_end_bar_line,
)
from simaq_factory.errors import PATH, BadInput, OneLineGroup, handle_errors
from simaq_factory.orchestrate.logs import NotFileOnly
from simaq_factory.recipe.fields import RecipeError
from simaq_factory.tomo.config import PROJECTOR_BACKENDS


def _load(recipe_path: str, overrides: tuple[str, ...], *, require_fields: bool = False) -> tuple[Any, str]:
    from simaq_factory.recipe.io import load_recipe

    if not recipe_path.strip():  # Path("") is ".", a directory
        raise BadInput("RECIPE", "empty path; give the recipe file, e.g. recipes/smoke.yaml")
    path = Path(recipe_path)
    recipe = load_recipe(path, list(overrides), require_fields=require_fields)
    return recipe, path.read_text()


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="simaq-factory")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Simulated soft X-ray tomography datasets (SimAQ): phantoms, limited-angle acquisition, FBP."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # log files in OUT/logs still receive INFO
    install_console_filter(NotFileOnly)  # a failed shard's traceback: OUT/logs; the driver says it in one line
    install_end_bar_line()  # a log record printed while the build's bar is drawn starts a new line
    if verbose < 2:
        # Dask logs every connection at INFO; read by dask's config when distributed is imported
        # (here and in spawned workers), so set it before any import of distributed
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        # a Ctrl-C during a wait on shard futures leaves Dask's waiting task to fail when they are
        # released: asyncio would print its traceback after the one-line interrupt message
        from simaq_factory.orchestrate.logs import quiet_abandoned_gathers

        quiet_abandoned_gathers()


SET_HELP = "Override a recipe field, e.g. --set dataset.n_samples=8 (repeatable)."


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: recipe id, resolved recipe, counts, array and bank sizes.")
@handle_errors
def validate(recipe: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check RECIPE; print the resolved recipe, its id, counts and estimated output size."""
    from simaq_factory.acquisition.angles import a_max_for
    from simaq_factory.artifacts.banks import bank_shape, bank_specs
    from simaq_factory.recipe.io import recipe_id, recipe_to_json
    from simaq_factory.seeding import check_first_layout
    from simaq_factory.store.layout import array_specs

    rec, _ = _load(recipe, overrides, require_fields=not overrides)  # what build accepts, no more
    check_first_layout(rec)  # as build does: cells that cannot be laid out are refused here too
    specs = array_specs(rec, a_max_for(rec))
    n_shards = -(-rec.dataset.n_samples // rec.dataset.samples_per_shard)
    banks = {name: bank_shape(b) for name, b in bank_specs(rec.artifacts, tuple(rec.dataset.shape), rec.seed).items()}
    total = sum(s.nbytes for s in specs.values()) + sum(4 * math.prod(shape) for shape in banks.values())
    if as_json:
        click.echo(json.dumps({
            "recipe_id": recipe_id(rec), "resolved": recipe_to_json(rec), "n_samples": rec.dataset.n_samples,
            "n_shards": n_shards, "samples_per_shard": rec.dataset.samples_per_shard,
            "arrays": {s.name: {"dtype": s.dtype, "shape": list(s.shape), "bytes": s.nbytes} for s in specs.values()},
            "banks": {name: {"dtype": "float32", "shape": list(shape), "bytes": 4 * math.prod(shape)}
                      for name, shape in banks.items()},
            "estimated_bytes": total}, indent=2, sort_keys=True))
        return
    click.echo(json.dumps(recipe_to_json(rec), indent=2, sort_keys=True))
    click.echo(f"recipe id: {recipe_id(rec)}")
    click.echo(f"samples: {rec.dataset.n_samples}   shards: {n_shards}   "
               f"samples per shard: {rec.dataset.samples_per_shard}")
    for s in specs.values():
        click.echo(f"  {s.name:9s} {s.dtype:8s} {tuple(s.shape)}  {_human_bytes(s.nbytes)}")
    for name, shape in banks.items():
        click.echo(f"  banks/{name:12s} float32 {shape}  {_human_bytes(4 * math.prod(shape))}  (once per dataset)")
    click.echo(f"estimated output: {_human_bytes(total)} uncompressed")


def _template_help() -> str:
    from simaq_factory.recipe.template import TEMPLATES

    return "Ready recipe to start from: " + "; ".join(f"{k} ({v})" for k, v in TEMPLATES.items()) + "."


@main.command()
@click.argument("path", type=PATH)
@click.option("--template", default="reference", show_default=True, metavar="NAME", help=_template_help())
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@handle_errors
def init(path: str, template: str, force: bool) -> None:
    """Write an annotated recipe to PATH ('-': stdout): every field with its value, meaning and bounds."""
    from simaq_factory.recipe.template import annotated_recipe

    text = annotated_recipe(template)
    if path == "-":
        click.echo(text, nl=False)
        return
    if not path.strip():  # Path("") is ".", a directory
        raise BadInput("PATH", "empty path; give the recipe file to write, e.g. my-recipe.yaml")
    dest = Path(path)
    if dest.is_dir():
        raise BadInput(path, "is a directory; give the recipe file to write, e.g. my-recipe.yaml")
    if dest.exists() and not force:
        raise BadInput(path, "exists; pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise BadInput(path, f"directory {dest.parent} does not exist")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, dest)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise BadInput(path, f"cannot write: {err.strerror}") from None
    click.echo(f"wrote {dest} (template {template}); check it with: simaq-factory validate {dest}")


@main.command()
@click.argument("recipe")
@click.option("-o", "--out", required=True, type=PATH, help="Output directory.")
@click.option("--scheduler", default=None, metavar="ADDR", help="Use a running Dask scheduler.")
@click.option("--cluster", type=click.Choice(["local", "inline", "slurm"]), default=None,
              help="local (the default): embedded LocalCluster; inline: this process, no Dask; "
                   "slurm: dask-jobqueue SLURMCluster, one worker per job, from execution.slurm "
                   "(needs the [slurm] extra and sbatch). Not with --scheduler.")
@click.option("--workers", type=int, default=None,
              help="LocalCluster workers, or SLURM jobs with --cluster slurm (execution.workers).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto (execution.device).")
@click.option("--projector", type=click.Choice(PROJECTOR_BACKENDS), default=None,
              help="Projector backend: torch (index tables), triton (GPU kernels) or auto (triton on CUDA "
                   "where it passes its self-check) (execution.projector).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@handle_errors(resumes=True)
def build(recipe: str, out: str, scheduler: str | None, cluster: str | None, workers: int | None,
          device: str | None, projector: str | None, overrides: tuple[str, ...]) -> None:
    """Render the dataset of RECIPE into OUT (resumes an interrupted build)."""
    if scheduler is not None and not scheduler.strip():  # an unset $DASK_ADDR: not a local build
        raise BadInput("--scheduler", "empty address; give the scheduler's, e.g. tcp://HOST:8786")
    if scheduler is not None and cluster is not None:
        raise BadInput("--scheduler", f"cannot be combined with --cluster {cluster}: the running "
                                      "scheduler's workers build the dataset; give one of the two")
    if workers is not None and (scheduler is not None or cluster == "inline"):
        raise BadInput("--workers", "has no effect with " + (
            "--scheduler (the running scheduler's workers do the work)" if scheduler is not None
            else "--cluster inline (one process, no workers)"))
    cluster = cluster or "local"
    extra = list(overrides)
    # a flag's value is checked as its recipe field; a refusal names the flag the user typed
    flags = {}
    if workers is not None:
        extra.append(f"execution.workers={workers}")
        flags["execution.workers"] = "--workers"
    if device is not None:
        extra.append(f"execution.device={json.dumps(device)}")
        flags["execution.device"] = "--device"
    if projector is not None:
        extra.append(f"execution.projector={projector}")
        flags["execution.projector"] = "--projector"
    with _as_flags(flags):
        _build(recipe, out, scheduler, cluster, overrides, extra)


@contextlib.contextmanager
def _as_flags(flags: dict[str, str]) -> Iterator[None]:
    """Re-raise a RecipeError about a field that a flag set (``flags``: field → flag) as the flag's."""
    try:
        yield
    except RecipeError as err:
        if err.path in flags:
            raise BadInput(flags[err.path], err.message) from None
        raise


def _build(recipe: str, out: str, scheduler: str | None, cluster: str, overrides: tuple[str, ...],
           extra: list[str]) -> None:
    # a bad recipe is refused before torch is imported; so is an empty file, unless --set gives fields
    rec, text = _load(recipe, tuple(extra), require_fields=not overrides)
    from simaq_factory.orchestrate.driver import build as run_build

    if extra:  # OUT/recipe.yaml keeps the file verbatim and says what the command line changed
        text = text.rstrip("\n") + "\n\n# applied on top of this file by `simaq-factory build` (the result is " \
            "recipe.resolved.json):\n" + "".join(f"#   --set {e}\n" for e in extra)
    progress = _Progress()

    def on_cluster(desc: str, dashboard: str | None) -> None:
        end_line()
        click.echo(f"cluster: {desc}" + (f"; dashboard {dashboard}" if dashboard else ""), err=True)

    def on_phase(message: str) -> None:
        end_line()
        click.echo(message, err=True)

    with bar_line():  # ended before the summary, or before the error / interrupt message
        report = run_build(rec, Path(out), recipe_text=text, scheduler=scheduler, cluster=cluster,
                           progress=progress, on_cluster=on_cluster, on_phase=on_phase)
    if report.frozen:
        click.echo(f"{out}: complete and frozen ({report.n_shards} shard(s)); nothing to do "
                   f"(`simaq-factory verify {out}` checks it)")
        return
    click.echo(
        f"wrote {report.built} shard(s), skipped {report.skipped} already done, "
        f"{report.n_shards} total, in {report.seconds:.1f} s on {report.device or 'auto'} -> "
        f"{report.out / 'dataset.zarr'}"
    )


class _Progress:
    """A one-line progress bar on stderr (a line per shard when stderr is not a terminal); its line
    is ended by :func:`simaq_factory.cli.progress.end_line`."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int, summary: dict[str, Any] | None) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        extra = f" shard {summary['shard']} {summary['seconds']:.1f}s" if summary else " (failed)"
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}{extra}"
        if self.tty:
            click.echo("\r" + line.ljust(70), nl=False, err=True)
            drawn()
        else:
            click.echo(line, err=True)


@main.command()
@click.argument("out", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON (for scripts and schedulers).")
@handle_errors
def status(out: str, as_json: bool) -> None:
    """Done, pending and damaged shards of the dataset at OUT, damaged metadata files and noise banks.

    'card status' is what the dataset card records (written by build and freeze); 'verdict' is
    computed now from the files: complete, incomplete (shards pending) or damaged (a lost or
    unreadable recipe.resolved.json too: build with the original recipe rewrites it). A build or
    freeze running on this machine is named ('writer'): until it ends, pending shards are its work.
    On a frozen dataset, the files SHA256SUMS lists are hashed by `verify`, not here.
    """
    from simaq_factory.store.inspect import dataset_status

    with bar_line():
        st = dataset_status(Path(out), progress=PhaseBar("status"))
    if as_json:
        click.echo(json.dumps({**st, "problems": [{"shard": s, "reason": r} for s, r in st["problems"]]},
                              indent=2, sort_keys=True))
        return
    click.echo(f"recipe id: {st['recipe_id']}")
    click.echo(f"card status: {st['card_status']}")
    if st["writer_pid"] is not None:
        click.echo(f"writer: process {st['writer_pid']} (a build or freeze) is writing it now")
    click.echo(f"verdict: {st['verdict']}")
    if st["n_shards"] is None:
        click.echo("shards: not checked (no recipe to check them against)")
    else:
        click.echo(f"shards: {st['done']} done, {st['pending']} pending, {st['damaged']} damaged "
                   f"of {st['n_shards']}")
    click.echo("metadata: " + (f"{st['metadata_damaged']} file(s) damaged" if st["metadata_damaged"] else "ok"))
    banks = st["banks_damaged"]
    unchecked = "unreadable card" if st["card_status"] == "unreadable" else "no recipe"
    click.echo("noise banks: " + (f"not checked ({unchecked})" if banks is None
                                  else "pending (the build stopped before making them)" if st["banks_pending"]
                                  else f"{banks} damaged" if banks else "ok"))
    if st["card_status"] == "frozen":
        click.echo("sealed files: not hashed here; `simaq-factory verify` checks every file SHA256SUMS lists")
    for s, reason in st["problems"]:
        click.echo(f"  shard {s}: {reason}")
    for problem in st["dataset_problems"]:
        click.echo(f"  problem: {problem}")
    for note in st["notes"]:
        click.echo(f"  note: {note}")


@main.command()
@click.argument("out", type=PATH)
@click.option("--index", type=int, default=None, help="Also print this sample's parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole dataset card (and sample record) as JSON.")
@handle_errors
def info(out: str, index: int | None, as_json: bool) -> None:
    """Summarise the dataset card (and one sample's provenance record); --json prints them whole."""
    from simaq_factory.store.inspect import dataset_info, dataset_specs, info_lines, open_dataset_recipe

    record = dataset_info(Path(out), index)
    if as_json:
        click.echo(json.dumps(record, indent=2, sort_keys=True))
        return
    recipe, _ = open_dataset_recipe(Path(out))
    for line in info_lines(Path(out), record, dataset_specs(recipe)):
        click.echo(line)


@main.command()
@click.argument("out", type=PATH)
@click.option("--deep", is_flag=True, help="Also decode every array and check label values and finiteness.")
@click.option("--regen", type=int, default=0, show_default=True, metavar="K",
              help="Re-render K samples here (all when K >= their count) and compare (phantom/labels/angles "
                   "bit-exact, sinogram and recon rel. L2 <= 1e-5).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON on stdout (the exit code and error line are the same).")
@handle_errors
def verify(out: str, deep: bool, regen: int, as_json: bool) -> None:
    """Check OUT (exit 1 when a problem is found): metadata files, shard checksums, provenance, noise banks.

    On a frozen dataset every file listed in SHA256SUMS is checked too, with or without --deep: each
    file is hashed, except data shard files, whose digest the shard check has just computed.
    """
    from simaq_factory.errors import BuildFailed
    from simaq_factory.store.layout import GROUP_NAME, PROVENANCE_DIR, SUMS
    from simaq_factory.store.outdir import writer_pid
    from simaq_factory.store.verify import verify_dataset

    if regen < 0:
        raise RecipeError("--regen", f"must be >= 0, got {regen}")
    if (Path(out) / GROUP_NAME).is_dir() and (writer := writer_pid(Path(out))) is not None:
        # its unbuilt shards and banks are work in progress, not problems; its shard files come and go
        busy = (f"{out}: process {writer} (a build or freeze) is writing it now: verify when it ends "
                f"(`simaq-factory status {out}` shows its progress)")
        if as_json:  # a report all the same: scripts parse stdout whatever the exit code
            click.echo(json.dumps({"ok": False, "frozen": None, "n_shards": None, "checked_samples": 0,
                                   "deep": deep, "regenerated": [], "problems": [busy], "problem_shards": [],
                                   "notes": [], "writer_pid": writer}, indent=2, sort_keys=True))
        raise BuildFailed(busy)
    with bar_line():
        report = verify_dataset(Path(out), deep=deep, regen=regen, progress=PhaseBar("verify"))
    writer = writer_pid(Path(out))
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "frozen": report.frozen, "n_shards": report.n_shards,
                               "checked_samples": report.checked_samples, "deep": deep,
                               "regenerated": report.regenerated, "problems": report.problems,
                               "problem_shards": report.problem_shards,
                               "notes": report.notes, "writer_pid": writer}, indent=2, sort_keys=True))
    else:
        for note in report.notes:
            click.echo(f"note: {note}")
        for problem in report.problems:
            click.echo(f"problem: {problem}")
    if not report.ok:
        if writer is not None:
            hint = f"process {writer} (a build or freeze) is writing it now: verify again when it ends"
        elif report.frozen and not (Path(out) / SUMS).is_file():
            hint = (f"its freeze was interrupted (SHA256SUMS, written last, is missing): run `simaq-factory freeze "
                    f"{out}` to complete it")
        elif report.frozen or (Path(out) / SUMS).is_file():  # sealed, even if its card is unreadable
            hint = "the dataset is frozen: restore it from a good copy"
        elif report.regen_failed_shards or report.deep_failed_shards:
            # their files pass their checksums: a build would skip them
            shards = sorted(set(report.regen_failed_shards) | set(report.deep_failed_shards))
            records = ", ".join(f"provenance/shard-{s:06d}.json" for s in shards)
            what = ("are not what this software renders from the recipe" if report.regen_failed_shards
                    else "hold values no build writes, though their files match their checksums")
            hint = (f"the stored samples {what}; if it is the software that built them, remove {records} "
                    "and run `simaq-factory build` with the same recipe to redo them")
        elif (records := Path(out) / PROVENANCE_DIR).exists() and not records.is_dir():
            hint = (f"{records} is a file where the folder of provenance records belongs: "
                    "move it away, then `simaq-factory build` with the same recipe rebuilds the shards")
        else:
            hint = "`simaq-factory build` with the same recipe repairs what is damaged or missing"
        raise BuildFailed(f"{len(report.problems)} problem(s) in {out}; {hint}")
    if as_json:
        return
    regen_txt = f", regenerated samples {report.regenerated}" if report.regenerated else ""
    click.echo(f"ok: {report.n_shards} shard(s), {report.checked_samples} sample(s) verified"
               f"{' (deep)' if deep else ''}{regen_txt}")


@main.command()
@click.argument("out", type=PATH)
@handle_errors(resumes=True)
def freeze(out: str) -> None:
    """Verify OUT, write manifest.jsonl, DATASET.md, previews and SHA256SUMS; refuse later writes.

    A file inside dataset.zarr/ or provenance/ that is none of the dataset's is refused (exit 2,
    naming it); other files at the top level (a README) are sealed with a warning.
    """
    from simaq_factory.store.freeze import freeze_dataset

    with bar_line():
        info = freeze_dataset(Path(out), progress=PhaseBar("freeze"))
    if info.get("already_frozen"):
        click.echo(f"{out}: already frozen ({info['files']} files listed in {Path(out) / 'SHA256SUMS'}); "
                   f"nothing to do (`simaq-factory verify {out}` checks them)")
        return
    click.echo(f"frozen: {info['samples']} samples, {info['files']} files listed in "
               f"{Path(out) / 'SHA256SUMS'}")


@main.command()
@click.argument("out", type=PATH)
@click.option("--index", type=int, default=0, show_default=True, help="Sample index.")
@click.option("-o", "--output", "png", required=True, type=PATH, help="PNG file to write.")
@handle_errors
def preview(out: str, index: int, png: str) -> None:
    """Orthogonal slices of phantom, labels, noisy, recon and a sinogram of one sample, as a PNG."""
    from simaq_factory.store.preview import render_preview

    path = render_preview(Path(out), index, Path(png))
    click.echo(f"wrote {path}")


@main.command()
@click.argument("out", type=PATH)
@click.option("--format", "fmt", type=click.Choice(["ome-zarr", "tiff", "mrc"]), required=True)
@click.option("-o", "--dest", required=True, type=PATH, help="Destination directory.")
@click.option("--index", "indices", type=int, multiple=True, help="Sample index (repeatable; default all).")
@click.option("--arrays", multiple=True, help="Arrays to export, comma-separated or the flag repeated "
              "(default recon,labels,phantom); sinogram (mrc, tiff): tilt series with .tlt angles.")
@click.option("--voxel-size-nm", type=float, default=None, help="Override the estimated voxel size.")
@click.option("--overwrite", is_flag=True, help="Replace existing files in the destination.")
@handle_errors(resumes=True)
def export(out: str, fmt: str, dest: str, indices: tuple[int, ...], arrays: tuple[str, ...],
           voxel_size_nm: float | None, overwrite: bool) -> None:
    """Export samples of OUT as OME-Zarr (napari), TIFF stacks (Fiji) or MRC (IMOD), and tilt series."""
    from simaq_factory.store.export import export_dataset

    if voxel_size_nm is not None and not (MIN_VOXEL_NM <= voxel_size_nm <= MAX_VOXEL_NM):
        raise RecipeError("--voxel-size-nm", f"must be a size in [{MIN_VOXEL_NM:g}, {MAX_VOXEL_NM:g}] nm, "
                          f"got {voxel_size_nm}")
    names = [n.strip() for a in arrays for n in a.split(",") if n.strip()] if arrays else None
    if arrays and not names:
        raise RecipeError("--arrays", f"empty (got {','.join(arrays)!r}); name arrays, e.g. recon,labels, or "
                          "leave the flag out for the default set")
    skipped: list[Path] = []
    with bar_line():
        written = export_dataset(Path(out), Path(dest), fmt=fmt, indices=list(indices), arrays=names,
                                 voxel_nm=voxel_size_nm, overwrite=overwrite, skipped=skipped,
                                 progress=PhaseBar("export"))
    done = f", skipped {len(skipped)} already exported (an earlier run of this export)" if skipped else ""
    click.echo(f"wrote {len(written)} file(s) to {dest}{done}")


#: The --voxel-size-nm export accepts: 1 pm to 1 mm; beyond either is a unit mistake, not a voxel size
#: (and 1e-40 nm was a ValueError from TIFF's resolution rational, 0 in an MRC header).
MIN_VOXEL_NM, MAX_VOXEL_NM = 1e-3, 1e6


def _register_benchmark_commands() -> None:
    from simaq_factory.cli.score import baseline, score

    main.add_command(score)
    main.add_command(baseline)


if __name__ == "simaq_factory.cli.main":
    _register_benchmark_commands()
elif __name__ == "__main__":  # pragma: no cover
    # ``python -m simaq_factory.cli.main``: run the importable module's group, which registers every
    # command (registering in ``__main__`` — or in ``__mp_main__``, as spawned Dask workers re-import
    # it — would import cli.score, which imports the importable module: a cycle)
    from simaq_factory.cli.main import main as _cli

    _cli()
