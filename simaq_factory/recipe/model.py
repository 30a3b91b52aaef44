"""The recipe: every section, its defaults, and the cross-field checks.

A recipe is YAML with the sections ``dataset``, ``seed``, ``phantom``, ``artifacts``,
``acquisition``, ``reconstruction`` and ``execution``. Missing keys take the reference defaults
(``reference-simaq.md``); unknown keys are errors. The resolved recipe is canonical JSON and its
sha256 (over everything but ``execution``, which changes how a dataset is computed, not what) is the
recipe id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from simaq_factory.acquisition.config import SinogramArtifactsConfig
from simaq_factory.artifacts import ArtifactsConfig
from simaq_factory.phantom.config import PhantomConfig
from simaq_factory.recipe.fields import Dist, RecipeError, spec
from simaq_factory.tomo.config import ProjectorBackend, ReconstructionConfig

#: a device name as written in recipes and flags (ASCII digits: torch refuses others); one
#: pattern for the recipe check and :func:`simaq_factory.device.resolve_device`
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # the same, in words

RECIPE_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class OutputsConfig:
    """Optional arrays. ``phantom``, ``labels`` and ``recon`` are always written."""

    noisy: bool = spec(False, doc="store the phantom after phantom-space artifacts")
    sinogram: bool = spec(False, doc="store the projections (A_max, Z, D) per sample; (axes, A_max, S, D) with 3 axes")
    angles: bool = spec(True, doc="store the reconstruction angles (degrees) per sample")
    recon_dtype: Literal["float32", "float16"] = spec("float32", doc="dtype of recon")
    noisy_dtype: Literal["float32", "float16"] = spec("float32", doc="dtype of noisy")


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    n_samples: int = spec(4, ge=1, le=1_000_000, doc="number of samples (volumes)")
    shape: tuple[int, int, int] = spec(
        (512, 512, 512), ge=8, le=4096, doc="(z, y, x) voxels; z is the tilt axis; y must equal x"
    )
    samples_per_shard: int = spec(1, ge=1, doc="whole samples per shard (one Dask task each)")
    chunk_z: int = spec(8, ge=1, doc="Z-slab thickness of the inner chunks")
    outputs: OutputsConfig = spec(default_factory=OutputsConfig)


@dataclass(frozen=True, kw_only=True)
class AcquisitionConfig:
    """Limited-angle tilt series (reference §3.3) and sinogram-space artifacts (§3.5–3.7)."""

    tilt_span_deg: Dist = spec(
        Dist.uniform(90.0, 110.0),
        gt=0.0,
        le=180.0,
        doc="total tilt span in degrees (reference: a configured list, unknown; paper: ~90-110 deg)",
    )
    step_deg: float = spec(1.0, gt=0.0, le=30.0, doc="nominal angular increment (reference: 1 deg)")
    missing_fraction: float = spec(
        0.2, ge=0.0, lt=1.0, doc="exact fraction of nominal angles removed at random (reference 0.2)"
    )
    jitter_deg: float = spec(0.1, ge=0.0, le=10.0, doc="std of forward-angle jitter (reference 0.1)")
    offset_deg: Dist = spec(
        Dist.normal(0.0, 5.0, -15.0, 15.0),
        ge=-90.0,
        le=90.0,
        doc="global tilt offset, applied when span < offset_below_span_deg (reference N(0,5) in +-15)",
    )
    offset_below_span_deg: float = spec(
        165.0, ge=0.0, le=360.0, doc="apply the tilt offset only below this span (reference 165)"
    )
    axes: Literal[1, 3] = spec(
        1,
        doc="acquisitions per phantom: 1 (tilt axis z, the reference) or 3 (z, y and x in turn, each "
        "with its own sampled acquisition, as the paper trains; needs a cubic dataset.shape)",
    )
    sinogram: SinogramArtifactsConfig = spec(default_factory=SinogramArtifactsConfig)


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """``--cluster slurm`` (dask-jobqueue): one worker process per SLURM job."""

    queue: str | None = spec(None, doc="partition (#SBATCH -p)")
    account: str | None = spec(None, doc="account (#SBATCH -A)")
    walltime: str = spec("02:00:00", doc="job walltime HH:MM:SS")
    cores: int = spec(8, ge=1, doc="CPU cores per job, booked whole; its worker process (one per GPU) runs "
                      "one shard at a time with cores/processes torch threads")
    memory: str = spec("32GB", doc="memory per job, e.g. 32GB")
    gpus_per_job: int = spec(0, ge=0, le=16, doc="GPUs per job (--gres=gpu:N): N worker processes per job, each "
                          "advertising GPU=1")
    local_directory: str | None = spec(None, doc="node-local scratch for worker spill files")
    python: str | None = spec(None, doc="python on the nodes (default: this interpreter)")

    def __post_init__(self) -> None:
        _check_bytes("memory", self.memory)
        if not re.fullmatch(r"(\d+-)?\d{1,3}:\d{2}(:\d{2})?", self.walltime):
            raise ValueError(f"walltime must be [D-]HH:MM[:SS] as sbatch takes it, got {self.walltime!r}")


@dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """How to compute; not part of the recipe id."""

    device: str = spec("auto", doc="cpu, cuda, cuda:N or auto")
    projector: ProjectorBackend = spec(
        "torch", doc="projector and FBP backprojector: torch (index tables, CPU and CUDA), triton (kernels, "
        "CUDA, Triton installed) or auto (triton on CUDA where it passes its self-check)"
    )
    workers: int = spec(2, ge=1, le=4096, doc="LocalCluster worker processes")
    threads_per_worker: int = spec(0, ge=0, le=1024, doc="torch threads per task; 0 = cores/workers on a "
                                 "LocalCluster, a --scheduler worker's cores/its Dask threads, slurm.cores/processes")
    retries: int = spec(2, ge=0, le=100, doc="retries of a failed shard task on a Dask cluster (not --cluster inline); "
                        "failures the recipe decides (cells that do not fit, non-finite data) are not retried")
    window: int = spec(0, ge=0, doc="tasks in flight; 0 = 2 x workers")
    memory_limit: str = spec("auto", doc="LocalCluster memory limit per worker, e.g. 8GB; auto = RAM/workers")
    slurm: SlurmConfig = spec(default_factory=SlurmConfig)

    def __post_init__(self) -> None:
        if not DEVICE_NAME.fullmatch(self.device):
            raise ValueError(f"device: unknown device {self.device!r} (expected {DEVICE_NAMES})")
        if self.memory_limit != "auto":
            _check_bytes("memory_limit", self.memory_limit, at_least=MIN_WORKER_MEMORY)


#: The least memory limit a worker can work under: a Dask worker with torch loaded holds ~0.4 GiB
#: before its first sample (a 100 MB limit paused it at start-up, and the build ended in Dask's
#: KilledWorker about a bank task).
MIN_WORKER_MEMORY = 512 * 2**20


def _check_bytes(name: str, value: str, at_least: int = 0) -> None:
    """``value`` must be a byte size as Dask parses it (8GB, 512 MiB, 4e9); 0 (no limit) or at
    least ``at_least`` bytes."""
    from dask.utils import parse_bytes

    try:
        n = parse_bytes(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a byte size such as 8GB or 512MiB, got {value!r}") from None
    if n < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")
    if 0 < n < at_least:
        raise ValueError(f"{name} {value!r} is less than a worker needs to load torch and render "
                         f"(at least {at_least // 2**20} MiB; 0 = no limit)")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    version: int = spec(RECIPE_VERSION, ge=1, le=RECIPE_VERSION, doc="recipe format version")
    seed: int = spec(0, ge=0, lt=2**63, doc="root seed; sample i uses SeedSequence(seed, spawn_key=(i,))")
    dataset: DatasetConfig = spec(default_factory=DatasetConfig)
    phantom: PhantomConfig = spec(default_factory=PhantomConfig)
    artifacts: ArtifactsConfig = spec(default_factory=ArtifactsConfig)
    acquisition: AcquisitionConfig = spec(default_factory=AcquisitionConfig)
    reconstruction: ReconstructionConfig = spec(default_factory=ReconstructionConfig)
    execution: ExecutionConfig = spec(default_factory=ExecutionConfig)


def check_recipe(recipe: Recipe) -> None:
    """Cross-field checks that one section cannot make alone; raises :class:`RecipeError`."""
    ds = recipe.dataset
    z, y, x = ds.shape
    if y != x:
        raise RecipeError("dataset.shape", f"y and x must be equal (square slices), got {list(ds.shape)}")
    if ds.samples_per_shard > ds.n_samples:
        raise RecipeError(
            "dataset.samples_per_shard",
            f"must be <= dataset.n_samples ({ds.n_samples}), got {ds.samples_per_shard} "
            f"(with fewer samples, also --set dataset.samples_per_shard={ds.n_samples})",
        )
    if ds.chunk_z > z:
        raise RecipeError("dataset.chunk_z", f"must be <= shape z ({z}), got {ds.chunk_z}")
    acq = recipe.acquisition
    if acq.axes == 3 and not z == y == x:
        raise RecipeError(
            "acquisition.axes", f"3 axes need a cubic dataset.shape (z = y = x), got {list(ds.shape)}"
        )
    lo, hi = acq.tilt_span_deg.support()
    if hi > 180.0:
        raise RecipeError("acquisition.tilt_span_deg", f"spans must be <= 180 deg, got up to {hi:g}")
    if lo < acq.step_deg:
        raise RecipeError(
            "acquisition.tilt_span_deg",
            f"spans must be >= step_deg ({acq.step_deg:g}), got down to {lo:g}",
        )
