"""The fit loop (reference §6.3): Adam, AMP on CUDA, gradient accumulation and clipping, EMA once
per optimiser step, JSON-lines metrics, atomic checkpoints at optimiser-step boundaries, exact resume.

``RUN/last.pt`` holds model, EMA, optimiser, grad scaler, reader state ``(epoch, position)``, step,
config and dataset manifest hashes. Running ``fit`` again with the same ``run.out`` resumes from it
(model, data, loss, augmentation and seed must match; limits such as ``optim.max_steps``,
``optim.epochs`` or ``optim.max_minutes`` may change, and so may ``optim.lr`` and
``optim.weight_decay`` (the optimiser keeps its moments and takes the new values), ``optim.clip``,
``optim.amp`` and ``optim.ema_decay``: an EMA switched on at resume starts from the resumed
weights). Dataset paths are compared as absolute paths; a dataset frozen since the run started is accepted when its
contents are those the run was trained on. Each resume appends a ``"kind": "resume"`` line to
``metrics.jsonl`` with the config keys that changed (old and new) and the checkpoint's config in
full (``config.json`` holds the latest only). A run stopped by a limit, or killed, and resumed
reaches the same weights as one that was never interrupted (CPU; on CUDA up to the
non-determinism of its kernels).

Distributed data parallel: launched with ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each
rank reads its share of every epoch (:mod:`simaq_train.data.stream`); rank 0 writes metrics and
checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from simaq_factory.errors import BadInput, RunFailed, check_output_dir
from simaq_train.config import TrainConfig, absolute_paths
from simaq_train.data.build import build_stream, check_distinct, check_source, resolve_classes
from simaq_train.data.sources import FactorySource, UnreadableData, dataset_hash, dataset_meta_hash
from simaq_train.data.stream import next_position
from simaq_train.engine.parts import (
    EMA,
    amp_dtype,
    load_checkpoint,
    make_optimizer,
    resolve_device,
    save_checkpoint,
)
from simaq_train.losses import check_target, dice_focal_loss
from simaq_train.metrics import confusion, confusion_tensor, headline_scores, iou_dice, mean_defined
from simaq_train.model import CenterSliceUNet

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]

# config sections that must not change when a run resumes (others are limits and logistics)
FROZEN_SECTIONS = ("seed", "model", "loss", "augment")
FROZEN_DATA_KEYS = ("train", "window", "crop", "edge_mode", "background_drop", "fov_margin", "axes",
                    "shuffle_volumes", "drop_last", "real")
FROZEN_OPTIM_KEYS = ("batch_size", "accumulate")


@dataclass
class FitState:
    epoch: int = 0
    position: int = 0
    step: int = 0


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    checkpoint: Path
    step: int
    epoch: int
    finished: bool
    start_step: int = 0  # the step this invocation started from (> 0: resumed)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> Dist:
    """The process group torchrun (or a launcher setting the same variables) describes. A
    ``WORLD_SIZE`` > 1 without its companions (left over from an outer job, say) is refused: the
    rendezvous would wait for processes that never come."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise BadInput("WORLD_SIZE", f"environment variable is {raw!r}, not a number of processes") from None
    if world <= 1:
        return Dist()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise BadInput("WORLD_SIZE", f"is {world} in the environment but {', '.join(missing)} "
                       f"{'is' if len(missing) == 1 else 'are'} not set: start distributed training with "
                       "`torchrun --nproc_per_node=N -m simaq_train fit CONFIG`, or unset WORLD_SIZE for one process")
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _die_with_launcher() -> None:
    """Under torchrun on Linux: this rank gets SIGTERM (an interrupt: its clean-ups run) when the
    launcher dies, also by SIGKILL; ranks left running would go on writing run.out beside the
    rerun that resumes it."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()  # torchrun may be PID 1 (a container's entrypoint): compare, not "== 1"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


class RunLock:
    """The one ``fit`` that may write a run folder: an exclusive ``flock`` on ``RUN/.lock`` (with
    its pid), held while the run trains (rank 0). A second fit on the same run.out (one resuming it
    while the first still trains, say) is refused: both appended to metrics.jsonl and replaced
    last.pt through one temporary name."""

    NAME = ".lock"

    def __init__(self, run: Path) -> None:
        import fcntl

        self.path = run / self.NAME
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise BadInput(str(self.path), f"cannot open the run's lock file ({err.strerror}); move it away or "
                           "use another run.out") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise BadInput("run.out", f"{run}: another simaq-train fit (process {holder}) is training in it "
                           "now; wait for it to end or use another run.out") from None
        except OSError:  # no locks on this filesystem (some network mounts): not a reason to refuse
            pass
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def validate_model(model: torch.nn.Module, sources: list[FactorySource], cfg: TrainConfig,
                   device: torch.device) -> list[np.ndarray]:
    """Confusion matrices of full-volume predictions (FOV only), one per validation volume: per
    sample and acquisition axis of ``data.axes``, as ``simaq-train evaluate`` scores them."""
    from simaq_train.data.normalize import fov_mask
    from simaq_train.inference import model_edge_mode, predict_volume

    n = cfg.model.out_channels
    cms = []
    mode = model_edge_mode(cfg)
    for src in sources:
        for v in range(len(src)):
            image, labels = src.load(v)
            pred = predict_volume(model, image, window=cfg.data.window, edge_mode=mode,
                                  batch_size=cfg.optim.batch_size, device=device, amp=cfg.optim.amp)
            mask = fov_mask(labels.shape[1:], cfg.data.fov_margin)
            cms.append(confusion(pred, labels, n, mask=mask))
    return cms


def validation_record(cms: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    """The statistics of ``simaq-train evaluate`` over validation volumes: ``mean_iou_foreground``
    (its headline: mean over volumes of each volume's mean foreground IoU), ``iou``/``dice`` (per
    class, mean over the volumes where defined) and ``pooled`` (of the summed confusion matrix)."""
    rows = [iou_dice(cm) for cm in cms]

    def per_class(k: int) -> list[float | None]:
        out = []
        for c in range(len(names)):
            vals = [r[k][c] for r in rows if r[k][c] is not None]
            out.append(float(np.mean(vals)) if vals else None)
        return out

    return {"volumes": len(cms), "iou": dict(zip(names, per_class(0))), "dice": dict(zip(names, per_class(1))),
            **headline_scores(cms, names)}


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Around the start of DataLoader worker processes: SIGINT is blocked in this thread, and the
    workers, which inherit the signal mask, never get it. Ctrl-C reaches every process of the
    terminal's group; a worker it found still importing its modules printed its traceback, and the
    parent the loader's "worker killed by signal" (about 35 lines after the one-line message). The
    loader ends its workers itself. A Ctrl-C that arrives meanwhile is held and raised here as
    :class:`KeyboardInterrupt` once they are started (only in the main thread, where handlers live)."""
    import signal
    import threading

    previous = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask")
            or previous is None):  # None: a handler not set from Python, which could not be put back
        yield
        return
    from multiprocessing import resource_tracker

    # started by the first worker otherwise, and its start unblocks SIGINT in this thread
    resource_tracker.ensure_running()
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))  # delivered to another thread
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # one held in this thread runs now: recorded
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    elif held and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def _batches(loader: DataLoader) -> Any:
    """The loader's batches; a damaged dataset read in a worker process is re-raised with the
    reader's one-line message (the loader wraps it in the worker's traceback)."""
    if loader.num_workers > 0:
        with _interrupts_held():
            it = iter(loader)
    else:
        it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UnreadableData as err:
            line = str(err).strip().splitlines()[-1]
            head = f"{UnreadableData.__module__}.{UnreadableData.__name__}: "
            raise UnreadableData(line[len(head):] if line.startswith(head) else line) from err
        yield batch


