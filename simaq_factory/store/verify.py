"""``verify``: checksums, noise-bank hashes, provenance, a deep read, and regeneration of samples.

Regeneration renders with the dataset's stored noise banks, so it needs nothing but the dataset.

A verification never writes. It returns a list of problems, each naming the shard, sample or
array at fault; the CLI exits 1 when the list is not empty.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from simaq_factory.labels import Label
from simaq_factory.store.banks import bank_problems, load_banks
from simaq_factory.store.dataset import read_provenance, shard_state
from simaq_factory.store.inspect import open_dataset_recipe
from simaq_factory.store.layout import GROUP_NAME, array_specs, shard_ranges

log = logging.getLogger(__name__)

RECORD_KEYS = ("index", "seed", "phantom_spec", "artifacts", "angles", "sinogram_artifacts",
               "n_cells", "timings_s")
SHARD_KEYS = ("recipe_id", "shard", "samples", "checksums", "device", "versions", "sample_records")
RECON_RTOL = 1e-5  # relative L2 between a stored and a regenerated recon on the same device type
VALID_LABELS = {int(v) for v in Label}


@dataclass
class VerifyReport:
    n_shards: int
    checked_samples: int = 0
    regenerated: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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


def _deep_check(group: Any, samples: range, names: list[str], report: VerifyReport) -> None:
    for name in names:
        try:
            data = group[name][samples.start : samples.stop]
        except Exception as err:  # noqa: BLE001 - any decode failure is a finding
            report.problems.append(f"{name} samples {samples.start}-{samples.stop - 1}: unreadable ({err})")
            continue
        if name == "labels":
            bad = set(np.unique(data).tolist()) - VALID_LABELS
            if bad:
                report.problems.append(f"labels samples {samples.start}-{samples.stop - 1}: "
                                       f"values {sorted(bad)} outside the label set")
        elif name in ("phantom", "noisy", "recon") and not np.isfinite(data).all():
            report.problems.append(f"{name} samples {samples.start}-{samples.stop - 1}: non-finite values")


def regenerate_and_compare(out: Path, recipe: Any, index: int, report: VerifyReport) -> None:
    """Re-render sample ``index`` here and compare with the stored arrays."""
    import torch

    from simaq_factory.device import resolve_device
    from simaq_factory.pipeline import render_sample

    shard = index // recipe.dataset.samples_per_shard
    prov = read_provenance(out, shard) or {}
    built_on = str(prov.get("device", "cpu"))
    device = resolve_device("cuda" if built_on.startswith("cuda") and torch.cuda.is_available() else "cpu")
    arrays, record = render_sample(recipe, index, device, banks=load_banks(out, device))
    group = zarr.open_group(out / GROUP_NAME, mode="r")
    for name in ("phantom", "labels"):
        if group[name][index].tobytes() != arrays[name].tobytes():
            report.problems.append(f"sample {index}: regenerated {name} differs from the stored one")
    stored_rec = next((r for r in prov.get("sample_records", []) if r.get("index") == index), None)
    if stored_rec is not None and stored_rec.get("phantom_spec") != record["phantom_spec"]:
        report.problems.append(f"sample {index}: regenerated phantom spec differs from provenance")
    if stored_rec is not None and stored_rec.get("artifacts") != record["artifacts"]:
        report.problems.append(f"sample {index}: regenerated artifact parameters (bank entries, "
                               "orientations, beads) differ from provenance")
    if built_on.split(":")[0] != device.type:
        report.notes.append(f"sample {index}: built on {built_on}, regenerated on {device}; recon not "
                            "compared (device noise generators differ)")
    else:
        if "noisy" in arrays and group["noisy"][index].tobytes() != arrays["noisy"].tobytes():
            report.problems.append(f"sample {index}: regenerated noisy differs from the stored one")
        stored = group["recon"][index].astype(np.float64)
        fresh = arrays["recon"].astype(np.float64)
        err = float(np.linalg.norm(stored - fresh) / max(np.linalg.norm(stored), 1e-30))
        if err > RECON_RTOL:
            report.problems.append(f"sample {index}: regenerated recon differs (relative L2 {err:.2e} > "
                                   f"{RECON_RTOL:g})")
    report.regenerated.append(index)


def verify_dataset(out: Path, *, deep: bool = False, regen: int = 0) -> VerifyReport:
    """Check every shard of ``out``; ``deep`` reads all data; ``regen`` re-renders K samples."""
    from simaq_factory.pipeline import a_max_for

    recipe, rid = open_dataset_recipe(out)
    specs = array_specs(recipe, a_max_for(recipe))
    ranges = shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard)
    report = VerifyReport(n_shards=len(ranges))
    group = zarr.open_group(out / GROUP_NAME, mode="r")
    for name, spec in specs.items():
        if name not in group:
            report.problems.append(f"array {name} is missing from dataset.zarr")
        elif group[name].shape != spec.shape or str(group[name].dtype) != spec.dtype:
            report.problems.append(f"array {name}: {group[name].dtype} {group[name].shape}, expected "
                                   f"{spec.dtype} {spec.shape}")
    if report.problems:
        return report
    for s, samples in enumerate(ranges):
        state, reason = shard_state(out, specs, s, rid)
        if state != "done":
            report.problems.append(f"shard {s} (samples {samples.start}-{samples.stop - 1}): {reason}")
            continue
        _check_provenance(read_provenance(out, s) or {}, s, samples, report)
        if deep:
            _deep_check(group, samples, list(specs), report)
        report.checked_samples += len(samples)
    report.problems.extend(bank_problems(out, recipe))
    if regen > 0 and report.ok:
        n = recipe.dataset.n_samples
        picks = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(regen, n))})
        for index in picks:
            regenerate_and_compare(out, recipe, index, report)
    return report
