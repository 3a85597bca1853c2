"""The software trainer: the torch EP-CNN and the BP-CNN / AdvCNN / ViT baselines.

* Presets (``--preset``) set architecture and hyper-parameters: the paper's CIFAR settings,
  ``cifar10-small`` (an eighth of the width, for a 2-core CPU), ``digits`` (8x8 images) and
  ``mnist`` (28x28); without one, the dataset picks it (:func:`default_preset`).
* Data: an :class:`epsim.data.Dataset` (pixels in [0, 1]); on CIFAR images training batches
  get random crops (4-pixel edge padding) and horizontal flips, done with torch ops
  (:data:`AUGMENTED_DATASETS`; crops of 8x8 digits would cut half a digit away).
* Models normalise pixels themselves, so checkpoints and attacks live in pixel space.
* ``ep-cnn``: free phase, ``±β`` phases, EP gradient (:func:`epsim.models.ep_cnn.ep_gradients`),
  SGD with per-layer learning rates; ``bp-cnn``/``vit``: cross-entropy + backprop;
  ``adv-cnn``: backprop on PGD examples (:func:`epsim.robustness.attacks.adversarial_examples`), made in eval mode.
* Learning rates follow a cosine from the preset's values to ``lr_min`` over the run,
  updated every batch.
* Determinism and resumption as in the circuit trainer (:mod:`.run`): epoch ``e`` visits the
  training set in the permutation drawn from ``(seed, e)``; batch ``k``'s augmentation and
  attack start are drawn from ``(seed, e, k)``; a checkpoint (atomic, every epoch and every
  ``checkpoint_interval_s`` seconds) holds weights, optimizer state, position and running
  sums, so ``resume`` replays the batches an uninterrupted run would have seen.
* Output: ``OUT/checkpoint.pt`` (``kind`` = model name, ``preset``, ``arch``,
  ``state_dict``) and ``OUT/metrics.json`` in the circuit trainer's schema
  (``backend = "torch"``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ..distributed import DataParallel
from ..errors import EpsimError
from ..models.baselines import ADV_PRESETS, BP_PRESETS, VIT_PRESETS, build_baseline
from ..models.ep_cnn import COSTS, EP_PRESETS, SOLVERS, EPCNN, build_ep_cnn, ep_gradients
from ..models.loading import (TORCH_MODELS, load_torch_model, model_from_arch,  # noqa: F401
                              pick_device, to_tensors as _to_tensors)
from .run import Run, epoch_order, num_batches, progress_bar, show, summary_metrics

PRESETS = {"ep-cnn": EP_PRESETS, "bp-cnn": BP_PRESETS, "adv-cnn": ADV_PRESETS, "vit": VIT_PRESETS}
PRESET_NAMES = ("cifar10-paper", "cifar100-paper", "cifar10-small", "cifar10-dchn", "cifar10-hour", "digits", "mnist")
CROP_PADDING = 4
# Random crops and flips keep the label of a natural 32x32 image; they do not keep an 8x8 or
# 28x28 digit's (a 4-pixel crop cuts half of an 8x8 digit away; a flipped 2 is no 2).
AUGMENTED_DATASETS = ("cifar10", "cifar100")
TORCH_OPTIMIZERS = ("sgd", "adam", "adamw")  # torch.optim.SGD (heavy-ball), Adam, AdamW


@dataclass
class TorchTrainConfig:
    """A torch training run. ``None`` fields are filled from the preset by :func:`resolve_config`."""

    model: str = "ep-cnn"
    preset: str = "cifar10-small"         # see default_preset
    dataset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None          # TORCH_OPTIMIZERS
    lr: float | None = None               # baselines; for ep-cnn sets every layer's lr
    lrs: tuple | None = None              # ep-cnn: one lr per synapse (conv 1..L, readout)
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None           # "cosine" | "constant"
    lr_min: float | None = None
    augment: bool | None = None
    channels: tuple | None = None
    paddings: tuple | None = None
    patch: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_dim: int | None = None
    dropout: float | None = None
    t1: int | None = None                 # ep-cnn: max free-phase steps
    t2: int | None = None                 # ep-cnn: max steps of each nudged phase
    beta: float | None = None
    solver: str | None = None             # ep-cnn: "sync" | "async"
    tol: float | None = None              # ep-cnn: per-sample stop when no unit moves more
    nudge_tol: float | None = None        # ep-cnn: the same for the nudged phases (None: tol)
    omega: float | None = None            # ep-cnn: relaxation factor of the odd/even sweeps (1: plain)
    init_scale: float | None = None       # ep-cnn: factor on the default initial weights
    init_gains: tuple | None = None       # ep-cnn: per-synapse weight gains (× 2·gain on the default bounds)
    cost: str | None = None               # ep-cnn: "cross-entropy" | "squared-error" (see COSTS)
    input_std_scale: float | None = None  # ep-cnn: input normalisation (x - mean) / (this * std)
    adv_norm: str | None = None           # adv-cnn: "l2" | "linf"
    adv_eps: float | None = None
    adv_steps: int | None = None
    adv_step_size: float | None = None
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    eval_batch_size: int = 256
    stop_at_accuracy: float | None = None  # stop once the held-out validation accuracy reaches this
    val_subset: int = 2000                # training images held out for that check (with stop_at_accuracy)
    val_every: int = 50                   # batches between validation checks (and at every epoch's end)

    def validate(self):
        checks = [
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.optimizer in TORCH_OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose from "
                                                  f"{', '.join(TORCH_OPTIMIZERS)}"),
            (self.schedule in ("cosine", "constant"), f"unknown schedule {self.schedule!r}"),
            (0 <= self.momentum < 1, "--momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "--weight-decay must be non-negative"),
            (self.eval_batch_size >= 1, "eval batch size must be at least 1"),
            (math.isfinite(self.weight_decay), "--weight-decay must be a finite number"),
            (self.seed >= 0, "--seed must be non-negative"),
            (self.stop_at_accuracy is None or 0 < self.stop_at_accuracy < 1,
             "--stop-at-accuracy must be a fraction in (0, 1), e.g. 0.5"),
            (self.val_subset >= 1, "--val-subset must be at least 1"),
            (self.val_every >= 1, "--val-every must be at least 1"),
        ]
        checks += self._shape_checks()
        if self.model == "ep-cnn":
            n = len(self.channels) + 1
            checks += [
                (len(self.lrs) == n, f"--lrs needs {n} values (one per conv layer and the readout), "
                                     f"got {len(self.lrs)}"),
                (all(math.isfinite(v) and v >= 0 for v in self.lrs), "--lrs must be non-negative numbers"),
                (self.t1 >= 1 and self.t2 >= 1, "--t1 and --t2 must be at least 1"),
                (math.isfinite(self.beta) and self.beta > 0, "--beta must be a positive number"),
                (self.solver in SOLVERS, f"--solver must be one of {', '.join(SOLVERS)}"),
                (math.isfinite(self.tol) and self.tol >= 0, "--ep-tol must be a non-negative number"),
                (self.nudge_tol is None or (math.isfinite(self.nudge_tol) and self.nudge_tol >= 0),
                 "--ep-nudge-tol must be a non-negative number"),
                (self.omega is None or (math.isfinite(self.omega) and 1 <= self.omega < 2),
                 "--ep-omega must be in [1, 2)"),
                (self.omega in (None, 1.0) or self.solver == "async",
                 f"--ep-omega {self.omega} (given or the preset's) needs the odd/even solver (--solver async); "
                 "the synchronous loop runs at --ep-omega 1"),
                ((self.cost or "cross-entropy") in COSTS, f"--cost must be one of {', '.join(COSTS)}"),
                (self.init_gains is None or len(self.init_gains) == n,
                 f"--init-gains needs {n} values (one per conv layer and the readout)"),
                (self.init_gains is None or all(math.isfinite(v) and v > 0 for v in self.init_gains),
                 "--init-gains must be positive numbers"),
            ]
        else:
            checks.append((math.isfinite(self.lr) and self.lr > 0, "--lr must be a positive number"))
        if self.model == "adv-cnn":
            checks += [(self.adv_norm in ("l2", "linf"), "--adv-norm must be l2 or linf"),
                       (math.isfinite(self.adv_eps) and self.adv_eps > 0, "--adv-eps must be positive"),
                       (self.adv_steps >= 1, "--adv-steps must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise EpsimError(message)

    def _shape_checks(self) -> list:
        """``(ok, message)`` for the architecture fields the model uses (sizes of at least 1)."""
        checks = []
        if self.model in ("ep-cnn", "bp-cnn", "adv-cnn"):
            checks += [(len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
                        "--channels must be at least 1 per conv layer"),
                       (self.paddings is None or all(p >= 0 for p in self.paddings),
                        "--paddings must be non-negative")]
        if self.model == "vit":
            for flag, value in (("--embed-dim", self.embed_dim), ("--depth", self.depth),
                                ("--heads", self.heads), ("patch size", self.patch),
                                ("MLP width", self.mlp_dim)):
                checks.append((value is None or value >= 1, f"{flag} must be at least 1"))
            checks.append((self.dropout is None or 0 <= self.dropout < 1, "dropout must be in [0, 1)"))
        return checks

    def compatible_with(self, other: "TorchTrainConfig") -> list:
        """Names of fields that must match to resume a run but differ."""
        free_to_change = {"epochs", "eval_batch_size"}
        return [f.name for f in fields(self)
                if f.name not in free_to_change and _norm(getattr(self, f.name)) != _norm(getattr(other, f.name))]


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def default_preset(dataset: str | None) -> str:
    """The preset sized for ``dataset``'s images: ``digits`` (8x8), ``mnist`` (28x28), else
    ``cifar10-small`` (32x32)."""
    return dataset if dataset in ("digits", "mnist") else "cifar10-small"


def resolve_config(model: str, preset: str | None = None, **overrides) -> TorchTrainConfig:
    """The preset's settings, with every non-None ``overrides`` value on top.

    ``preset`` None: :func:`default_preset` of the ``dataset`` override. ``augment`` (random
    crops and flips), unless overridden, is on only for :data:`AUGMENTED_DATASETS`.
    """
    if preset is None:
        preset = default_preset(overrides.get("dataset"))
    if model not in PRESETS:
        raise EpsimError(f"unknown torch model {model!r}; choose from {', '.join(TORCH_MODELS)}")
    if preset not in PRESETS[model]:
        raise EpsimError(f"unknown preset {preset!r} for {model}; choose from {', '.join(PRESETS[model])}")
    names = {f.name for f in fields(TorchTrainConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise EpsimError(f"unknown torch training option(s): {', '.join(sorted(unknown))}")
    values = {k: v for k, v in PRESETS[model][preset].items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("augment") is None:
        values["augment"] = bool(values.get("augment")) and values.get("dataset") in AUGMENTED_DATASETS
    if model == "ep-cnn" and overrides.get("lr") is not None and overrides.get("lrs") is None:
        values["lrs"] = (overrides["lr"],) * (len(values["channels"]) + 1)
    for key in ("channels", "paddings", "lrs", "init_gains"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    if values.get("channels") is not None and values.get("paddings") is not None \
            and len(values["paddings"]) != len(values["channels"]):
        if "paddings" in overrides and overrides["paddings"] is not None:
            raise EpsimError(f"--paddings needs one value per conv layer ({len(values['channels'])})")
        # Changing the depth: pad 1 everywhere, 0 at the last layer as in the paper layout.
        values["paddings"] = (1,) * (len(values["channels"]) - 1) + (values["paddings"][-1],)
    if model == "ep-cnn" and values.get("lrs") is not None and len(values["lrs"]) != len(values["channels"]) + 1 \
            and overrides.get("lrs") is None:
        values["lrs"] = tuple(np.interp(np.linspace(0, 1, len(values["channels"]) + 1), np.linspace(0, 1, len(values["lrs"])),
                                        values["lrs"]).tolist())
    config = TorchTrainConfig(model=model, preset=preset, **{k: v for k, v in values.items()
                                                            if k not in ("model", "preset")})
    config.validate()
    return config


def build_model(config: TorchTrainConfig, image_shape, num_classes, dataset_name=None) -> torch.nn.Module:
    """The network of ``config`` for images of ``image_shape`` ``(C, H, W)``."""
    if config.model == "ep-cnn":
        return build_ep_cnn(asdict(config), image_shape, num_classes, dataset_name)
    return build_baseline(config.model, asdict(config), image_shape, num_classes, dataset_name)


def make_optimizer(model, config: TorchTrainConfig):
    if config.model == "ep-cnn":
        groups = [{"params": ps, "lr": lr} for ps, lr in zip(model.param_groups(), config.lrs)]
    else:
        groups = [{"params": list(model.parameters()), "lr": config.lr}]
    for g in groups:
        g["base_lr"] = g["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def set_lr(optimizer, config: TorchTrainConfig, progress: float) -> float:
    """Cosine (or constant) learning rates at ``progress`` epochs (fractional: the cosine
    is followed batch by batch, which matters for runs of one or two epochs); returns
    the first group's lr."""
    for g in optimizer.param_groups:
        if config.schedule == "cosine":
            frac = min(progress / config.epochs, 1.0)
            g["lr"] = config.lr_min + (g["base_lr"] - config.lr_min) * 0.5 * (1 + math.cos(math.pi * frac))
        else:
            g["lr"] = g["base_lr"]
    return optimizer.param_groups[0]["lr"]