#: the files a run writes into run.out: replaced (by a rename) or written over in place
RUN_FILES_REPLACED = ("last.pt",)  # metrics.png too, but a plot that fails only warns
RUN_FILES_WRITTEN = ("metrics.jsonl", "config.json")


def _check_run_files(run: Path) -> None:
    """Before any work: :class:`BadInput` naming a file of the run that is there but could not be
    written when its turn comes (a folder in its place; config.json, or the metrics.jsonl a resumed
    run appends to, read-only), which would otherwise stop the run after its first steps."""
    resumes = (run / "last.pt").is_file()  # a fresh start removes an old metrics.jsonl instead
    for name in RUN_FILES_REPLACED + RUN_FILES_WRITTEN:
        path = run / name
        if not (path.exists() or path.is_symlink()):
            continue
        if not path.is_file():
            raise BadInput(str(path), "is not a file, and the run writes it; move it away or use another run.out")
        if name in RUN_FILES_WRITTEN and not os.access(path, os.W_OK) and (resumes or name != "metrics.jsonl"):
            raise BadInput(str(path), "is not writable, and the run writes it; make it writable or use another "
                                      "run.out")


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int, epoch: int) -> None:
    """Drop metric lines written after the checkpoint a run resumes from (they will be redone): a
    later step, or the checkpoint's step but a later epoch (the validation line of an epoch whose
    last step was checkpointed before the epoch-end checkpoint was written)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            at = rec.get("step", 0)
            if at < step or (at == step and rec.get("epoch", 0) <= epoch):
                keep.append(line)
        except (ValueError, AttributeError):
            continue
    path.write_text("".join(k + "\n" for k in keep))


_ABSENT = object()  # a key one config has and the other not


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _differences(old: Any, new: Any, key: str, most: int = 2) -> str:
    """``old → new`` of a value, or ``key.sub: old → new`` for the first ``most`` differing dotted
    keys of a section (a key only one side has reads ``(absent)``), then ``and N more``."""
    absent = _ABSENT
    found: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k, absent), b.get(k, absent), f"{path}.{k}")
        elif a != b:
            found.append(f"{path}: {'(absent)' if a is absent else _short(a)} → "
                         f"{'(absent)' if b is absent else _short(b)}")

    walk(old, new, key)
    if len(found) == 1 and found[0].startswith(f"{key}: "):  # a single value: ``old → new``
        return found[0][len(key) + 2:]
    more = f", and {len(found) - most} more" if len(found) > most else ""
    return ", ".join(found[:most]) + more


def _check_resumable(ck: dict[str, Any], cfg: TrainConfig, datasets: dict[str, str], where: Path) -> None:
    """BadInput unless the run in ``ck`` may continue under ``cfg`` on ``datasets`` ({path: hash});
    paths compare as absolute paths (older checkpoints stored them as written, relative to the cwd)."""
    old, new = absolute_paths(ck["config"]), absolute_paths(cfg.to_dict())
    for key in FROZEN_SECTIONS:
        if old.get(key) != new[key]:
            what = f"'{key}' section" if isinstance(new[key], dict) else key  # seed is a value
            diff = _differences(old.get(key, _ABSENT), new[key], key)
            raise BadInput(str(where), f"existing run has a different {what} ({diff}); use another run.out")
    for sec, keys in (("data", FROZEN_DATA_KEYS), ("optim", FROZEN_OPTIM_KEYS)):
        for key in keys:
            if old.get(sec, {}).get(key) != new[sec][key]:
                diff = _differences(old.get(sec, {}).get(key, _ABSENT), new[sec][key], f"{sec}.{key}")
                raise BadInput(str(where), f"existing run has a different {sec}.{key} ({diff}); use another run.out")
    stored = {os.path.realpath(p): h for p, h in ck["datasets"].items()}
    for path, h in datasets.items():
        was = stored.get(os.path.realpath(path))
        if was == h:
            continue
        if was is None:  # data.train is frozen, so only a checkpoint that lacks the path gets here
            raise BadInput(str(where), f"existing run was not trained on data.train {path} (it recorded "
                           f"{', '.join(sorted(stored)) or 'no dataset'}); use another run.out")
        if was != dataset_meta_hash(path):  # equal: same recipe and arrays, frozen since; accepted
            raise BadInput(str(where), f"existing run was trained on different contents of data.train {path} "
                           f"(dataset hash {was[:12]}… → {h[:12]}…: the folder now holds another dataset); "
                           "put the dataset back, or use another run.out")
        log.info("dataset %s was frozen since the run started; the run now records its manifest hash", path)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{dotted.key: {"old": value, "new": value}}`` of every leaf that differs between two full
    configs (``TrainConfig.to_dict()``), whole values (a list is one value); a key only one side
    has reads ``None`` on the other."""
    out: dict[str, dict[str, Any]] = {}

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            out[path] = {"old": a, "new": b}

    walk(old, new, "")
    return out


