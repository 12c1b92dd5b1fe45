"""One training loop for every method, as Dassl's: SGD (momentum 0.9, wd 5e-4), one constant
warm-up epoch at 1e-5, then cosine over the epochs, stepped per epoch; last-epoch model.

The loops of the adapter and LoRA baselines differ and are settings (``TrainConfig``): torch's
AdamW instead of SGD; ``iter_cosine``, CosineAnnealingLR stepped every iteration with T_max = all
iterations (Tip-Adapter-F: epochs x batches per epoch; CLIP-LoRA: its iteration count, down to
``min_lr``), no warm-up; an iteration count instead of epochs (the last epoch is cut where the
count is reached); the last incomplete batch kept (``drop_last=False``); another crop scale.

Each epoch's shuffling draws from a generator seeded by (seed, epoch) and in-forward sampling from
the global generator seeded so; the augmentation of each image is keyed by (seed, epoch, image)
(``engine/augment.py``). A method whose image encoder is frozen and unprompted (``view_store``)
trains from the encoder's output on every view of the epoch, computed in one canonical pass
(image order, fixed chunks) or read from the training-view store (``engine/views.py``): the same
bits either way, whatever the method's batch size. A checkpoint (learned state + every optimiser buffer: SGD's momentum, AdamW's step, exp_avg and
exp_avg_sq; the fp16 loss scaler) is written after every epoch, so a run killed at any point
resumes from its last finished epoch and ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler

from cpbench.config import TrainConfig
from cpbench.data.images import ImageList, to_model_input, train_pixels
from cpbench.data.splits import Item
from cpbench import faults
from cpbench.data.images import describe
from cpbench.engine import checkpoint
from cpbench.engine.augment import KeyedImageList
from cpbench.engine.features import cached_views, image_dtype, train_preprocess
from cpbench.engine.views import ViewStore, encode_views
from cpbench.engine.precision import Precision, epoch_seed
from cpbench.methods.base import Method
from cpbench.threads import loader_worker_init

DECODED_BUDGET = 2 << 30  # bytes of decoded training images kept in memory across epochs



@dataclass(frozen=True)
class EpochStats:
    """One finished epoch: what the display shows and ``history.parquet`` keeps (one row each)."""
    epoch: int                  # 0-based
    epochs: int
    lr: float                   # the epoch's learning rate
    loss: float                 # mean over the epoch's batches of the summed loss
    terms: dict[str, float]     # mean of each loss term ({"ce": …, "kl": …})
    train_acc: float | None     # percent of training samples the training logits got right
    seconds: float              # wall time of the epoch

    def as_row(self) -> dict:
        return {"epoch": self.epoch + 1, "epochs": self.epochs, "lr": self.lr, "loss": self.loss,
                **{f"loss_{k}": v for k, v in self.terms.items()},
                "train_acc": float("nan") if self.train_acc is None else self.train_acc, "seconds": self.seconds}


EpochCallback = Callable[[EpochStats, list[dict]], None]  # (the epoch, the history so far as rows)
# (0-based epoch, batch, batches, running mean loss of the epoch, lr)
BatchCallback = Callable[[int, int, int, float, float], None]


@dataclass
class TrainResult:
    epochs: int
    seconds: float
    resumed_from: int | None
    last_loss: float | None
    images_seen: int
    history: list[dict] = field(default_factory=list)   # EpochStats.as_row() of every epoch, resumed ones too


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``epoch``: constant warm-up, then cosine with T_max = epochs."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    t = epoch - cfg.warmup_epochs
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / max(1, cfg.epochs)))


def lr_at_step(step: int, total: int, cfg: TrainConfig) -> float:
    """``iter_cosine``: the learning rate of (0-based) iteration ``step`` of ``total``, torch's
    CosineAnnealingLR (T_max = total, eta_min = min_lr) after ``step`` scheduler steps, in closed form."""
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * step / max(1, total)))


def batches_per_epoch(n_items: int, cfg: TrainConfig) -> int:
    """Batches of one epoch over ``n_items`` images (the last incomplete one dropped when
    ``drop_last`` and the set holds at least one full batch, as Dassl)."""
    if cfg.drop_last and n_items >= cfg.batch_size:
        return n_items // cfg.batch_size
    return -(-n_items // cfg.batch_size)


def planned_epochs(cfg: TrainConfig, n_items: int) -> int:
    """Epochs a training runs: ``epochs``, or as many as ``iterations`` need (the last one cut)."""
    if cfg.iterations:
        return -(-cfg.iterations // max(1, batches_per_epoch(n_items, cfg))) if n_items else 0
    return cfg.epochs


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _optimizer_state(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Every tensor of the optimiser's per-parameter state (SGD: momentum_buffer; AdamW: step,
    exp_avg, exp_avg_sq), as ``__optim__.<param index>.<name>``."""
    out = {}
    for i, p in enumerate(params):
        for name, buf in opt.state.get(p, {}).items():
            if torch.is_tensor(buf):
                out[f"__optim__.{i}.{name}"] = buf
    return out


