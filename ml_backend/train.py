"""Training and evaluation: one function per step, the device always an argument.

``fit`` runs one seed (up to ``config.epochs`` epochs, keeping the weights with the lowest
validation loss, as the study did); ``run_protocol`` runs every seed of the config, fits the
prior-respecting decision bias (:func:`ml_backend.ordinal.prior_bias`) of each seed and of
their ensemble (mean probability) on the training images, and evaluates them on the test
split.

The loss (:func:`batch_loss`) is cross-entropy on the class scores, logit-adjusted by
``config.balance * log(prior)`` (Menon et al. 2021) so a rare class keeps its gradient, plus —
for the ordinal head and labels carrying a consensus position — ``config.position_weight``
times the squared distance between the latent position and the consensus position placed in
the model's own cut-point frame (cuts at -1/+1 in the consensus map to ``c1``/``c2``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ml_backend.config import TrainConfig
from ml_backend.data import SliceDataset
from ml_backend.model import Ensemble, build_model
from ml_backend.ordinal import apply_bias, prior_bias
from ml_backend.transforms import EvalPreset, TrainPreset
from slicerank_base import CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    """What one epoch did; passed to the progress callback and kept in the history."""

    seed: int
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float
    images_per_s: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for job meta and metrics.json)."""
        return dict(self.__dict__)


@dataclass
class FitResult:
    """The selected (lowest validation loss) weights of one seed and its history."""

    seed: int
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    best_val_loss: float
    history: list[EpochStats] = field(default_factory=list)
    optimizer_state: dict[str, Any] | None = None


def _copy(obj: Any, device: torch.device | str | None = None) -> Any:
    """A detached copy of every tensor in ``obj`` (nested dicts/lists), on ``device`` (default:
    where each tensor already is)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.clone() if device is None else t.to(device, copy=True)
    if isinstance(obj, dict):
        return {k: _copy(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_copy(v, device) for v in obj)
    return obj


def _to_cpu(obj: Any) -> Any:
    return _copy(obj, "cpu")


#: Largest evaluation batch on a GPU: the study's validation split (332 images) is one batch.
GPU_EVAL_BATCH = 1024


def eval_batch_size(config: TrainConfig, device: torch.device) -> int:
    """Evaluation batch: one large batch on a GPU (one launch sequence, one sync), the CPU's
    modest one elsewhere (memory)."""
    return GPU_EVAL_BATCH if device.type == "cuda" else max(config.batch_size, 64)


def set_cuda_flags(device: torch.device) -> None:
    """The cuDNN setting every training run and its benchmark baseline share: autotuned
    convolutions (the input shapes are fixed)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@functools.cache
def _native_bf16(index: int) -> bool:
    # Ampere (sm_80) and later compute in bf16 natively; older GPUs only emulate it, slowly
    # (what torch.cuda.is_bf16_supported(including_emulation=False) reports).
    return torch.cuda.get_device_capability(index)[0] >= 8


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast type on ``device``: bfloat16 where the GPU has it natively, else float16
    (which needs a :func:`grad_scaler`)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        if not _native_bf16(index):
            return torch.float16
    return torch.bfloat16


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A loss scaler when training autocasts to float16 (its range needs one), else None. With
    the fused AdamW the scaler's inf check stays on the GPU (no per-step sync)."""
    if amp and device.type == "cuda" and amp_dtype(device) == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=amp_dtype(device))
    return contextlib.nullcontext()