def resume_record(old: dict[str, Any], new: dict[str, Any], state: FitState) -> dict[str, Any]:
    """The metrics line a resume writes before its first step: where it resumed, what the config
    changed (``optim.lr``, ``data.val``, limits, …; :func:`config_changes`), and the config the
    run had until then in full (config.json holds only the latest one). Paths are absolute on both
    sides, so a dataset spelt another way is no change."""
    new = absolute_paths(new)
    return {"kind": "resume", "step": state.step, "epoch": state.epoch, "position": state.position,
            "changed": config_changes(old, new), "previous_config": old}


def _warn_overlap(val: list[FactorySource], train: list[FactorySource]) -> None:
    """Warn for each validation dataset that is a training dataset too (the same real path, or the
    same recipe id: a build of the same recipe and seed): its scores are not held-out scores."""
    for v in val:
        for t in train:
            rid = v.card.get("recipe_id")
            if os.path.realpath(v.path) == os.path.realpath(t.path):
                why = "the same dataset"
            elif rid and rid == t.card.get("recipe_id"):
                why = f"the same recipe id {str(rid)[:12]}…, so the same volumes"
            else:
                continue
            log.warning("data.val %s and data.train %s are %s: validation scores training data, not held-out "
                        "data (build the validation set with another seed)", v.path, t.path, why)


