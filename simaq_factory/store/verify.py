"""``verify``: metadata, checksums, noise-bank hashes, provenance, a deep read, regeneration of
samples, and on a frozen dataset its ``SHA256SUMS``.

Every verification checks that the group's and every array's ``zarr.json`` read and match the
recipe's layout (an array's whole document as build writes it, codecs included), that every shard file matches the sha256 in its provenance record, and that every
noise bank matches the hash in the dataset card. ``deep`` also decodes every array and checks label
values and finiteness; ``regen`` re-renders samples with the dataset's stored noise banks (so it
needs nothing but the dataset) and compares them with the stored ones (phantom, labels and angles
bit for bit; noisy, sinogram and recon on the device type that built them); a stored sample it
cannot decode is a problem, as in ``deep``. A lost ``recipe.resolved.json`` is a problem too: the
other checks then run against ``recipe.yaml`` when it hashes to the card's recipe id, else not.

On a frozen dataset every file listed in ``SHA256SUMS`` is checked on every verification, with or
without ``deep``: a missing file or a digest that differs is a problem. Every file but the data
shard files is hashed; a data shard file's digest is the one the shard check has just computed
(it matched the provenance record), so the bulk data is read once, not twice.

A verification never writes. It returns a list of problems, each naming the shard, sample or
array at fault; the CLI exits 1 when the list is not empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from simaq_factory.labels import Label
from simaq_factory.orchestrate.logs import LOG_DIR
from simaq_factory.store.banks import bank_problems, load_banks
from simaq_factory.store.dataset import (
    RECORD_DIGEST,
    Progress,
    read_card,
    read_provenance,
    sha256_files,
    shard_states,
)
from simaq_factory.store.inspect import (
    dataset_recipe_or_damage,
    dataset_specs,
    error_line,
    group_metadata_problem,
    metadata_problems,
    open_dataset_recipe,
)
from simaq_factory.store.layout import GROUP_NAME, SUMS, ArraySpec, samples_text, shard_ranges
from simaq_factory.store.outdir import LOCK
from simaq_factory.versions import cpu_kernels, describe_software, software_versions

log = logging.getLogger(__name__)

RECORD_KEYS = ("index", "seed", "phantom_spec", "artifacts", "angles", "sinogram_artifacts",
               "n_cells", "timings_s")
SHARD_KEYS = ("recipe_id", "shard", "samples", "checksums", "device", "versions", "sample_records")
RECON_RTOL = 1e-5  # relative L2 between a stored and a regenerated recon on the same device type
# ... sinogram (the projections, NaN rows past the sample's tilt series aside). Measured on CPU
# (32³ smoke samples): 0 on the same kernels, 4-5e-8 between torch's AVX-512 and scalar kernels
# (recon 2e-7 there); a sinogram of another seed or sample differs by 1e-1 and more
SINOGRAM_RTOL = 1e-5
NOISY_RTOL = 1e-6  # ... noisy volume, across software versions or CPU kernels (rounding only)
VALID_LABELS = {int(v) for v in Label}
#: The phases :func:`verify_dataset` reports beside its shard checksums (and the sealed files' hashes).
DEEP_PHASE, REGEN_PHASE = "decoding shards", "re-rendering samples"


@dataclass
class VerifyReport:
    n_shards: int | None  # None: not checked (the recipe is lost)
    checked_samples: int = 0
    regenerated: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    frozen: bool = False
    #: shards that are not done: missing, damaged or unrecorded files (their reason is in ``problems``)
    unfinished_shards: list[int] = field(default_factory=list)
    #: shards whose provenance record lacks or misstates what it must hold
    record_failed_shards: list[int] = field(default_factory=list)
    #: shards of the regenerated samples that did not match (their files pass their checksums)
    regen_failed_shards: list[int] = field(default_factory=list)
    #: shards whose decoded values fail --deep's checks (their files pass their checksums too)
    deep_failed_shards: list[int] = field(default_factory=list)
    #: relative path -> sha256 of every data shard file the shard check matched (freeze reuses them)
    digests: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def problem_shards(self) -> list[int]:
        """Every shard a problem names: not done, with a faulty record, failing --deep or --regen
        (ascending)."""
        return sorted({*self.unfinished_shards, *self.record_failed_shards, *self.deep_failed_shards,
                       *self.regen_failed_shards})

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_provenance(prov: dict[str, Any], shard: int, samples: range, report: VerifyReport) -> None:
    missing = [k for k in SHARD_KEYS if k not in prov]
    if missing:
        report.problems.append(f"shard {shard}: provenance lacks {', '.join(missing)}")
        return
    indices = [r.get("index") for r in prov["sample_records"]]
    if indices != list(samples):
        report.problems.append(f"shard {shard}: provenance covers samples {indices}, expected "
                               f"{list(samples)}")
    for rec in prov["sample_records"]:
        lacking = [k for k in RECORD_KEYS if k not in rec]
        if lacking:
            report.problems.append(f"sample {rec.get('index')}: provenance lacks {', '.join(lacking)}")


def _open_arrays(out: Path, names: list[str], report: VerifyReport) -> dict[str, Any]:
    """The arrays ``names``, each opened once for the whole deep read (a problem when one cannot be)."""
    arrays = {}
    for name in names:
        try:
            arrays[name] = zarr.open_array(out / GROUP_NAME / name, mode="r")
        except Exception as err:  # noqa: BLE001 - any failure to open is a finding
            report.problems.append(f"{name}: unreadable ({err})")
    return arrays


def _deep_check(arrays: dict[str, Any], samples: range, report: VerifyReport,
                on_volume: Callable[[str, int, np.ndarray], None] | None = None) -> None:
    """Decode every sample of ``samples`` in every array, one sample at a time (a shard of 512³
    samples would be gigabytes at once), check label values and finiteness, and hand each decoded
    volume to ``on_volume(name, index, data)``."""
    span = f"samples {samples.start}-{samples.stop - 1}"
    for name, arr in arrays.items():
        bad: set[int] = set()
        finite = True
        for i in samples:
            try:
                data = arr[i]
            except Exception as err:  # noqa: BLE001 - any decode failure is a finding
                report.problems.append(f"{name} {span}: unreadable ({err})")
                break
            if name == "labels":
                bad |= set(np.unique(data).tolist()) - VALID_LABELS
            elif name in ("phantom", "noisy", "recon"):
                finite = finite and bool(np.isfinite(data).all())
            if on_volume is not None:  # outside the try: its own errors are not the data's
                on_volume(name, i, data)
        if bad:
            report.problems.append(f"labels {span}: values {sorted(bad)} outside the label set")
        if not finite:
            report.problems.append(f"{name} {span}: non-finite values")


def _stored(group: Any, name: str, index: int, report: VerifyReport) -> np.ndarray | None:
    """Sample ``index`` of the stored array ``name``, or None with a problem naming it when it
    cannot be decoded (metadata and checksums may both pass while the data are not Zarr's)."""
    try:
        return np.asarray(group[name][index])
    except Exception as err:  # noqa: BLE001 - any decode failure is a finding, as in --deep
        report.problems.append(f"sample {index}: stored {name} unreadable ({error_line(err)})")
        return None


def _padded(fresh: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """``fresh`` as a shard task stores it: in the leading corner of an array of the stored
    shape, the rest NaN (a tilt series shorter than the longest the recipe allows)."""
    full = np.full(stored.shape, np.nan, dtype=stored.dtype)
    full[tuple(slice(0, k) for k in fresh.shape)] = fresh
    return full


def _relative_l2(stored: np.ndarray, fresh: np.ndarray) -> float:
    """Relative L2 difference over the finite values of ``stored``; NaN when the non-finite
    values are not in the same places in both (NaN never passes a tolerance)."""
    a, b = stored.astype(np.float64), fresh.astype(np.float64)
    finite = np.isfinite(a)
    if not np.array_equal(finite, np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return float("nan")
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.linalg.norm(a[finite] - b[finite]) / max(np.linalg.norm(a[finite]), 1e-30))


def regenerate_and_compare(out: Path, recipe: Any, index: int, report: VerifyReport) -> None:
    """Re-render sample ``index`` here and compare with the stored arrays: phantom, labels and
    angles bit for bit; noisy, sinogram and recon on the same device type (noisy bit for bit,
    sinogram within ``SINOGRAM_RTOL``, recon within ``RECON_RTOL``). A stored sample that cannot
    be decoded is a problem naming it."""
    import torch

    from simaq_factory.device import resolve_device
    from simaq_factory.pipeline import render_sample
    from simaq_factory.tomo.projector import resolved_backend

    shard = index // recipe.dataset.samples_per_shard
    prov = read_provenance(out, shard) or {}
    built_on = str(prov.get("device", "cpu"))
    device = resolve_device("cuda" if built_on.startswith("cuda") and torch.cuda.is_available() else "cpu")
    # the projector that made the shard where it can run here (its self-check decides), else the tables
    built_projector = str(prov.get("projector") or "torch")
    backend = "auto" if built_projector.startswith("triton") and device.type == "cuda" else "torch"
    here_projector = resolved_backend(backend, device)
    recipe = replace(recipe, execution=replace(recipe.execution, projector=backend))
    arrays, record = render_sample(recipe, index, device, banks=load_banks(out, device))
    group = zarr.open_group(out / GROUP_NAME, mode="r")
    built_with = describe_software(prov.get("versions") or {})
    here_with = describe_software(software_versions())
    other_software = "" if built_with == here_with else f" (built with {built_with}, this is {here_with})"
    for name in ("phantom", "labels", "angles"):  # angles: drawn from the sample's seed, no kernel rounds them
        if name not in arrays or (stored := _stored(group, name, index, report)) is None:
            continue
        fresh = _padded(arrays[name], stored) if name == "angles" else arrays[name]
        if stored.tobytes() != fresh.tobytes():
            report.problems.append(f"sample {index}: regenerated {name} differs from the stored one"
                                   + other_software)
    stored_rec = next((r for r in prov.get("sample_records", []) if r.get("index") == index), None)
    if stored_rec is not None and stored_rec.get("phantom_spec") != record["phantom_spec"]:
        report.problems.append(f"sample {index}: regenerated phantom spec differs from provenance")
    if stored_rec is not None and stored_rec.get("artifacts") != record["artifacts"]:
        old_art, new_art = stored_rec.get("artifacts") or {}, record["artifacts"] or {}
        which = sorted(k for k in set(old_art) | set(new_art) if old_art.get(k) != new_art.get(k))
        report.problems.append(f"sample {index}: regenerated artifact parameters differ from provenance "
                               f"({', '.join(which) or 'their layout'})" + other_software)
    # CUDA's random kernels map elements to Philox streams by the GPU's multiprocessor count, so the
    # device noise (ice field, Poisson, detector) repeats only on the same device type and GPU model
    built_name = str(prov.get("device_name", ""))
    here_name = torch.cuda.get_device_name(device) if device.type == "cuda" else built_name
    projected = "sinogram and recon" if "sinogram" in arrays else "recon"
    if built_on.split(":")[0] != device.type or here_name != built_name:
        where = f"{built_on} ({built_name})" if device.type == "cuda" else built_on
        here = f"{device} ({here_name})" if device.type == "cuda" else str(device)
        report.notes.append(f"sample {index}: built on {where}, regenerated on {here}; {projected} not "
                            "compared (device noise generators differ)")
    else:
        if "noisy" in arrays and (stored := _stored(group, "noisy", index, report)) is not None:
            _compare_noisy(stored, arrays["noisy"], index, prov, other_software, report)
        if here_projector != built_projector:
            report.notes.append(f"sample {index}: projected with the {built_projector} projector, regenerated "
                                f"with {here_projector}; {projected} not compared (they round differently)")
            report.regenerated.append(index)
            return
        for name, rtol in (("sinogram", SINOGRAM_RTOL), ("recon", RECON_RTOL)):
            if name not in arrays or (stored := _stored(group, name, index, report)) is None:
                continue
            fresh = _padded(arrays[name], stored) if name == "sinogram" else arrays[name]
            err = _relative_l2(stored, fresh)
            if not err <= rtol:  # NaN (non-finite values where the other has none) is a difference too
                said = (f"relative L2 {err:.2e} > {rtol:g}" if np.isfinite(err)
                        else "non-finite values where the other has finite ones")
                report.problems.append(f"sample {index}: regenerated {name} differs ({said})")
    report.regenerated.append(index)


def _compare_noisy(stored: np.ndarray, fresh: np.ndarray, index: int, prov: dict[str, Any],
                   other_software: str, report: VerifyReport) -> None:
    """Bit-exact with the same software on the same CPU kernels (the noisy volume is computed with
    exactly rounded operations only); another torch or simaq-factory, or a dataset from before
    the CPU kernels were recorded, may round differently: then within ``NOISY_RTOL`` is a note."""
    if stored.tobytes() == fresh.tobytes():
        return
    a, b = stored.astype(np.float64), fresh.astype(np.float64)
    err = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
    built_kernels, here = prov.get("cpu_kernels"), cpu_kernels()
    other_cpu = "" if built_kernels == here else f" (built on {built_kernels or 'unrecorded'} CPU kernels, here {here})"
    if err <= NOISY_RTOL and (other_software or other_cpu):
        report.notes.append(f"sample {index}: regenerated noisy matches the stored one to rounding "
                            f"(relative L2 {err:.1e}){other_software}{other_cpu}")
    else:
        report.problems.append(f"sample {index}: regenerated noisy differs from the stored one "
                               f"(relative L2 {err:.2e}){other_software}{other_cpu}")


#: freeze writes SHA256SUMS under this name and renames it when whole (never sealed itself)
SUMS_PARTIAL = f".{SUMS}.partial"


def sealed_files(out: Path) -> list[Path]:
    """The files SHA256SUMS covers, sorted: every file but the sums (and their partial copy), the
    writers' lock and the logs (records of what ran, which later commands may append to)."""
    def sealed(p: Path) -> bool:
        rel = p.relative_to(out).as_posix()
        return rel not in (SUMS, SUMS_PARTIAL, LOCK) and not rel.startswith(f"{LOG_DIR}/")

    return sorted(p for p in out.rglob("*") if p.is_file() and sealed(p))


def file_digests(out: Path, rels: list[str], known: dict[str, str],
                 progress: Progress | None = None) -> dict[str, str | None]:
    """sha256 of each path ``rels`` (relative to ``out``): ``known``'s digest where it has one (a
    data shard file the shard check just matched), else the file hashed (on threads)."""
    to_hash = sorted({rel for rel in rels if rel not in known})
    hashed = dict(zip(to_hash, sha256_files([out / rel for rel in to_hash], progress)))
    return {rel: known[rel] if rel in known else hashed[rel] for rel in rels}


def _sums_problems(out: Path, known: dict[str, str], progress: Progress | None = None) -> list[str]:
    """Check every file listed in ``OUT/SHA256SUMS``; ``known`` maps a relative path to the digest
    already computed for it (data shard files the shard check matched), which is not recomputed."""
    path = out / SUMS
    if not path.is_file():
        return [f"{path}: missing from a frozen dataset (freeze writes it last)"]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        return [f"{path}: unreadable ({type(err).__name__}: {err})"]
    found: list[tuple[str, str | None]] = []  # per line in order: a problem, or (rel, digest) to compare
    root = out.resolve()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep:
            digest, sep, rel = line.partition(" *")
        digest = digest.strip().lower()
        if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not rel:
            found.append((f"{SUMS} line {n}: malformed (expected '<sha256>  <path>')", None))
            continue
        target = out / rel
        if Path(rel).is_absolute() or not target.resolve().is_relative_to(root):
            found.append((f"{SUMS} line {n}: {rel} lies outside the dataset", None))
            continue
        if not target.is_file():
            found.append((f"{rel}: listed in {SUMS} but missing", None))
            continue
        found.append((rel, digest))
    listed = [rel for rel, digest in found if digest is not None]
    actual = file_digests(out, listed, known, progress)
    problems = [rel if digest is None else f"{rel}: sha256 differs from {SUMS} (modified after freeze)"
                for rel, digest in found if digest is None or actual[rel] != digest]
    unlisted = [p.relative_to(out).as_posix() for p in sealed_files(out)]
    unlisted = [rel for rel in unlisted if rel not in actual]
    if unlisted:  # a file added after the freeze, or a SHA256SUMS cut short by an older freeze
        problems.append(f"{unlisted[0]}: not listed in {SUMS} ({len(unlisted)} file(s) unlisted: added after "
                        f"freeze, which a frozen dataset refuses: move them out; only if they are the "
                        f"dataset's own and {SUMS} was cut short, delete {SUMS} and run freeze again, "
                        "which seals every file there)")
    return problems


def verify_dataset(out: Path, *, deep: bool = False, regen: int = 0,
                   on_volume: Callable[[str, int, np.ndarray], None] | None = None,
                   progress: Progress | None = None) -> VerifyReport:
    """Check every shard of ``out``; ``deep`` reads all data (each decoded volume also goes to
    ``on_volume(name, index, data)``, as ``freeze`` computes its statistics); ``regen`` re-renders K
    samples. ``progress`` is told each phase's work (shard checksums, decoding, hashing the sealed
    files, regenerating) as it goes.

    On a frozen dataset every file listed in SHA256SUMS is checked too (see the module docstring).
    """
    recipe, rid, recipe_problems, notes = dataset_recipe_or_damage(out)
    if recipe is None:  # a lost resolved recipe: damage a build repairs; nothing else can be checked
        report = VerifyReport(n_shards=None, problems=list(recipe_problems), notes=list(notes))
        group_problem = group_metadata_problem(out)
        if group_problem is not None:
            report.problems.append(group_problem)
        else:
            report.frozen = read_card(out).get("status") == "frozen"
        return report
    specs = dataset_specs(recipe)
    ranges = shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard)
    report = VerifyReport(n_shards=len(ranges), problems=list(recipe_problems), notes=list(notes))
    lines, group_problem, array_problems = metadata_problems(out, recipe, rid, specs)
    report.problems.extend(lines)
    frozen = group_problem is None and read_card(out).get("status") == "frozen"
    arrays = _open_arrays(out, [name for name in specs if name not in array_problems], report) if deep else {}
    known = report.digests  # relative shard file -> sha256, as matched by the shard check
    states = shard_states(out, specs, range(len(ranges)), rid, progress, rehash=True)  # every byte
    if deep and progress is not None:
        progress(DEEP_PHASE, 0, len(ranges))
    undigested = 0  # done shards whose record carries no digest of itself (built by an older version)
    for s, (samples, (state, reason)) in enumerate(zip(ranges, states)):
        if state != "done":
            if state == "pending" and frozen:  # as status says: sealed with every record, one is gone
                reason = "provenance record missing from a frozen dataset"
            report.problems.append(f"shard {s} ({samples_text(samples)}): {reason}")
            report.unfinished_shards.append(s)
            continue
        prov = read_provenance(out, s) or {}
        if RECORD_DIGEST not in prov:
            undigested += 1
        known.update(_shard_digests(specs, s, prov))
        before = len(report.problems)
        _check_provenance(prov, s, samples, report)
        if len(report.problems) > before:
            report.record_failed_shards.append(s)
        if deep:
            before = len(report.problems)
            _deep_check(arrays, samples, report, on_volume)
            if len(report.problems) > before:
                report.deep_failed_shards.append(s)
        if deep and progress is not None:
            progress(DEEP_PHASE, s + 1, len(ranges))
        report.checked_samples += len(samples)
    if undigested:
        report.notes.append(f"{undigested} shard record(s) carry no digest of themselves (built by an older "
                            "version): an edit to them is found only by --regen")
    if group_problem is None:
        report.problems.extend(bank_problems(out, recipe))
        if frozen:
            report.frozen = True
            report.problems.extend(_sums_problems(out, known, progress))
    else:
        report.notes.append("noise banks and SHA256SUMS not checked: the dataset card is unreadable")
    if regen > 0 and report.ok:
        n = recipe.dataset.n_samples
        picks = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(regen, n))})
        for k, index in enumerate(picks):
            if progress is not None:
                progress(REGEN_PHASE, k, len(picks))
            before = len(report.problems)
            regenerate_and_compare(out, recipe, index, report)
            shard = index // recipe.dataset.samples_per_shard
            if len(report.problems) > before and shard not in report.regen_failed_shards:
                report.regen_failed_shards.append(shard)
        if progress is not None:
            progress(REGEN_PHASE, len(picks), len(picks))
    return report


def sealed_problems(out: Path) -> list[str]:
    """The files of a frozen dataset against its SHA256SUMS, for a caller that has just matched
    every data shard file with its provenance checksum (``status``' shard check): those digests are
    taken from the records, every other listed file is hashed."""
    recipe, _ = open_dataset_recipe(out)
    specs = dataset_specs(recipe)
    n_shards = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
    known: dict[str, str] = {}
    for s in range(n_shards):
        known.update(_shard_digests(specs, s, read_provenance(out, s) or {}))
    return _sums_problems(out, known)


def _shard_digests(specs: dict[str, ArraySpec], shard: int, prov: dict[str, Any]) -> dict[str, str]:
    checksums = prov.get("checksums") or {}
    return {f"{GROUP_NAME}/{name}/{spec.shard_key(shard)}": str(checksums[name])
            for name, spec in specs.items() if checksums.get(name)}