def _load_optimizer_state(opt, params, tensors: dict[str, torch.Tensor]) -> None:
    prefix = "__optim__."
    for key, buf in tensors.items():
        if not key.startswith(prefix):
            continue
        i, name = key[len(prefix):].split(".", 1)
        p = params[int(i)]
        # AdamW keeps ``step`` as a float32 CPU tensor (torch's own load_state_dict leaves it as is)
        opt.state[p][name] = buf.clone() if name == "step" else buf.to(p.device, p.dtype).clone()


def _scaler_state(scaler) -> dict[str, torch.Tensor]:
    """fp16 loss-scaler state (scale, growth tracker), so a resumed run scales as an uninterrupted one."""
    if scaler is None or not scaler.is_enabled():
        return {}
    st = scaler.state_dict()
    if not st:
        return {}
    return {"__scaler__.scale": torch.tensor([float(st["scale"])], dtype=torch.float64),
            "__scaler__.growth_tracker": torch.tensor([int(st["_growth_tracker"])], dtype=torch.int64)}


def _load_scaler_state(scaler, tensors: dict[str, torch.Tensor]) -> None:
    if scaler is None or "__scaler__.scale" not in tensors:
        return
    st = scaler.state_dict()
    st.update(scale=float(tensors["__scaler__.scale"][0]), _growth_tracker=int(tensors["__scaler__.growth_tracker"][0]))
    scaler.load_state_dict(st)