def load_scaler_state(scaler: torch.amp.GradScaler, state: dict[str, Any] | None) -> None:
    """Restore the grad scaler of a run that may have used another precision before: a disabled
    scaler (CPU, or AMP off or bf16) saves ``{}``, which an enabled one refuses to load; such a run
    resumed with fp16 on CUDA starts from a fresh scale, and a disabled scaler ignores a state."""
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)
    elif scaler.is_enabled():
        log.info("resuming with fp16 grad scaling that the run did not use so far: a fresh scale")


class _Meter:
    """Training loss, confusion matrix and throughput since the last metrics line."""

    def __init__(self, n_classes: int, n_batches: int, t0: float) -> None:
        self.n_classes, self.n_batches, self.t0 = n_classes, n_batches, t0
        self.reset()

    def reset(self) -> None:
        # loss and counts stay on the model's device until record(): no GPU sync per micro-batch
        self.loss_sum: torch.Tensor | None = None
        self.cm: torch.Tensor | None = None
        self.loss_n, self.seen, self.real = 0, 0, 0
        self.t = time.monotonic()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, real: torch.Tensor,
            ignore_index: int) -> None:
        cm = confusion_tensor(logits.argmax(1), y, self.n_classes, ignore_index)
        loss = loss.detach().double()
        self.cm = cm if self.cm is None else self.cm + cm
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.loss_n += 1
        self.seen += int(y.shape[0])
        self.real += int(real.sum())  # a host tensor of the batch

    def record(self, names: list[str], step: int, epoch: int, position: int, lr: float) -> dict[str, Any]:
        cm = (np.zeros((self.n_classes,) * 2, np.int64) if self.cm is None else self.cm.cpu().numpy())
        iou, _ = iou_dice(cm)
        loss = 0.0 if self.loss_sum is None else float(self.loss_sum)
        now = time.monotonic()
        rec = {"kind": "train", "step": step, "epoch": epoch, "position": position, "lr": lr,
               "loss": loss / max(self.loss_n, 1), "iou": dict(zip(names, iou)),
               "mean_iou": mean_defined(iou, list(range(1, self.n_classes))),
               "real_fraction": self.real / max(self.seen, 1),
               "samples_per_s": self.seen / max(now - self.t, 1e-9), "elapsed_s": now - self.t0}
        self.reset()
        return rec