def _generator(seed_words, device) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(np.random.SeedSequence(list(seed_words)).generate_state(1, np.uint64)[0] >> 1))
    return g


def augment_batch(x: torch.Tensor, gen: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random ``H×W`` crops of the edge-padded images and random horizontal flips.

    ``x``: ``(B, C, H, W)``; the draws come from ``gen`` (a CPU generator).
    """
    b, c, h, w = x.shape
    xp = F.pad(x, (padding,) * 4, mode="replicate")
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]          # (B, H, 1)
    cols = ox[:, None] + torch.arange(w, device=x.device)                         # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]             # (B, 1, W)
    out = xp[torch.arange(b, device=x.device)[:, None, None], :, rows, cols]      # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, device, batch_size=256,
             dp: DataParallel | None = None) -> dict:
    """Accuracy and mean loss (cross-entropy; the EP-CNN's own cost) with the model's inference settings.

    For the EP-CNN also the number of test samples whose free phase missed the tolerance
    and the largest final residual. With a multi-process ``dp`` each rank evaluates a
    strided shard and the sums are all-reduced.
    """
    dp = dp or DataParallel()
    x, y = dp.shard(x), dp.shard(y)
    model.eval()
    correct, loss, unconverged, worst, n = 0, 0.0, 0, 0.0, len(y)
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        if isinstance(model, EPCNN):
            rel = model.relax(xb)
            logits = model.readout(rel.state)
            cost = model.loss(logits, yb)
            unconverged += int((~rel.converged).sum())
            worst = max(worst, float(rel.residual.max()))
        else:
            logits = model(xb)
            cost = F.cross_entropy(logits, yb, reduction="none")
        correct += int((logits.argmax(1) == yb).sum())
        loss += float(cost.sum())
    if dp.active:
        correct, loss, unconverged, n = dp.sum([correct, loss, unconverged, n])
        correct, unconverged, n, worst = int(correct), int(unconverged), int(n), dp.max(worst)
    out = {"accuracy": correct / max(n, 1), "loss": loss / max(n, 1), "n": n}
    if isinstance(model, EPCNN):
        out.update(unconverged=unconverged, max_residual=worst)
    return out


class _Tally:
    """Running sums over the batches of one epoch (checkpointed with the run)."""

    keys = ("n", "correct", "loss_sum", "batches", "steps", "unconverged", "max_residual", "unused")

    def __init__(self, d=None):
        d = d or {}
        for k in self.keys:
            setattr(self, k, float(d.get(k, 0.0)))

    def as_dict(self):
        return {k: getattr(self, k) for k in self.keys}


def train_step(model, optimizer, config: TorchTrainConfig, xb, yb, gen, dp: DataParallel | None = None) -> dict:
    """One update on the batch ``(xb, yb)`` (this rank's shard of the global batch under a
    multi-process ``dp``: the gradients are then averaged over every rank's samples before
    the step, so all ranks apply the update one process would); returns per-batch
    statistics (this rank's)."""
    dp = dp or DataParallel()
    stats = {}
    if config.model == "ep-cnn":
        model.train()
        step = ep_gradients(model, xb, yb, beta=config.beta, t1=config.t1, t2=config.t2,
                            solver=config.solver, tol=config.tol, nudge_tol=config.nudge_tol)
        if _average_gradients(model, int(step.used.sum()), dp) > 0:
            optimizer.step()
        logits, loss = step.logits, step.loss.sum()
        stats.update(steps=step.mean_sample_steps, unconverged=int((~step.free.converged).sum()),
                     max_residual=float(torch.stack([step.free.residual.max(), step.plus.residual.max(),
                                                     step.minus.residual.max()]).max()),
                     unused=int((~step.used).sum()))
    else:
        if config.model == "adv-cnn":
            from ..robustness.attacks import adversarial_examples

            model.eval()
            xb = adversarial_examples(model, xb, yb, config.adv_eps, config.adv_norm, config.adv_steps,
                                      config.adv_step_size, rng=gen)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, reduction="sum")
        (loss / len(yb)).backward()
        _average_gradients(model, len(yb), dp)
        optimizer.step()
    stats.update(batches=1, n=len(yb), correct=int((logits.detach().argmax(1) == yb).sum()), loss_sum=float(loss.detach()))
    return stats


def _average_gradients(model, n_local: int, dp: DataParallel) -> int:
    """Turn each rank's ``p.grad`` (a mean over its ``n_local`` samples) into the mean over
    every rank's samples; returns the global sample count (``n_local`` in one process)."""
    if not dp.active:
        return n_local
    params = [p for p in model.parameters() if p.grad is not None]
    means, n_total = dp.mean([p.grad.detach().cpu().numpy() for p in params], n_local)
    for p, g in zip(params, means):
        p.grad.copy_(torch.from_numpy(g).to(p.grad))
    return n_total


def _config_from_state(state: dict) -> TorchTrainConfig:
    values = dict(state["config"])
    for key in ("channels", "paddings", "lrs", "init_gains"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return TorchTrainConfig(**values)


def train_torch(config: TorchTrainConfig, dataset, out_dir=None, *, resume=False, device="auto",
                progress=True, checkpoint_interval_s=120.0, time_limit_s=None,
                stop_after_batches=None, log=print) -> dict:
    """Train ``config.model`` on ``dataset``; return the metrics dict (also ``OUT/metrics.json``).

    Args:
        config: a resolved :class:`TorchTrainConfig`. dataset: an :class:`epsim.data.Dataset`.
        out_dir: folder for ``checkpoint.pt`` and ``metrics.json`` (None: nothing written).
        resume: continue the run saved in ``out_dir``. device: ``auto`` | ``cpu`` | ``cuda``.
        checkpoint_interval_s: wall time between mid-epoch checkpoints.
        time_limit_s: stop training after the batch that crosses this wall time (counted
            over all sessions of the run), evaluate, and write the metrics
            (``"stopped_early": true``); the checkpoint allows continuing with --resume.
        stop_after_batches: stop (as if killed) after this many batches of this call,
            leaving the checkpoint behind; used to test resumption.
    """
    config.validate()
    dp = DataParallel()
    try:
        return _train_torch(config, dataset, out_dir, dp, resume=resume, device=device, progress=progress,
                            checkpoint_interval_s=checkpoint_interval_s, time_limit_s=time_limit_s,
                            stop_after_batches=stop_after_batches, log=log)
    finally:
        dp.close()


def _train_torch(config, dataset, out_dir, dp, *, resume, device, progress, checkpoint_interval_s,
                 time_limit_s, stop_after_batches, log) -> dict:
    if not dp.is_main:
        progress, log = False, (lambda *_: None)
    dev = pick_device(device)
    torch.manual_seed(config.seed)
    model = build_model(config, dataset.image_shape, dataset.num_classes, dataset.name).to(dev)
    optimizer = make_optimizer(model, config)
    run = Run(out_dir, resume=resume, writes=dp.is_main, checkpoint_interval_s=checkpoint_interval_s,
              time_limit_s=time_limit_s, stop_after_batches=stop_after_batches, log=log)
    state = run.saved_state()
    if state is not None:
        if state.get("kind") != config.model:
            raise EpsimError(f"cannot resume {run.checkpoint_path}: it holds a {state.get('kind')!r} run, "
                             f"not {config.model}")
        run.check_resumable(_config_from_state(state), config, state)
        model.load_state_dict(_to_tensors(state["state_dict"]))
        optimizer.load_state_dict(_to_tensors(state["optimizer"]))
        run.resume_from(state)
    tally, history, start_batch = _Tally(run.tally), run.history, run.batch
    run.start_clock()

    def payload():
        return {"kind": config.model, "preset": config.preset, "config": asdict(config),
                "arch": model.describe(), "dataset": dataset.name,
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict()}

    x_train, y_train = torch.from_numpy(dataset.x_train).float(), torch.from_numpy(dataset.y_train)
    x_test, y_test = torch.from_numpy(dataset.x_test).float(), torch.from_numpy(dataset.y_test)
    x_val = y_val = None
    if config.stop_at_accuracy is not None:
        x_train, y_train, x_val, y_val = hold_out(x_train, y_train, config.val_subset, config.seed)
    n_train = len(y_train)
    n_batches = num_batches(n_train, config.batch_size)
    stop_reason, val_accuracy = None, None
    for epoch in range(run.epoch, config.epochs):
        lr = set_lr(optimizer, config, epoch + start_batch / n_batches)
        order = torch.from_numpy(epoch_order(config.seed, epoch, n_train))
        bar = progress_bar(range(start_batch, n_batches), n_batches, start_batch,
                           f"{config.model} epoch {epoch + 1}/{config.epochs}", progress)
        for k in bar:
            idx = order[k * config.batch_size:(k + 1) * config.batch_size]
            set_lr(optimizer, config, epoch + k / n_batches)
            gen = _generator((config.seed, epoch, k), dev)
            xb, yb = x_train[idx], y_train[idx]
            if config.augment:
                xb = augment_batch(xb, gen)
            xb, yb = dp.shard(xb), dp.shard(yb)  # the global batch's augmentation, this rank's share
            stats = _global_stats(train_step(model, optimizer, config, xb.to(dev), yb.to(dev), gen, dp), dp)
            for key, v in stats.items():
                setattr(tally, key, max(tally.max_residual, v) if key == "max_residual" else getattr(tally, key) + v)
            show(bar, loss=f"{tally.loss_sum / tally.n:.3f}", acc=f"{tally.correct / tally.n:.3f}",
                 **({"steps": f"{tally.steps / tally.batches:.0f}"} if config.model == "ep-cnn" else {}))
            if run.batch_done():
                run.save(epoch, k + 1, tally, payload)
                return {"interrupted": True}
            if dp.max(float(run.out_of_time())) > 0:  # every rank stops after the same batch
                stop_reason, start_batch = "time limit", k + 1
                break
            if x_val is not None and ((k + 1) % config.val_every == 0 or k + 1 == n_batches):
                val_accuracy = evaluate(model, x_val, y_val, dev, config.eval_batch_size, dp)["accuracy"]
                if val_accuracy >= config.stop_at_accuracy and k + 1 < n_batches:
                    stop_reason, start_batch = "accuracy", k + 1
                    break
            run.save_if_due(epoch, k + 1, tally, payload)
        stopped_early = stop_reason is not None
        test = evaluate(model, x_test, y_test, dev, config.eval_batch_size, dp)
        entry = {"epoch": epoch + 1 if not stopped_early else epoch + start_batch / n_batches,
                 "lr": lr, "train_loss": tally.loss_sum / max(tally.n, 1),
                 "train_accuracy": tally.correct / max(tally.n, 1), "test_accuracy": test["accuracy"],
                 "test_loss": test["loss"], "wall_seconds": run.wall()}
        if stopped_early:
            entry["partial"] = True          # the time limit or the accuracy target cut this epoch short
        if val_accuracy is not None:
            entry["validation_accuracy"] = val_accuracy
        if config.model == "ep-cnn":
            entry.update(mean_steps_per_sample=tally.steps / max(tally.batches, 1),
                         train_unconverged=int(tally.unconverged), train_unused=int(tally.unused),
                         max_residual=max(tally.max_residual, test["max_residual"]),
                         test_unconverged=test["unconverged"])
        history.append(entry)
        log(f"epoch {entry['epoch']:.3g}/{config.epochs}: train loss {entry['train_loss']:.4f} "
            f"acc {entry['train_accuracy']:.4f}, test acc {entry['test_accuracy']:.4f}, "
            f"wall {entry['wall_seconds']:.0f} s"
            + (f", {entry['mean_steps_per_sample']:.0f} relaxation steps/sample (3 phases), unconverged "
               f"train {entry['train_unconverged']} test {entry['test_unconverged']}"
               if config.model == "ep-cnn" else ""))
        if stop_reason == "time limit":
            run.save(epoch, start_batch, tally, payload)
            log(f"time limit of {time_limit_s:.0f} s reached; stopped in epoch {epoch + 1} "
                f"(continue with --resume and a larger limit)")
            break
        if stop_reason == "accuracy":
            run.save(epoch, start_batch, tally, payload)
            log(f"validation accuracy {val_accuracy:.4f} reached --stop-at-accuracy "
                f"{config.stop_at_accuracy:g} in epoch {entry['epoch']:.3g}; stopped")
            break
        if x_val is not None and val_accuracy >= config.stop_at_accuracy and epoch + 1 < config.epochs:
            stop_reason = "accuracy"        # reached at the end of an epoch
            run.save(epoch + 1, 0, _Tally(), payload)
            log(f"validation accuracy {val_accuracy:.4f} reached --stop-at-accuracy "
                f"{config.stop_at_accuracy:g} at the end of epoch {epoch + 1}; stopped")
            break
        tally = _Tally()
        run.save(epoch + 1, 0, tally, payload)
        start_batch = 0
    metrics = final_metrics(config, model, history, run.wall(), len(y_test), dev, stop_reason)
    metrics["processes"] = dp.world
    run.write_metrics(metrics)
    dp.barrier()  # no rank leaves (and tears its connections down) while another still writes
    return metrics


def _global_stats(stats: dict, dp: DataParallel) -> dict:
    """One batch's statistics over all ranks: counts and sums added, the residual's maximum
    taken, the mean relaxation steps per sample averaged (every rank's shard is one batch)."""
    if not dp.active:
        return stats
    keys = [k for k in stats if k not in ("max_residual", "batches", "steps")]
    out = dict(zip(keys, dp.sum([stats[k] for k in keys])))
    out = {k: (int(v) if isinstance(stats[k], int) else float(v)) for k, v in out.items()}
    out["batches"] = 1
    if "steps" in stats:
        out["steps"] = float(dp.sum([stats["steps"]])[0]) / dp.world
    if "max_residual" in stats:
        out["max_residual"] = dp.max(stats["max_residual"])
    return out


def hold_out(x: torch.Tensor, y: torch.Tensor, n_val: int, seed: int):
    """``(x_train, y_train, x_val, y_val)``: ``n_val`` training images drawn with ``seed`` and
    held out for validation; the rest, in their original order, for training.

    Raises:
        EpsimError: ``n_val`` leaves no training images.
    """
    if n_val >= len(y):
        raise EpsimError(f"--val-subset {n_val} leaves no training images (the training set has {len(y)})")
    val = np.sort(np.random.default_rng([seed, 1]).permutation(len(y))[:n_val])
    keep = np.ones(len(y), dtype=bool)
    keep[val] = False
    keep_t, val_t = torch.from_numpy(np.flatnonzero(keep)), torch.from_numpy(val)
    return x[keep_t], y[keep_t], x[val_t], y[val_t]


def final_metrics(config, model, history, wall_seconds, n_test, device, stop_reason=None) -> dict:
    """metrics.json of a torch run (:func:`.run.summary_metrics` plus the torch trainer's fields).

    ``stop_reason``: None (every epoch ran), ``"time limit"`` or ``"accuracy"`` (the held-out
    validation accuracy reached ``config.stop_at_accuracy``).
    """
    last = history[-1] if history else {}
    out = summary_metrics(
        config, history, wall_seconds, backend="torch", dataset=config.dataset, model=config.model,
        preset=config.preset, epochs=config.epochs, epochs_completed=last.get("epoch", 0),
        stopped_early=stop_reason is not None, stop_reason=stop_reason, n_test=n_test,
        num_params=int(sum(p.numel() for p in model.parameters())),
        device=str(device), device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch_threads=torch.get_num_threads())
    if config.stop_at_accuracy is not None:
        out.update(validation_accuracy=last.get("validation_accuracy"), n_validation=config.val_subset)
    if config.model == "ep-cnn":
        # the EP-CNN's inference is T1 relaxation steps (the published loop): a free phase that
        # stops at T1 still gives the model's prediction, as in epsim.robustness
        out["unconverged_counted_as"] = "prediction"
        out["test_unconverged"] = last.get("test_unconverged")
        out["max_residual"] = max((h["max_residual"] for h in history), default=None)
    return out