def batch_loss(method: Method, inputs: torch.Tensor, labels: torch.Tensor, precision: Precision,
               device: torch.device, features: bool = False, frozen: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(summed weighted loss, logits, loss terms) of one batch: images, (``features``) cached
    normalised image features, or (``frozen``) the frozen image encoder's output on the images."""
    with precision.autocast(device):
        if frozen:
            logits, losses = method.forward_train_frozen(inputs, labels)
        elif features:
            logits, losses = method.forward_train_features(inputs, labels)
        else:
            logits, losses = method.forward_train(inputs, labels)
        return sum(losses.values()), logits, losses


def _unscaled(loss: torch.Tensor) -> torch.Tensor:
    return loss


def _correct(logits, labels: torch.Tensor) -> int | None:
    """Training samples the logits classify right (no extra forward pass); None if the method's
    first output is not [batch, classes] logits."""
    if not torch.is_tensor(logits) or logits.dim() != 2 or logits.shape[0] != labels.shape[0]:
        return None
    return int((logits.detach().argmax(dim=1) == labels).sum())


def _feature_batches(views: torch.Tensor, labels: torch.Tensor, batch_size: int, drop_last: bool,
                     gen: torch.Generator):
    k, n = views.shape[0], views.shape[1]
    order = torch.randperm(n, generator=gen)
    pick = torch.randint(0, k, (n,), generator=gen)
    for start in range(0, n, batch_size):
        idx = order[start: start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        yield views[pick[idx].to(views.device), idx.to(views.device)], labels[idx]


class _Rows(torch.utils.data.Dataset):
    """Stored rows as a dataset shaped like ``ImageList`` (row, label, index): the same sampler and
    loader over it give the batches the images would have."""

    def __init__(self, rows: torch.Tensor, labels: torch.Tensor):
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, index: int):
        return self.rows[index], self.labels[index], index


def device_kind(device: torch.device) -> str:
    """The hardware whose kernels compute the features: the GPU model, or the CPU's vector ISA and
    thread count (a sum split over more threads rounds differently)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}:{torch.backends.cpu.get_cpu_capability()}:{torch.get_num_threads()} threads"


def uses_view_store(method: Method, cfg: TrainConfig) -> bool:
    """Whether ``method`` trains from the frozen encoder's output on each epoch's views (read from
    the training-view store when one is given, else computed in one pass per epoch)."""
    return method.view_store and not method.image_prompted and not cfg.feature_views


def _loader(dataset, cfg: TrainConfig, drop_last: bool, gen: torch.Generator, device: torch.device,
            workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=RandomSampler(dataset, generator=gen),
                      drop_last=drop_last, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, generator=gen, worker_init_fn=loader_worker_init)


def train(method: Method, items: Sequence[Item], image_root: Path, cfg: TrainConfig, device: torch.device,
          precision: Precision, seed: int, ckpt_dir: Path | None = None,
          on_epoch: EpochCallback | None = None, on_batch: BatchCallback | None = None,
          store: ViewStore | None = None, dataset_tag: str = "") -> TrainResult:
    """Train ``method`` on ``items``. ``store``: the training-view store (None: ``--no-cache``), used
    when the method's image encoder is frozen and unprompted (``uses_view_store``); ``dataset_tag``
    names the dataset in its key."""
    params = [p for p in method.parameters() if p.requires_grad]
    started = time.time()
    epochs = planned_epochs(cfg, len(items))
    if not params or epochs == 0:
        return TrainResult(0, 0.0, None, None, 0)
    opt = make_optimizer(params, cfg)
    scaler = torch.amp.GradScaler(device.type) if precision.grad_scaler else None
    start, resumed, before = 0, None, 0.0
    history: list[dict] = []
    if ckpt_dir is not None:
        found = checkpoint.load(ckpt_dir, "epoch")
        if found is not None:
            tensors, meta = found
            method.load_learned_state({k: v for k, v in tensors.items() if not k.startswith(("__optim__.", "__scaler__."))})
            _load_optimizer_state(opt, params, tensors)
            _load_scaler_state(scaler, tensors)
            start = resumed = int(meta["epoch"]) + 1
            before = float(meta.get("train_seconds", 0.0))  # training time spent before the interruption
            history = list(meta.get("history", []))          # the epochs before the interruption
    pixels = train_pixels(train_preprocess(method, cfg))
    use_features = cfg.feature_views > 0 and method.feature_training and not method.image_prompted
    if use_features:  # the opt-in approximation keeps its own views (seeded per view, not keyed)
        dataset = ImageList(items, image_root, pixels, keep_decoded=DECODED_BUDGET)
    else:
        dataset = KeyedImageList(items, image_root, pixels, seed, keep_decoded=DECODED_BUDGET)
    drop_last = cfg.drop_last and len(dataset) >= cfg.batch_size
    per_epoch = batches_per_epoch(len(items), cfg)
    total_steps = cfg.iterations or epochs * per_epoch  # iter_cosine's T_max
    views = cached_views(method, dataset, cfg, device, precision, seed) if use_features else None
    frozen = uses_view_store(method, cfg)
    context = None
    if frozen and store is not None:
        context = ViewStore.context(method.backbone.fingerprint(), precision.effective, device_kind(device),
                                    describe(pixels), f"{dataset_tag}:{image_root}", items, seed)
    labels_all = torch.tensor([it.label for it in items])
    last_loss = None
    seen = 0
    method.train()
    for epoch in range(start, epochs):
        t_epoch = time.time()
        step = epoch * per_epoch   # optimiser steps before this epoch (every earlier epoch is whole)
        lr = lr_at(epoch, cfg) if cfg.schedule == "epoch_cosine" else lr_at_step(step, total_steps, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        eseed = epoch_seed(seed, epoch)
        torch.manual_seed(eseed)  # in-forward sampling (the augmentation is keyed per image)
        gen = torch.Generator().manual_seed(eseed)
        mode = "frozen" if frozen else "features" if views is not None else "images"
        if views is None:
            dataset.set_epoch(epoch)
        if mode == "features":
            batches = ((x, y, None) for x, y in _feature_batches(views, labels_all, cfg.batch_size, drop_last, gen))
            n_batches = per_epoch
        else:
            if mode == "frozen":  # the encoder's output on every view of the epoch: stored, or one pass
                feats = store.load(context[0], epoch, len(items)) if context else None
                if feats is None:
                    feats = encode_views(method, dataset, device, precision, cfg.num_workers)
                    if context:
                        store.save(context[0], epoch, feats, context[1])
                source, workers = _Rows(feats, labels_all), 0
            else:
                source, workers = dataset, cfg.num_workers
            loader = _loader(source, cfg, drop_last, gen, device, workers)   # the method's own sampler
            batches, n_batches = iter(loader), len(loader)
        n_batches = min(n_batches, total_steps - step)  # the last epoch of an iteration count is cut
        total, count, samples = 0.0, 0, 0
        terms: dict[str, float] = {}
        correct: int | None = 0
        for b, (inputs, labels, _) in enumerate(batches):
            if b == n_batches:
                break
            if cfg.schedule == "iter_cosine":
                lr = lr_at_step(step + b, total_steps, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
            if mode == "images":   # uint8 pixels -> normalised images on the device (bit-identical)
                inputs = to_model_input(inputs, method.backbone.preprocess, device, image_dtype(precision))
            else:
                inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss, logits, losses = batch_loss(method, inputs, labels, precision, device, features=mode == "features",
                                              frozen=mode == "frozen")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                method.backward(losses, scaler.scale)
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
            else:
                method.backward(losses, _unscaled)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
            total += float(loss.detach())
            for k, v in losses.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach())
            right = _correct(logits, labels)
            correct = None if (correct is None or right is None) else correct + right
            count += 1
            samples += labels.shape[0]
            seen += inputs.shape[0]
            if on_batch:
                on_batch(epoch, b + 1, n_batches, total / count, lr)
            faults.point("batch")  # test hook (inert unless CPBENCH_FAULT_AT is set)
        method.on_epoch_end(epoch, epochs)
        last_loss = total / max(1, count)
        stats = EpochStats(epoch, epochs, lr, last_loss, {k: v / max(1, count) for k, v in terms.items()},
                           None if correct is None or not samples else 100.0 * correct / samples,
                           time.time() - t_epoch)
        history.append(stats.as_row())
        if ckpt_dir is not None and cfg.checkpoint:
            checkpoint.save(ckpt_dir, "epoch",
                            {**method.learned_state(), **_optimizer_state(opt, params), **_scaler_state(scaler)},
                            {"epoch": epoch, "epochs": epochs, "loss": last_loss, "lr": lr,
                             "train_seconds": before + time.time() - started, "history": history})
        if on_epoch:
            on_epoch(stats, history)
    method.on_train_end()
    method.eval()
    # seconds: total training time of the run, including the time spent before a resume
    return TrainResult(epochs - start, before + time.time() - started, resumed, last_loss, seen, history)
