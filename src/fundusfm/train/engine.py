"""The training engine: one run = pretraining or fine-tuning of one task/fold/fraction/seed.

``Trainer(run).fit()`` trains with validation each epoch, keeps the best epoch by a
named metric, stops early, checkpoints atomically to ``OUT/.resume/`` after every epoch
and on SIGTERM/SIGUSR1 (then exits with :data:`EXIT_PREEMPTED`), resumes from there
when rerun, and writes the outputs of the contract only at the very end.
Under ``torchrun`` (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import timm.optim
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from fundusfm import layout
from fundusfm.fileio import atomic_write, atomic_write_many, csv_writer
from fundusfm.models import load_init
from fundusfm.models.factory import build, input_norm
from fundusfm.models.factory import classifier_name
from fundusfm.models.io import resolve_device
from fundusfm.task import TaskSpec, predictions_frame
from fundusfm.train.data import (
    CpuAugment,
    EpochBatchSampler,
    FundusDataset,
    GpuAugment,
    ShardBatchSampler,
    image_digests,
    sample_weights,
)
from fundusfm.train.metrics import effective_monitor, is_better, monitor_value
from fundusfm.train.resume import STATE_FILE, ResumeError, load_state, save_state
from fundusfm.train.sets import MODEL_INIT_SALT, encode_targets, mix_seed, read_task_table, select_sets

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed on a signal, rerun to resume
RESUME_DIR = ".resume"


class Preempted(Exception):
    """Raised after the resume checkpoint was written on SIGTERM / SIGUSR1."""


@dataclass
class RunSpec:
    """Everything one training run needs (the resolved CLI arguments)."""

    table: str
    fold: int
    fraction: float
    seed: int
    task: TaskSpec
    init: str
    hparams: dict
    out: str
    init_name: str | None = None
    trust_pickle: bool = False
    allow_partial: bool = False
    checkpoint_format: str = "auto"
    key_map: dict = field(default_factory=dict)
    external: list[str] = field(default_factory=list)
    device: str = "auto"
    workers: int | None = None

    def fingerprint(self) -> dict:
        """What must not change between a run and its resumption."""
        d = asdict(self)
        d["task"] = self.task.as_dict()
        for volatile in ("device", "workers", "out"):
            d.pop(volatile)
        return d


# ----------------------------------------------------------------------------- helpers


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(choice: str, local_rank: int) -> torch.device:
    """:func:`~fundusfm.models.io.resolve_device`, on this process's GPU under DDP."""
    dev = resolve_device(choice)
    if dev.type != "cuda":
        return dev
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def lr_at(step: float, total: float, warmup: float, base: float, floor: float) -> float:
    """Linear warmup then cosine decay to ``floor`` (steps may be fractional)."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1.0, total - warmup))
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * t))


def augments_on_device(choice: str, cuda: bool) -> bool:
    """Where training batches are augmented: ``auto`` puts a CUDA job's augmentation on the
    device (its workers only decode) and a CPU job's in the workers; both paths draw the
    same distribution from the same per-sample seeds."""
    return choice == "gpu" or (choice == "auto" and cuda)


def _worker_init(_: int) -> None:
    import cv2

    torch.set_num_threads(1)  # workers decode/augment; the main process owns the cores
    cv2.setNumThreads(1)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """One training run; see the module docstring."""

    def __init__(self, spec: RunSpec):
        self.spec, self.hp, self.task = spec, spec.hparams, spec.task
        self.t_start = time.time()
        self.out = Path(spec.out)
        self.resume_dir = self.out / RESUME_DIR
        self.rank, self.world, self.local_rank = _dist_info()
        self.device = pick_device(spec.device, self.local_rank)
        self.cuda = self.device.type == "cuda"
        self._signal: int | None = None
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.cuda else "gloo")
        if self.hp["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
            if self.cuda:
                torch.backends.cudnn.benchmark = False
        elif self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    # -- setup -------------------------------------------------------------------------

    def _setup(self) -> None:
        spec, hp = self.spec, self.hp
        df, col = read_task_table(spec.table, spec.fold)
        self.sets = select_sets(df, col, table=spec.table, task=self.task, fraction=spec.fraction, seed=spec.seed,
                                hparams=hp, external=spec.external)
        self.targets = {k: encode_targets(v, self.task, f"{spec.table} [{k}]") for k, v in self.sets.items()}
        log.info("rows: %s", {k: len(v) for k, v in self.sets.items()})

        torch.manual_seed(mix_seed(spec.seed, MODEL_INIT_SALT))
        self.model = build(hp, self.task.num_outputs)
        self.state = self._load_resume()
        if self.state is None:
            self.init_report = load_init(self.model, spec.init, trust_pickle=spec.trust_pickle,
                                         allow_partial=spec.allow_partial,
                                         imagenet_weights=hp["imagenet_weights"],
                                         checkpoint_format=spec.checkpoint_format, key_map=spec.key_map,
                                         carry_head=hp["carry_head"],
                                         conversions=layout.conversions_dir_of(spec.out)).to_dict()
        else:
            self.model.load_state_dict(self.state["model"])
            self.init_report = self.state["init_report"]
        mean, std = input_norm(self.model, hp["mean"], hp["std"])
        self.mean_std = (mean, std)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.head_prefix = classifier_name(self.model) + "."
        self.head = self.model.get_submodule(classifier_name(self.model))
        if hp["mode"] == "linear_probe":
            for name, p in self.model.named_parameters():
                p.requires_grad = name.startswith(self.head_prefix)
        memfmt = torch.channels_last if hp["channels_last"] else torch.contiguous_format
        self.memfmt = memfmt
        self.model.to(self.device, memory_format=memfmt)

        self.net: nn.Module = self.model
        if self.world > 1:
            if self.cuda and hp["sync_bn"] and hp["mode"] == "full":
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            self.net = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.local_rank] if self.cuda else None)
        if hp["compile"]:
            self.net = torch.compile(self.net)

        trainable = self.model if hp["mode"] == "full" else self.head
        self.optimizer = timm.optim.create_optimizer_v2(
            trainable, opt="adamw", lr=hp["lr"], weight_decay=hp["weight_decay"],
            layer_decay=hp["layer_decay"] if hp["mode"] == "full" else None,
            **({"fused": True} if self.cuda else {}))
        if self.state is not None:
            self.optimizer.load_state_dict(self.state["optimizer"])
        self.loss_fn = self._make_loss(self.targets["train"])
        self._make_loaders()
        self.monitor, self.monitor_note = self._resolve_monitor()

    def _resolve_monitor(self) -> tuple[str, str]:
        """The metric that selects epochs (:func:`~fundusfm.train.metrics.effective_monitor`);
        a fallback is warned in the log and recorded in every history row (column
        ``monitor_fallback``: 1 = selected on the validation loss because the asked-for
        metric is undefined; numeric, as MLflow wants)."""
        wanted = self.hp["monitor"]
        y = self.targets.get("val") if self.val_loader is not None else None
        monitor, note = effective_monitor(wanted, self.task, y)
        if monitor != wanted:
            log.warning("val_%s is undefined on the validation set (%d images; one class only or a class absent): "
                        "epochs are selected on the validation loss instead", wanted, len(y))
        return monitor, note

    def _make_loss(self, y: np.ndarray):
        hp, task = self.hp, self.task
        smooth = float(hp["label_smoothing"])
        if not task.multilabel:
            weight = None
            if hp["imbalance"] == "pos_weight":
                counts = np.bincount(y, minlength=task.num_outputs).astype(np.float64)
                weight = torch.tensor(len(y) / (task.num_outputs * np.maximum(counts, 1)), dtype=torch.float32,
                                      device=self.device)

            def weighted_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                # mean over samples, not over the weight sum: DDP shard means then average exactly
                return F.cross_entropy(logits, target, weight=weight, label_smoothing=smooth,
                                       reduction="none").mean()

            return weighted_ce
        pos_weight = None
        if hp["imbalance"] == "pos_weight":
            pos = np.nansum(y, 0)
            neg = np.sum(~np.isnan(y), 0) - pos
            pos_weight = torch.tensor(np.clip(neg / np.maximum(pos, 1), 0.0, 100.0), dtype=torch.float32,
                                      device=self.device)

        def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            known = ~torch.isnan(target)
            t = torch.nan_to_num(target) * (1 - smooth) + 0.5 * smooth
            per = F.binary_cross_entropy_with_logits(logits, t, pos_weight=pos_weight, reduction="none")
            # normalise by the batch size, not the known count: DDP shards then average exactly
            return (per * known).sum() / target.shape[0]

        return masked_bce

    def _loader_kwargs(self, workers: int) -> dict:
        kw: dict = {"num_workers": workers, "pin_memory": self.cuda}
        if workers > 0:
            kw.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
        return kw

    def _make_loaders(self) -> None:
        hp, spec = self.hp, self.spec
        workers = spec.workers
        if workers is None:
            # the CPUs this process may use (a SLURM allocation, taskset), not the node's
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = min(8, cpus // max(1, self.world)) if self.cuda else 0
        self.workers = workers
        local_bs = max(1, hp["batch_size"] // self.world)
        self.eval_bs = hp["eval_batch_size"] or 2 * local_bs
        gpu_aug = augments_on_device(hp["augment_device"], self.cuda)
        self.gpu_augment = GpuAugment(hp["augment"]) if gpu_aug else None
        tf = None if gpu_aug else CpuAugment(hp["augment"], hp["img_size"])
        ytr = self.targets["train"]
        weights = sample_weights(ytr, self.task) if hp["imbalance"] == "balanced_sampler" else None
        self.train_sampler = EpochBatchSampler(len(ytr), hp["batch_size"], spec.seed, rank=self.rank,
                                               world=self.world, weights=weights)
        if len(self.train_sampler) == 0:
            raise ValueError(f"{len(ytr)} training images are too few for one batch across {self.world} process(es)")
        train_ds = FundusDataset(self.sets["train"]["image"].tolist(), ytr, hp["img_size"], tf,
                                 digests=image_digests(self.sets["train"]))
        self.train_loader = DataLoader(train_ds, batch_sampler=self.train_sampler, **self._loader_kwargs(workers))
        self.val_loader = self._eval_loader("val", persistent=True) if len(self.sets["val"]) else None

    def _eval_loader(self, name: str, persistent: bool = False) -> DataLoader:
        ds = FundusDataset(self.sets[name]["image"].tolist(), self.targets[name], self.hp["img_size"],
                           digests=image_digests(self.sets[name]))
        kw = self._loader_kwargs(self.workers if persistent else min(self.workers, 4))
        if not persistent:
            kw.pop("persistent_workers", None)
        return DataLoader(ds, batch_sampler=ShardBatchSampler(len(ds), self.eval_bs, self.rank, self.world), **kw)

    # -- resume -------------------------------------------------------------------------

    def _load_resume(self) -> dict | None:
        path = self.resume_dir / STATE_FILE
        if not path.is_file():
            return None
        state = load_state(path)  # tensors and plain values only: a planted object is refused, never run
        old, new = state["fingerprint"], json.loads(json.dumps(self.spec.fingerprint()))
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ResumeError(
                f"{path} belongs to a run with different settings ({diff}); delete {self.resume_dir} "
                "to start afresh or rerun with the original arguments")
        log.info("resuming from %s: epoch %d step %d", path, state["epoch"], state["step"])
        return state

    def _save_resume(self, epoch: int, step: int, acc: dict) -> None:
        if self.rank != 0:
            return
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "fingerprint": json.loads(json.dumps(self.spec.fingerprint())),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch, "step": step, "acc": acc,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if self.cuda else None,
            "history": self.history, "best": self.best, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "init_report": self.init_report,
        }
        atomic_write(self.resume_dir / STATE_FILE, lambda p: save_state(state, p))

    # -- signals ----------------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        log.warning("received signal %d: checkpointing at the end of this step", signum)
        self._signal = signum

    def _stop_requested(self) -> bool:
        flag = self._signal is not None
        if self.world > 1:
            t = torch.tensor([int(flag)], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    # -- loop ---------------------------------------------------------------------------------

    def _prepare(self, x: torch.Tensor, seeds: list[int] | None) -> torch.Tensor:
        # NHWC uint8 from the loader (FundusDataset): permuted on the device, channels_last
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        if self.gpu_augment is not None and seeds is not None:
            x = self.gpu_augment(x, seeds)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memfmt)

    def _autocast(self):
        if self.cuda and self.hp["amp"] == "bf16":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _train_mode(self) -> None:
        if self.hp["mode"] == "linear_probe":
            self.model.eval()  # frozen backbone keeps its BatchNorm statistics
            self.head.train()
        else:
            self.model.train()

    def train_one_epoch(self, epoch: int, start_step: int = 0, acc: dict | None = None) -> float:
        """Train one epoch (from ``start_step``); returns the mean training loss over all ranks."""
        hp = self.hp
        self._train_mode()
        self.train_sampler.set_epoch(epoch, start_step)
        sizes = self.train_sampler.global_sizes()
        steps_per_epoch = len(sizes)
        total = hp["epochs"] * steps_per_epoch
        warm = hp["warmup_epochs"] * steps_per_epoch
        loss_sum = torch.tensor(acc["loss_sum"] if acc else 0.0, device=self.device, dtype=torch.float64)
        n_seen = torch.tensor(acc["n_seen"] if acc else 0.0, device=self.device, dtype=torch.float64)
        first_bad = torch.tensor(-1, device=self.device)
        # the step number on the device: a per-step torch.tensor(step, device=cuda) would be a
        # blocking copy that waits for the GPU queue, so the host could never run ahead
        step_dev = torch.tensor(start_step, device=self.device)
        check_every = 1 if not self.cuda else max(1, hp["log_every"])
        bar = tqdm(self.train_loader, desc=f"epoch {epoch}", initial=start_step, total=steps_per_epoch,
                   disable=self.rank != 0 or not sys.stderr.isatty(), leave=False)
        step = start_step - 1
        for step, (x, y, _) in enumerate(bar, start=start_step):
            lr = lr_at(epoch * steps_per_epoch + step, total, warm, hp["lr"], hp["min_lr"])
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            x = self._prepare(x, self.train_sampler.aug_seeds(step))
            y = y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.net(x)
            loss = self.loss_fn(logits.float(), y)
            n_local = y.shape[0]
            # scale so that DDP's gradient average equals the single-process batch mean
            scaled = loss * (n_local * self.world / sizes[step])
            self.optimizer.zero_grad(set_to_none=True)
            scaled.backward()
            if hp["grad_clip"]:
                nn.utils.clip_grad_norm_(self.model.parameters(), hp["grad_clip"])
            self.optimizer.step()
            ld = loss.detach()
            loss_sum += ld.double() * n_local
            n_seen += n_local
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(ld), step_dev, first_bad)
            step_dev += 1
            if (step + 1) % check_every == 0 or step + 1 == steps_per_epoch:
                self._check_finite(first_bad, epoch)
                if self._stop_requested():
                    self._save_resume(epoch, step + 1, {"loss_sum": float(loss_sum), "n_seen": float(n_seen)})
                    raise Preempted(f"stopped by signal {self._signal} at epoch {epoch} step {step + 1}")
            if self.rank == 0 and hp["log_every"] and (step + 1) % hp["log_every"] == 0:
                log.info("epoch %d step %d/%d loss %.4f lr %.3g", epoch, step + 1, steps_per_epoch,
                         float(ld), lr)
        self._check_finite(first_bad, epoch)
        tot = torch.stack([loss_sum, n_seen])
        if self.world > 1:
            dist.all_reduce(tot)
        self.last_lr = lr_at(epoch * steps_per_epoch + max(step, 0), total, warm, hp["lr"], hp["min_lr"])
        return float(tot[0] / max(tot[1], 1))

    def _check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        t = first_bad.clone()
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if int(t) >= 0:
            raise FloatingPointError(
                f"non-finite training loss at epoch {epoch} step {int(t)} (lr {self.hp['lr']}); "
                "lower the learning rate, check the labels, or set amp='none'")

    @torch.no_grad()
    def predict(self, loader: DataLoader) -> np.ndarray:
        """Logits (float32, table order) of a set, gathered over ranks.

        Always in float32, without autocast: validation, test and external predictions
        (``fundusfm infer``) then share one numeric precision, whatever ``hparams.amp``
        does to training steps."""
        self.model.eval()
        idx_parts, out_parts = [], []
        for x, _, idx in loader:
            logits = self.model(self._prepare(x, None))
            idx_parts.append(idx.numpy())
            out_parts.append(logits.float().cpu().numpy())
        k = self.task.num_outputs
        idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
        out = np.concatenate(out_parts) if out_parts else np.zeros((0, k), dtype=np.float32)
        if self.world > 1:
            parts: list = [None] * self.world
            dist.all_gather_object(parts, (idx, out))
            idx = np.concatenate([p[0] for p in parts])
            out = np.concatenate([p[1] for p in parts])
        full = np.zeros((len(loader.dataset), k), dtype=np.float32)
        full[idx] = out
        return full

    def _probs_and_loss(self, logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        lt = torch.from_numpy(logits)
        if self.task.multilabel:
            yt = torch.from_numpy(np.array(y, dtype=np.float32))
            known = ~torch.isnan(yt)
            per = F.binary_cross_entropy_with_logits(lt, torch.nan_to_num(yt), reduction="none")
            loss = float((per * known).sum() / known.sum().clamp(min=1))
            return torch.sigmoid(lt).numpy(), loss
        loss = float(F.cross_entropy(lt, torch.from_numpy(np.array(y)))) if len(y) else math.nan
        return torch.softmax(lt, 1).numpy(), loss

    # -- outputs -------------------------------------------------------------------------------

    def predictions_frame(self, name: str, prob: np.ndarray) -> pd.DataFrame:
        """A predictions CSV of the contract for set ``name``."""
        return predictions_frame(self.sets[name], self.targets[name], prob, self.task)

    def _write_outputs(self, best_state: dict[str, torch.Tensor]) -> None:
        hp, spec = self.hp, self.spec
        self.out.mkdir(parents=True, exist_ok=True)
        preds = {}
        for name in self.sets:
            if name == "train":
                continue
            if name == "val":
                loader = self.val_loader
            else:
                loader = self._eval_loader(name) if len(self.sets[name]) else None
            logits = self.predict(loader) if loader is not None else np.zeros((0, self.task.num_outputs), np.float32)
            prob, _ = self._probs_and_loss(logits, self.targets[name])
            preds[name] = self.predictions_frame(name, prob)
        if self.rank != 0:
            return
        meta = {
            "arch": hp["arch"], "head": hp["head"], "num_classes": self.task.num_outputs,
            "classes": list(self.task.names), "task_type": self.task.type, "task": self.task.as_dict(),
            "img_size": hp["img_size"], "model_args": hp["model_args"], "mean": self.mean_std[0],
            "std": self.mean_std[1], "init": spec.init_name or spec.init, "init_spec": spec.init, "init_report": self.init_report,
            "preprocessing": {"input": "processed fundus image (FOV centred, square, black outside)",
                              "resize": "to img_size: OpenCV area filter when shrinking, bilinear when enlarging",
                              "scale": "1/255", "mean": self.mean_std[0], "std": self.mean_std[1], "channels": "RGB"},
            "monitor": self.monitor, "monitor_requested": hp["monitor"], "monitor_note": self.monitor_note,
            "best_epoch": self.best_epoch, "best_value": self.best,
            "mode": hp["mode"], "fold": spec.fold, "fraction": spec.fraction, "seed": spec.seed,
        }
        config = {**spec.fingerprint(), "device": str(self.device), "workers": self.workers,
                  "augmented_on": "device" if self.gpu_augment is not None else "loader workers",
                  "world_size": self.world, "n_images": {k: len(v) for k, v in self.sets.items()},
                  "versions": {"torch": torch.__version__, "timm": timm.__version__},
                  "resources": self.resources()}
        hist = pd.DataFrame(self.history)
        writes = [(f"predictions_{k}.csv", csv_writer(d)) for k, d in preds.items()]
        writes += [
            ("history.csv", csv_writer(hist)),
            ("train_config.json", lambda p: p.write_text(json.dumps(config, indent=2, default=str))),
            ("model.safetensors", lambda p: save_file({k: v.contiguous() for k, v in best_state.items()}, str(p))),
            ("model.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=str))),
        ]
        # write everything under temporary names first, then rename: all or nothing appears
        atomic_write_many([(self.out / fname, write) for fname, write in writes])

    def resources(self) -> dict:
        """What this run used, to size cluster requests: wall and CPU seconds of this
        process, its peak RSS and (CUDA) its peak GPU memory. Loader workers not included."""
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        rec = {"wall_s": round(time.time() - self.t_start, 1), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
               "max_rss_mb": round(ru.ru_maxrss / 1024, 1)}  # Linux reports kB
        if self.cuda:
            rec["max_gpu_mem_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return rec

    # -- main ------------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train (or resume) to the end and write the outputs."""
        handlers = {}
        if threading_main():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._fit()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _fit(self) -> None:
        hp, spec = self.hp, self.spec
        self._setup()
        st = self.state or {}
        self.history: list[dict] = st.get("history", [])
        self.best: float | None = st.get("best")
        self.best_epoch: int | None = st.get("best_epoch")
        self.bad_epochs: int = st.get("bad_epochs", 0)
        start_epoch, start_step, acc = st.get("epoch", 0), st.get("step", 0), st.get("acc")
        if start_step and st.get("rng_cpu") is not None:
            torch.set_rng_state(st["rng_cpu"])
            if self.cuda and st.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(st["rng_cuda"])
        best_path = self.resume_dir / "best.safetensors"
        monitor = self.monitor
        stopped_early = start_epoch >= hp["epochs"] or (hp["patience"] and self.bad_epochs >= hp["patience"])
        epoch = start_epoch
        while not stopped_early and epoch < hp["epochs"]:
            t0 = time.time()
            if not start_step:
                torch.manual_seed(mix_seed(spec.seed, epoch, 7))  # dropout etc.: a function of the epoch
                if self.cuda:
                    torch.cuda.manual_seed_all(mix_seed(spec.seed, epoch, 7))
            train_loss = self.train_one_epoch(epoch, start_step, acc)
            start_step, acc = 0, None
            row = {"epoch": epoch, "train_loss": train_loss}
            if self.val_loader is not None:
                logits = self.predict(self.val_loader)
                prob, val_loss = self._probs_and_loss(logits, self.targets["val"])
                value = monitor_value(monitor, self.task, self.targets["val"], prob, val_loss)
                if monitor != hp["monitor"]:  # the asked-for metric is recorded too (NaN: undefined)
                    row[f"val_{hp['monitor']}"] = monitor_value(hp["monitor"], self.task, self.targets["val"], prob,
                                                                val_loss)
            else:
                val_loss, value = math.nan, -train_loss if monitor != "loss" else train_loss
            # no validation set: the epoch is chosen on the training loss, and the history
            # says so (an empty val_<monitor>) instead of filing it as a validation metric
            shown = value if self.val_loader is not None else math.nan
            row.update({"val_loss": val_loss, f"val_{monitor}": shown,
                        "monitor_fallback": int(monitor != hp["monitor"]),
                        "lr": self.last_lr, "time": round(time.time() - t0, 3)})
            self.history.append(row)
            improved = is_better(monitor, value, self.best) or self.best_epoch is None
            if improved:
                self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
                if self.rank == 0:
                    self.resume_dir.mkdir(parents=True, exist_ok=True)
                    sd = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
                    atomic_write(best_path, lambda p: save_file(sd, str(p)))
            else:
                self.bad_epochs += 1
            if self.rank == 0:
                log.info("epoch %d: train_loss %.4f val_loss %.4f val_%s %.4f%s (%.1fs)", epoch, train_loss,
                         val_loss, monitor, value, " *" if improved else "", row["time"])
            epoch += 1
            self._save_resume(epoch, 0, {})
            if self.world > 1:
                dist.barrier()
            if self._stop_requested():
                raise Preempted(f"stopped by signal {self._signal} after epoch {epoch - 1}")
            if hp["patience"] and self.bad_epochs >= hp["patience"]:
                log.info("early stopping: no improvement of val_%s for %d epochs", monitor, self.bad_epochs)
                break
        best_state = load_file(str(best_path))
        self.model.load_state_dict(best_state)
        self._write_outputs(best_state)
        if self.world > 1:
            dist.barrier()
        if self.rank == 0:
            shutil.rmtree(self.resume_dir, ignore_errors=True)
        log.info("finished: best val_%s %.4f at epoch %s; outputs in %s; used %s", monitor,
                 self.best or math.nan, self.best_epoch, self.out, self.resources())


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(spec: RunSpec) -> None:
    """Run a training to completion (raises :class:`Preempted` on SIGTERM/SIGUSR1)."""
    Trainer(spec).fit()