class Trainer:
    """One run: model, optimiser, scaler, EMA, stream and their checkpointed state."""

    def __init__(self, cfg: TrainConfig, dist: Dist | None = None) -> None:
        self.dist = dist or _dist_from_env()
        cfg = resolve_classes(cfg)
        self.cfg = cfg
        self.run = Path(cfg.run.out)
        blocker = next((p for p in (self.run, *self.run.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise BadInput("run.out", f"{blocker} exists and is not a folder")
        check_output_dir(self.run, "run.out")  # writable (or creatable) before any work
        _check_run_files(self.run)
        if cfg.run.threads > 0:
            torch.set_num_threads(cfg.run.threads)
        self.device = resolve_device(cfg.run.device)
        if self.dist.world > 1 and self.device.type == "cuda":
            # each rank of torchrun trains on the GPU of its LOCAL_RANK (DDP's convention)
            if cfg.run.device.startswith("cuda:"):
                raise BadInput("run.device", f"{cfg.run.device} names one GPU, but each of the {self.dist.world} "
                                             "processes of a distributed run takes the GPU of its LOCAL_RANK; use "
                                             "cuda or auto")
            visible = torch.cuda.device_count()
            if self.dist.local_rank >= visible:
                raise BadInput("run.device", f"rank {self.dist.rank} has LOCAL_RANK {self.dist.local_rank} but sees "
                                             f"{visible} GPU(s): start at most {visible} process(es) per node "
                                             "(torchrun --nproc-per-node), each seeing every GPU of the node")
            self.device = torch.device("cuda", self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        # everything that can fail on bad input happens before the run directory is created
        self.stream, self.info = build_stream(cfg, self.dist.rank, self.dist.world)
        # scored as evaluate scores them: every acquisition axis of data.axes
        check_distinct(cfg.data.val, "data.val")
        self.val_sources = [FactorySource(p, n_classes=cfg.model.out_channels, fov_margin=cfg.data.fov_margin,
                                          axes=cfg.data.axes, max_samples=cfg.data.val_max_samples)
                            for p in cfg.data.val]
        for src in self.val_sources:  # predict_volume pads the slices: no divisibility needed
            check_source(src, "data.val", fov_margin=cfg.data.fov_margin)
        _warn_overlap(self.val_sources, [s for s in self.stream.sources if isinstance(s, FactorySource)])
        # what each validation line scored (data.val may change at a resume): {path: dataset hash}
        self.val_datasets = {str(p): dataset_hash(p) for p in cfg.data.val}
        self.resumed_from: dict[str, Any] | None = None  # the checkpoint's config, when resuming
        self.ckpt_path = self.run / "last.pt"
        self.metrics_path = self.run / "metrics.jsonl"
        self.names: list[str] = self.info["class_names"]
        # initial weights: their own stream of the run seed (epochs use spawn keys (epoch, ...))
        init = torch.Generator().manual_seed(int(np.random.SeedSequence(cfg.seed, spawn_key=(2**31,)).generate_state(1)[0]))
        self.model = CenterSliceUNet(cfg.model).reset_parameters(init).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.ema = EMA(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.dtype = amp_dtype(cfg.optim.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.state = FitState()
        self.ddp: torch.nn.Module | None = None
        self.saved_step: int | None = None  # the step of the checkpoint in run.out (None: none yet)
        self.lock: RunLock | None = None
        if self.dist.main and self.run.is_dir():  # before its checkpoint is read
            self.lock = RunLock(self.run)
        if self.ckpt_path.exists():
            try:
                self._resume()
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        """Let go of the run folder (its lock); the fit loop does when it returns or fails."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- checkpoints ----------------------------------------------------------------------------
    def _resume(self) -> None:
        ck = load_checkpoint(self.ckpt_path)
        saved_world = ck.get("world_size")  # absent from checkpoints written before it was recorded
        if saved_world is not None and saved_world != self.dist.world:
            how = "one process" if saved_world == 1 else f"torchrun --nproc_per_node={saved_world} (in all)"
            raise BadInput(str(self.ckpt_path), f"the run was trained by {saved_world} process(es) and this fit "
                           f"has {self.dist.world}: each epoch's order and the global batch depend on it; "
                           f"resume with {how}, or use another run.out")
        try:
            _check_resumable(ck, self.cfg, self.info["datasets"], self.ckpt_path)
            self._load_state(ck)
            self.resumed_from = absolute_paths(ck["config"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            if isinstance(err, BadInput):
                raise
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
            raise BadInput(str(self.ckpt_path), f"checkpoint does not match its run ({why}); use another "
                           "run.out, or remove the file to start over") from None
        self.saved_step = self.state.step
        if self.dist.main:
            _truncate_metrics(self.metrics_path, self.state.step, self.state.epoch)
        log.info("resuming %s at epoch %d position %d step %d", self.run, self.state.epoch,
                 self.state.position, self.state.step)

    def _load_state(self, ck: dict[str, Any]) -> None:
        self.model.load_state_dict(ck["model"])
        # the loaded groups carry the run's old hyperparameters; the current config's win
        want = [(g["lr"], g["weight_decay"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(ck["optimizer"])
        for g, (lr, wd) in zip(self.optimizer.param_groups, want):
            if (g["lr"], g["weight_decay"]) != (lr, wd):
                log.info("optimiser group %s: lr %g -> %g, weight_decay %g -> %g (from the config)",
                         g.get("name"), g["lr"], lr, g["weight_decay"], wd)
                g["lr"], g["weight_decay"] = lr, wd
        load_scaler_state(self.scaler, ck.get("scaler"))
        if self.ema is not None:
            if ck.get("ema") is not None:
                self.ema.model.load_state_dict(ck["ema"])
            else:  # EMA switched on at resume: average from the trained weights, not the initial ones
                log.info("the checkpoint has no EMA (optim.ema_decay was 0): starting it from the "
                         "resumed weights")
                self.ema = EMA(self.model, self.cfg.optim.ema_decay)
        self.state = FitState(ck["reader"]["epoch"], ck["reader"]["position"], ck["step"])

    def payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "reader": {"epoch": self.state.epoch, "position": self.state.position},
            "step": self.state.step,
            "world_size": self.dist.world,
            "config": self.cfg.to_dict(),
            "datasets": self.info["datasets"],
            "class_names": self.names,
            # the precision the weights were trained in (optim.amp resolved on this device), which
            # inference uses: a model trained in fp32 on a CPU is not run in fp16 on a GPU
            "trained_amp": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "off"),
            "stream": {k: v for k, v in self.info.items() if k != "datasets"},
        }

    def checkpoint(self) -> None:
        # every rank checks (DDP keeps the weights equal), so all stop together
        bad = next((n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            kept = (f"{self.ckpt_path} keeps step {self.saved_step}" if self.saved_step is not None
                    else "no checkpoint was written")
            raise RunFailed(f"training diverged by step {self.state.step}: the weights ({bad}) hold inf or NaN; "
                            f"{kept}. Lower optim.lr (now {self.cfg.optim.lr:g}) or keep optim.clip > 0 "
                            f"(now {self.cfg.optim.clip:g})")
        if self.dist.main:
            save_checkpoint(self.ckpt_path, self.payload())
        self.saved_step = self.state.step

    # -- steps ----------------------------------------------------------------------------------
    def optimizer_step(self, micro: int | None = None) -> None:
        """One optimiser step on the accumulated gradients of ``micro`` micro-batches (default
        ``optim.accumulate``; a partial group at an epoch's end is rescaled to a mean over its
        ``micro`` batches, since each backward divided its loss by ``optim.accumulate``)."""
        o = self.cfg.optim
        if micro is not None and 0 < micro < o.accumulate:
            with torch.no_grad():
                for p in self.model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(o.accumulate / micro)
        if o.clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, self.state.step)
        self.state.step += 1

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, sync: bool) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.ddp if self.ddp is not None else self.model
        ctx = contextlib.nullcontext() if (sync or self.ddp is None) else self.ddp.no_sync()  # type: ignore[operator]
        with ctx:
            with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                logits = net(x)
            loss = dice_focal_loss(logits, y, self.cfg.loss)
            self.scaler.scale(loss / self.cfg.optim.accumulate).backward()
        return loss.detach(), logits.detach()

    def _stop_agreed(self, stop: bool) -> bool:
        """All ranks stop together (the wall-clock limit can trip on one rank first)."""
        if self.dist.world == 1:
            return stop
        flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
        torch.distributed.all_reduce(flag)
        return bool(flag.item() > 0)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, progress: Progress | None = None) -> FitResult:
        try:
            return self._fit(progress)
        finally:
            self.release()

    def _fit(self, progress: Progress | None = None) -> FitResult:
        cfg, o, st = self.cfg, self.cfg.optim, self.state
        start_step = st.step
        if self.dist.main:
            self.run.mkdir(parents=True, exist_ok=True)
            if self.lock is None:
                self.lock = RunLock(self.run)
            if self.saved_step is None:  # starting over: lines of an attempt stopped before its first checkpoint go
                self.metrics_path.unlink(missing_ok=True)
            elif self.resumed_from is not None:  # config.json is replaced below: the log keeps the earlier one
                _append_line(self.metrics_path, resume_record(self.resumed_from, cfg.to_dict(), st))
                self.resumed_from = None
            (self.run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        t0 = time.monotonic()

        def out_of_budget() -> bool:
            return (o.max_steps > 0 and st.step >= o.max_steps) or (
                o.max_minutes > 0 and time.monotonic() - t0 >= 60.0 * o.max_minutes)

        stopped = self._stop_agreed(out_of_budget())
        self.model.train()
        while st.epoch < o.epochs and not stopped:
            self.stream.set_state(st.epoch, st.position)
            meter = _Meter(cfg.model.out_channels, len(self.stream.plan()), t0)
            n_mine, k_mine, micro = len(self.stream), 0, 0
            nw = cfg.data.num_workers
            loader = DataLoader(self.stream, batch_size=None, num_workers=nw,
                                pin_memory=self.device.type == "cuda",
                                multiprocessing_context="spawn" if nw > 0 else None)
            for batch in _batches(loader):
                if self.device.type != "cpu":  # the loss checks targets on the host only
                    check_target(batch["target"], cfg.model.out_channels, cfg.loss.ignore_index)
                x = batch["image"].to(self.device, non_blocking=True)
                y = batch["target"].to(self.device, non_blocking=True)
                k_mine += 1
                # gradients are all-reduced on the micro-batch that completes an accumulation
                # group, and on the epoch's last one (a partial group steps too, below)
                loss, logits = self.forward_backward(x, y, sync=micro + 1 >= o.accumulate or k_mine == n_mine)
                meter.add(loss, logits, y, batch["real"], cfg.loss.ignore_index)
                micro += 1
                st.position = next_position(int(batch["index"]), self.dist.world)
                if micro < o.accumulate:
                    continue
                micro = 0
                self.optimizer_step()
                self._after_step(meter, progress, force_log=out_of_budget())
                if self._stop_agreed(out_of_budget()):
                    stopped = True
                    break
            if stopped:
                break
            if micro:  # partial accumulation at the epoch's end: step with what was accumulated
                self.optimizer_step(micro)
                self._after_step(meter, progress, force_log=True)
            st.epoch, st.position = st.epoch + 1, 0
            self._end_of_epoch(progress, t0)
            stopped = self._stop_agreed(out_of_budget())
        self.checkpoint()
        if self.dist.main:
            _plot(self.run)
        return FitResult(self.run, self.ckpt_path, st.step, st.epoch, st.epoch >= o.epochs, start_step)

    def _after_step(self, meter: _Meter, progress: Progress | None, force_log: bool) -> None:
        st, every = self.state, self.cfg.run
        # a line at each checkpoint too: a run resumed from one starts its meter there, as the
        # uninterrupted run's meter does after that line (else their next lines averaged other steps)
        at_checkpoint = st.step % every.checkpoint_every == 0
        if self.dist.main and (st.step % every.log_every == 0 or force_log or at_checkpoint):
            rec = meter.record(self.names, st.step, st.epoch, st.position, self.optimizer.param_groups[0]["lr"])
            _append_line(self.metrics_path, rec)
            if progress:
                progress({**rec, "n_batches": meter.n_batches})
        if st.step % every.checkpoint_every == 0:
            self.checkpoint()

    def _end_of_epoch(self, progress: Progress | None, t0: float) -> None:
        if self.val_sources and self.dist.main:
            eval_model = self.ema.model if self.ema else self.model
            cms = validate_model(eval_model, self.val_sources, self.cfg, self.device)
            rec = {"kind": "val", "step": self.state.step, "epoch": self.state.epoch, "axes": self.cfg.data.axes,
                   "datasets": self.val_datasets, "max_samples": self.cfg.data.val_max_samples,
                   **validation_record(cms, self.names), "elapsed_s": time.monotonic() - t0}
            _append_line(self.metrics_path, rec)
            if progress:
                progress(rec)
            self.model.train()
        self.checkpoint()
        if self.dist.main:
            _plot(self.run)


def fit(cfg: TrainConfig, progress: Progress | None = None) -> FitResult:
    """Train (or resume) the run described by ``cfg``; returns where the checkpoint is."""
    dist = _dist_from_env()
    if dist.world > 1:
        _die_with_launcher()
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.run.device != "cpu" else "gloo"
        # rank 0 validates whole volumes after each epoch while the others wait in a collective:
        # allow longer than the default 10 minutes
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    try:
        return Trainer(cfg, dist).fit(progress)
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _plot(run: Path) -> None:
    from simaq_train.plots import plot_metrics

    try:
        plot_metrics(run / "metrics.jsonl", run / "metrics.png")
    except Exception as err:  # noqa: BLE001 - a plot never fails a run
        log.warning("metrics plot failed: %s", err)