def class_log_prior(targets: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
    """Log class frequencies of a training set (soft targets averaged), floored at 1/2N."""
    n = max(len(targets), 1)
    if soft is not None:
        freq = soft.float().mean(0).cpu()
    else:
        freq = torch.bincount(targets.cpu(), minlength=len(CLASSES)).float() / n
    return torch.log(freq.clamp_min(0.5 / n))


def batch_loss(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    *,
    soft: torch.Tensor | None = None,
    positions: torch.Tensor | None = None,
    adjust: torch.Tensor | None = None,
    position_weight: float = 0.0,
    amp_device: torch.device | None = None,
    amp: bool = False,
) -> torch.Tensor:
    """The training loss of one batch (see the module docstring)."""
    with _autocast(amp_device or x.device, amp):
        raw = model.features(x)
    scores = model.scores(raw.float())
    if adjust is not None:
        scores = scores + adjust.to(scores.device)
    # Soft targets: cross-entropy against the consensus class probabilities.
    loss = nn.functional.cross_entropy(scores, soft if soft is not None else targets)
    if position_weight > 0 and positions is not None and model.cuts is not None:
        known = torch.isfinite(positions)
        if known.any():
            c1, c2 = model.cuts()
            # The consensus frame (cuts at -1/+1) placed on the model's current cuts; the
            # cuts themselves are learnt from the classes only (detach), else shrinking them
            # would be a trivial way to fit the positions.
            target = ((c1 + c2) / 2 + positions[known] * (c2 - c1) / 2).detach()
            loss = loss + position_weight * nn.functional.mse_loss(raw[known, 0].float(), target)
    return loss


def _rows(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of ``t`` on ``device`` without stalling the host: a host tensor is gathered
    on the host (``idx`` is drawn there too) and copied from pinned memory asynchronously."""
    rows = t[idx if idx.device == t.device else idx.to(t.device)]
    if rows.device.type == "cpu" and device.type == "cuda":
        return rows.pin_memory().to(device, non_blocking=True)
    # (A no-op when already there: "cuda" and "cuda:0" compare unequal but are one device.)
    return rows.to(device)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: SliceDataset,
    preset: TrainPreset,
    device: torch.device,
    *,
    batch_size: int,
    generator: torch.Generator,
    amp: bool = False,
    channels_last: bool = False,
    use_soft: bool = False,
    max_batches: int = 0,
    adjust: torch.Tensor | None = None,
    position_weight: float = 0.0,
    order_generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int]:
    """One pass over ``data`` in a random order; returns (mean loss, images seen).

    ``generator`` draws the augmentation (on the training device); ``order_generator`` (default:
    ``generator``) the order, and should live where ``data`` does, so indexing host data never
    waits for the GPU. ``scaler`` scales a float16 loss (:func:`grad_scaler`)."""
    model.train()
    order_generator = order_generator or generator
    order = torch.randperm(len(data), generator=order_generator, device=order_generator.device)
    # BatchNorm cannot train on a batch of one: drop such a remainder.
    n_use = len(data) - 1 if len(data) % batch_size == 1 and len(data) > 1 else len(data)
    total: float | torch.Tensor = 0.0
    seen = 0
    for batches, start in enumerate(range(0, n_use, batch_size), start=1):
        idx = order[start : start + batch_size]
        x = preset(_rows(data.images, idx, device), generator)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        targets = _rows(data.targets, idx, device)
        soft = None
        if use_soft and data.soft is not None:
            soft = _rows(data.soft, idx, device)
        positions = None
        if position_weight > 0 and data.positions is not None:
            positions = _rows(data.positions, idx, device)
        loss = batch_loss(
            model, x, targets, soft=soft, positions=positions, adjust=adjust,
            position_weight=position_weight, amp_device=device, amp=amp,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        # On CUDA keep the sum on the device: a float() per batch would stall the GPU queue.
        total += (
            loss.detach() * len(idx) if device.type == "cuda" else float(loss.detach()) * len(idx)
        )
        seen += len(idx)
        if max_batches and batches >= max_batches:
            break
    return float(total) / max(seen, 1), seen


def _probs_on_device(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor | None:
    """Class probabilities (fp32, on ``device``) of normalised input batches; None if none.
    Nothing is copied to the host here, so a caller pays one sync for all batches."""
    model.eval()
    out = []
    with torch.inference_mode():
        for x in batches:
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                logits = model(x)
            out.append(torch.softmax(logits.float(), dim=1))
    return torch.cat(out) if out else None


def _chunks(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    return (images[s : s + batch_size] for s in range(0, len(images), batch_size))


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int = 64,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """Class probabilities (N×3, CPU float) for normalised input images (N×1×crop×crop)."""
    p = _probs_on_device(
        model, _chunks(images, batch_size), device, amp=amp, channels_last=channels_last
    )
    return p.cpu() if p is not None else torch.zeros(0, len(CLASSES))


def prepared_probs(
    model: nn.Module,
    images: torch.Tensor,
    preset: EvalPreset,
    device: torch.device,
    *,
    batch_size: int = 64,
    amp: bool = False,
    channels_last: bool = False,
) -> torch.Tensor | None:
    """Class probabilities (on ``device``) of prepared uint8 images, framed by ``preset`` on
    the device batch by batch; None for no images."""
    batches = (preset(chunk.to(device)) for chunk in _chunks(images, batch_size))
    return _probs_on_device(model, batches, device, amp=amp, channels_last=channels_last)


def class_loss(
    probs: torch.Tensor,
    targets: torch.Tensor,
    *,
    soft: torch.Tensor | None = None,
    adjust: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss's class part from probabilities (logit-adjusted by ``adjust`` when
    given; against ``soft`` targets when given), computed where ``probs`` lives."""
    logp = torch.log(probs.clamp_min(1e-12))
    if adjust is not None:
        logp = torch.log_softmax(logp + adjust.to(probs.device), dim=1)
    if soft is not None:
        return -(soft.to(probs.device) * logp).sum(1).mean()
    return nn.functional.nll_loss(logp, targets.to(probs.device))


def evaluate(
    model: nn.Module,
    data: SliceDataset,
    preset: EvalPreset,
    device: torch.device,
    *,
    batch_size: int = 64,
    amp: bool = False,
    channels_last: bool = False,
    use_soft: bool = False,
    adjust: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Loss, accuracy, macro F1, one-vs-rest ROC AUC and the probabilities on ``data``; the
    loss is the training loss's class part (logit-adjusted by ``adjust`` when given)."""
    p = prepared_probs(
        model, data.images, preset, device,
        batch_size=batch_size, amp=amp, channels_last=channels_last,
    )  # fmt: skip
    p = p.cpu() if p is not None else torch.zeros(0, len(CLASSES))
    targets = data.targets.cpu()
    soft = data.soft.cpu() if use_soft and data.soft is not None else None
    loss = float(class_loss(p, targets, soft=soft, adjust=adjust)) if len(p) else float("nan")
    return {"loss": loss, **classification_metrics(targets.numpy(), p.numpy()), "probs": p.numpy()}


def validation_loss_accuracy(
    model: nn.Module,
    data: SliceDataset,
    preset: EvalPreset,
    device: torch.device,
    *,
    batch_size: int,
    amp: bool = False,
    channels_last: bool = False,
    use_soft: bool = False,
    adjust: torch.Tensor | None = None,
) -> tuple[float, float]:
    """:func:`evaluate`'s loss and accuracy, computed on the device with one host sync (what
    each epoch needs; the full metrics cost a transfer and scikit-learn per epoch)."""
    p = prepared_probs(
        model, data.images, preset, device,
        batch_size=batch_size, amp=amp, channels_last=channels_last,
    )  # fmt: skip
    if p is None:
        return float("nan"), 0.0
    targets = data.targets.to(p.device, non_blocking=True)
    soft = data.soft if use_soft and data.soft is not None else None
    loss = class_loss(p, targets, soft=soft, adjust=adjust)
    accuracy = (p.argmax(1) == targets).float().mean()
    loss_value, accuracy_value = torch.stack([loss, accuracy]).tolist()
    return loss_value, accuracy_value


def classification_metrics(targets: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """Accuracy, macro F1 and one-vs-rest macro ROC AUC (None when undefined)."""
    from sklearn.metrics import f1_score, roc_auc_score

    if len(targets) == 0:
        return {"accuracy": None, "f1_macro": None, "roc_auc": None, "n": 0}
    pred = probs.argmax(1)
    auc = None
    present = np.unique(targets)
    if len(present) == len(CLASSES):
        auc = float(
            roc_auc_score(targets, probs, multi_class="ovr", labels=list(range(len(CLASSES))))
        )
    elif len(present) == 2:
        # Two classes present: AUC of the higher one against the lower one.
        mask = np.isin(targets, present)
        auc = float(roc_auc_score(targets[mask] == present[1], probs[mask, present[1]]))
    labels = list(range(len(CLASSES)))
    f1 = f1_score(targets, pred, average=None, labels=labels, zero_division=0)
    recall = [
        float((pred[targets == k] == k).mean()) if (targets == k).any() else None for k in labels
    ]
    return {
        "accuracy": float((pred == targets).mean()),
        "f1_macro": float(np.mean(f1)),
        "roc_auc": auc,
        "n": int(len(targets)),
        "f1_per_class": {c: float(v) for c, v in zip(CLASSES, f1, strict=True)},
        "recall_per_class": dict(zip(CLASSES, recall, strict=True)),
    }


def fit(
    config: TrainConfig,
    train: SliceDataset,
    val: SliceDataset,
    device: torch.device | str,
    *,
    seed: int,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train one model from random weights for ``config.epochs``; keep the lowest val loss.

    ``should_stop`` is asked after every epoch; when it says yes the fit ends there (a time
    budget: the history shows how many epochs ran)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    cuda = device.type == "cuda"
    set_cuda_flags(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=cuda
    )
    scaler = grad_scaler(device, config.amp)
    # On a GPU the augmentation draws happen there too (no host round trips); the order is
    # drawn where the data lives, so indexing host-resident data never waits for the GPU.
    generator = torch.Generator(device=device if cuda else "cpu").manual_seed(seed)
    if config.data_on_device:
        train, val = train.to(device), val.to(device)
    order_generator = generator
    if train.images.device.type != generator.device.type:
        order_generator = torch.Generator(device=train.images.device).manual_seed(seed)
    train_preset, eval_preset = TrainPreset.from_config(config), EvalPreset(config)
    use_soft = config.soft_targets and train.soft is not None
    adjust = None
    if config.balance > 0:
        adjust = config.balance * class_log_prior(train.targets, train.soft if use_soft else None)
        adjust = adjust.to(device)
    position_weight = config.position_weight if config.head == "ordinal" else 0.0
    best = FitResult(seed, {}, -1, float("inf"))
    # The best weights and optimizer state are kept where they are (on the GPU: a device-side
    # copy, no wait) and copied to the host once, after the last epoch.
    best_model: dict[str, torch.Tensor] = {}
    best_optimizer: dict[str, Any] | None = None
    # Dropout draws from the global generator: seed it for this fit, and give the caller's
    # state back after, so one seed trains the same model whatever ran before it in the process
    # (the imbalanced-set test flipped with the order the tests ran in).
    with torch.random.fork_rng(devices=[device.index or 0] if cuda else []):
        torch.manual_seed(seed)
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            train_loss, seen = train_one_epoch(
                model, optimizer, train, train_preset, device,
                batch_size=config.batch_size, generator=generator, amp=config.amp,
                channels_last=config.channels_last, use_soft=use_soft, max_batches=config.max_batches,
                adjust=adjust, position_weight=position_weight, order_generator=order_generator,
                scaler=scaler,
            )  # fmt: skip
            if cuda:
                torch.cuda.synchronize(device)
            train_seconds = time.perf_counter() - t0
            val_loss, val_accuracy = validation_loss_accuracy(
                model, val, eval_preset, device, batch_size=eval_batch_size(config, device),
                amp=config.amp, channels_last=config.channels_last, use_soft=use_soft, adjust=adjust,
            )  # fmt: skip
            stats = EpochStats(
                seed, epoch, train_loss, val_loss, val_accuracy,
                time.perf_counter() - t0, seen / max(train_seconds, 1e-9),
            )  # fmt: skip
            best.history.append(stats)
            if val_loss < best.best_val_loss:
                best.best_val_loss = val_loss
                best.best_epoch = epoch
                best_model = _copy(model.state_dict())
                best_optimizer = _copy(optimizer.state_dict())
            log.info(
                "seed %d epoch %d/%d: train loss %.4f, val loss %.4f, val acc %.3f, %.0f img/s",
                seed, epoch, config.epochs, train_loss, val_loss, val_accuracy, stats.images_per_s,
            )  # fmt: skip
            if on_epoch is not None:
                on_epoch(stats)
            if should_stop is not None and should_stop():
                break
    best.state_dict = _to_cpu(best_model)
    best.optimizer_state = _to_cpu(best_optimizer)
    return best


@dataclass
class ProtocolResult:
    """Every seed's fit and test metrics, and the ensemble of all seeds (mean probability)
    with its decision bias; ``best`` is the seed with the lowest validation loss."""

    fits: list[FitResult]
    test_metrics: list[dict[str, Any]]
    #: Per-class decision bias of each seed and of the ensemble (``prior`` rule), or zeros.
    biases: list[list[float]] = field(default_factory=list)
    ensemble_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    ensemble_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def best_index(self) -> int:
        """Index of the seed whose selected model has the lowest validation loss."""
        return int(np.argmin([f.best_val_loss for f in self.fits]))

    def summary(self) -> dict[str, Any]:
        """Per-seed and aggregate (mean, sd over seeds) test metrics and the ensemble's,
        JSON-able."""
        per_seed = [
            {"seed": f.seed, "best_epoch": f.best_epoch, "best_val_loss": f.best_val_loss,
             **{k: v for k, v in m.items() if k != "probs"}}
            for f, m in zip(self.fits, self.test_metrics, strict=True)
        ]  # fmt: skip
        agg: dict[str, Any] = {}
        for key in ("accuracy", "f1_macro", "roc_auc"):
            vals = [m[key] for m in self.test_metrics if m.get(key) is not None]
            if vals:
                agg[key] = {
                    "mean": float(np.mean(vals)),
                    "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                }
        ensemble = {k: v for k, v in self.ensemble_metrics.items() if k != "probs"}
        return {
            "seeds": per_seed,
            "test": agg,
            "ensemble": ensemble,
            "ensemble_bias": self.ensemble_bias,
            "selected_seed": self.fits[self.best_index].seed,
        }


def _eval_probs(
    model: nn.Module, data: SliceDataset, config: TrainConfig, device: torch.device
) -> np.ndarray:
    """Class probabilities of ``data`` under the evaluation preset (N×3 NumPy)."""
    p = prepared_probs(
        model, data.images, EvalPreset(config), device, batch_size=eval_batch_size(config, device),
        amp=config.amp, channels_last=config.channels_last,
    )  # fmt: skip
    return p.cpu().numpy() if p is not None else np.zeros((0, len(CLASSES)), np.float32)


def _decision_bias(config: TrainConfig, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The decision rule's per-class bias, fitted on the training images' probabilities."""
    if config.decision != "prior" or len(probs) == 0:
        return np.zeros(len(CLASSES))
    priors = np.bincount(targets, minlength=len(CLASSES)).astype(float)
    return prior_bias(np.log(np.clip(probs, 1e-12, None)), priors)


def run_protocol(
    config: TrainConfig,
    train: SliceDataset,
    val: SliceDataset,
    test: SliceDataset,
    device: torch.device | str,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ProtocolResult:
    """Fit every seed of ``config``; fit each seed's and the ensemble's decision bias on the
    training and validation images; evaluate all of them on ``test``.

    ``should_stop`` (a time budget) is asked after every epoch: when it says yes, the current
    seed ends after that epoch, no further seed starts, and the result holds the seeds so far."""
    device = torch.device(device)
    run = functools.partial(
        _run_protocol, config, train, val, test, device, on_epoch=on_epoch, should_stop=should_stop
    )
    if device.type == "cpu" and config.cpu_threads:
        previous = torch.get_num_threads()
        torch.set_num_threads(config.cpu_threads)
        try:
            return run()
        finally:
            torch.set_num_threads(previous)
    return run()


def _run_protocol(
    config: TrainConfig,
    train: SliceDataset,
    val: SliceDataset,
    test: SliceDataset,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ProtocolResult:
    fits, tests, biases = [], [], []
    fitted_probs, test_probs = [], []
    fitted = SliceDataset(
        train.image_ids + val.image_ids,
        torch.cat([train.images.cpu(), val.images.cpu()]),
        torch.cat([train.targets.cpu(), val.targets.cpu()]),
    )
    fitted_targets = fitted.targets.numpy()
    test_targets = test.targets.cpu().numpy()
    for seed in config.seeds:
        result = fit(
            config, train, val, device, seed=seed, on_epoch=on_epoch, should_stop=should_stop
        )
        model = model_from_state(config, result.state_dict).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        p_fit = _eval_probs(model, fitted, config, device)
        p_test = _eval_probs(model, test, config, device) if len(test) else np.zeros((0, 3))
        bias = _decision_bias(config, p_fit, fitted_targets)
        p_test_b = apply_bias(p_test, bias)
        metrics = {**classification_metrics(test_targets, p_test_b), "probs": p_test_b}
        fits.append(result)
        tests.append(metrics)
        biases.append([float(b) for b in bias])
        fitted_probs.append(p_fit)
        test_probs.append(p_test)
        if should_stop is not None and should_stop():
            break
    ens_bias = _decision_bias(config, np.mean(fitted_probs, axis=0), fitted_targets)
    ens_test = apply_bias(np.mean(test_probs, axis=0), ens_bias)
    ensemble = {**classification_metrics(test_targets, ens_test), "probs": ens_test}
    return ProtocolResult(fits, tests, biases, [float(b) for b in ens_bias], ensemble)


def model_from_state(config: TrainConfig, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A model of ``config`` holding ``state_dict``, in eval mode, on the CPU."""
    model = build_model(config)
    model.load_state_dict(state_dict)
    return model.eval()


def protocol_checkpoint(result: ProtocolResult, config: TrainConfig) -> dict[str, Any]:
    """The checkpoint dict of a whole protocol: every seed's weights (the served model is
    their ensemble with the decision bias), plus the best seed's as ``model``/``optimizer``."""
    best = result.fits[result.best_index]
    return {
        "model": best.state_dict,
        "optimizer": best.optimizer_state,
        "epoch": best.best_epoch,
        "config": config.to_dict(),
        "models": [f.state_dict for f in result.fits],
        "seeds": [f.seed for f in result.fits],
        "decision_bias": result.ensemble_bias,
    }


def save_checkpoint(
    path: Path, model_state: dict[str, torch.Tensor], config: TrainConfig, *, epoch: int,
    optimizer_state: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write a checkpoint dict: model, optimizer, epoch and the config that made it."""
    torch.save(
        {
            "model": model_state,
            "optimizer": optimizer_state,
            "epoch": epoch,
            "config": config.to_dict(),
        },
        path,
    )


def load_checkpoint(path: Path) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Load a checkpoint onto the CPU: (model in eval mode, its config, the raw dict).

    A checkpoint holding several seeds (``models``) loads as their :class:`Ensemble` with the
    stored decision bias; an older single-model checkpoint loads as that model."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = TrainConfig.from_dict(ckpt["config"])
    if ckpt.get("models"):
        members = [model_from_state(config, state) for state in ckpt["models"]]
        return Ensemble(members, ckpt.get("decision_bias")).eval(), config, ckpt
    return model_from_state(config, ckpt["model"]), config, ckpt
