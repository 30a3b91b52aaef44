"""Versions of the software that produced a dataset (recorded in cards and provenance)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def source_revision() -> str | None:
    """The git commit of a source checkout this package runs from (None for an installed wheel or
    when unknown): the package version alone does not change between commits. Read from the
    repository's files, no git process."""
    root = Path(__file__).resolve().parent.parent
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.split(":", 1)[1].strip()
        common = Path((git / "commondir").read_text().strip()) if (git / "commondir").is_file() else None
        for base in (git, (git / common) if common else None):
            if base is not None and (base / ref).is_file():
                return (base / ref).read_text().strip() or None
            packed = base / "packed-refs" if base is not None else None
            if packed is not None and packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return None


def source_modified() -> bool | None:
    """Whether the source checkout of :func:`source_revision` has uncommitted changes to tracked files
    (a build from them is not that commit's); None when unknown (no checkout, no git)."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def software_versions() -> dict[str, str | None]:
    """simaq-factory (with the git commit of a source checkout) and its main dependencies, plus
    Python (a fresh dict; looked up once per process: ~19 ms of package metadata per shard)."""
    return dict(_software_versions())


@functools.lru_cache(maxsize=1)
def _software_versions() -> tuple[tuple[str, str | None], ...]:
    from simaq_factory import __version__

    # simaq-factory: the code that runs (another copy on sys.path may shadow the installed metadata)
    out = {"simaq-factory": __version__, **{d: _version(d) for d in ("torch", "numpy", "zarr", "numcodecs", "dask",
                                                                     "distributed", "perlin-numpy")}}
    out["simaq-factory-commit"] = source_revision()
    if out["simaq-factory-commit"] is not None:  # the commit alone would hide uncommitted changes
        out["simaq-factory-modified"] = source_modified()  # type: ignore[assignment]
    out["python"] = platform.python_version()
    return tuple(out.items())


def describe_software(versions: dict[str, Any]) -> str:
    """``"simaq-factory V (commit C), torch T"`` from a :func:`software_versions` record: what decides
    a sample's bytes."""
    commit = versions.get("simaq-factory-commit")
    modified = ", modified" if commit and versions.get("simaq-factory-modified") else ""
    head = f"simaq-factory {versions.get('simaq-factory')}" + (f" ({str(commit)[:12]}{modified})" if commit else "")
    return f"{head}, torch {versions.get('torch')}"


def built_on(provenance: dict[str, Any]) -> str:
    """Where a shard was rendered, from its provenance: ``"cpu, x86_64 AVX2 CPU kernels"`` or
    ``"cuda:0, NVIDIA H100 80GB HBM3"``, with ``", triton 3.9.0 projector"`` after it when the
    Triton kernels projected (``"unrecorded"`` kernels for shards written before they were
    recorded)."""
    device = str(provenance.get("device", "cpu"))
    projector = str(provenance.get("projector") or "torch")
    tail = "" if projector == "torch" else f", {projector} projector"
    if device.startswith("cuda"):
        return f"{device}, {provenance.get('device_name', '')}{tail}"
    return f"{device}, {provenance.get('cpu_kernels') or 'unrecorded'} CPU kernels{tail}"


def cpu_kernels() -> str:
    """The CPU architecture and the vector kernels torch dispatches to on it, e.g.
    ``"x86_64 AVX2"``. Recorded per shard: sinograms and reconstructions repeat to the bit only on
    the same kernels (fused multiply-adds and FFTs round differently per vector width); phantom,
    labels and the noisy volume use exactly rounded operations only (tested between torch's
    scalar and AVX2 kernels)."""
    import torch

    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


#: What decides a sample's bytes: a shard task refuses to run where any of these differs from the
#: driver's (a worker started from another environment or checkout would mix renderings). Not the
#: checkout's "modified" flag: it covers docs and tests too, and is unknown where git is missing.
RENDER_SOFTWARE = ("simaq-factory", "simaq-factory-commit", "torch", "numpy", "perlin-numpy")


def software_mismatch(expected: dict[str, Any] | None) -> str | None:
    """None when this process runs the ``expected`` :data:`RENDER_SOFTWARE`; otherwise what differs,
    in words (``torch 2.4.0 here, 2.13.0 on the driver``). A version unknown on either side (None: an
    installed wheel has no commit) is not a difference."""
    if not expected:
        return None
    here = software_versions()
    diffs = [f"{k} {here.get(k)} here, {expected.get(k)} on the driver" for k in render_differences(here, expected)]
    return "; ".join(diffs) or None


def render_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The :data:`RENDER_SOFTWARE` keys whose versions ``a`` and ``b`` both know and that differ."""
    return [k for k in RENDER_SOFTWARE if a.get(k) is not None and b.get(k) is not None and a.get(k) != b.get(k)]


#: environment variables that set thread counts or huge pages, recorded with every benchmark
RECORDED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE")
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def load_average() -> list[float] | None:
    """``os.getloadavg()`` (1, 5, 15 minutes) as a list, None where the platform has none."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_state(load_at_start: list[float] | None) -> dict[str, Any]:
    """What moves a benchmark's figures besides the code, for its record: the CPUs this process may
    run on (``cpu_affinity``), the load average at the start of the work (``load_at_start``) and now
    (``load_average_end``), ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``THP_MEM_ALLOC_ENABLE`` as the
    process sees them (None: unset; importing ``simaq_factory`` sets the last to 1 unless it was
    set) and the kernel's transparent hugepage mode (None where unreadable)."""
    import os

    try:
        affinity: list[int] | None = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        text = Path(THP_MODE_FILE).read_text(encoding="utf-8").strip()
        start, end = text.find("["), text.find("]")
        thp: str | None = text[start + 1:end] if 0 <= start < end else text
    except OSError:
        thp = None
    return {"cpu_affinity": affinity, "load_average_start": load_at_start, "load_average_end": load_average(),
            "environment": {name: os.environ.get(name) for name in RECORDED_ENV}, "transparent_hugepage": thp}


def run_record(parameters: dict[str, Any], gpu: str | None, load_at_start: list[float] | None,
               versions: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a benchmark record carries besides its figures (``simaq-train bench`` and the
    ``benchmarks/`` scripts): the command (``sys.argv``), an ISO-8601 UTC timestamp, the CPU model,
    logical cores, torch threads, the machine's state (``machine_state``: affinity, load average at
    the start of the work and now, thread and huge-page settings), the GPU name when CUDA is used,
    the platform, the software versions (``software_versions()`` unless given) and every parameter
    of the run."""
    import datetime
    import os
    import sys

    import torch

    return {"command": list(sys.argv),
            "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            **machine_state(load_at_start), "gpu": gpu, "platform": platform.platform(),
            "versions": software_versions() if versions is None else versions, "parameters": parameters}
