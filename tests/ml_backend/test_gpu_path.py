"""The training path's GPU-facing pieces (issue 23), checked on the CPU: the head in float32
under autocast, float16 + loss scaling where bfloat16 is not native, validation with one
sync matching the full evaluation, the best snapshot taken without aliasing the live
weights, and a time budget that stops a protocol cleanly."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.train import synthetic_prepared
from ml_backend import train as T
from ml_backend.config import CPU_SMALL
from ml_backend.data import stratified_split
from ml_backend.model import build_model
from ml_backend.transforms import EvalPreset, TrainPreset

TINY = CPU_SMALL.replace(width=4, head_hidden=(8,), square=40, crop=32, batch_size=8, epochs=3)


@pytest.fixture(scope="module")
def split():
    data = synthetic_prepared(72, TINY)
    tr, va, te = stratified_split(data.targets.tolist(), TINY.split, 0)
    return data.subset(tr), data.subset(va), data.subset(te)


def test_the_head_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    model = build_model(CPU_SMALL).eval()
    x = torch.randn(4, 1, CPU_SMALL.crop, CPU_SMALL.crop)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw = model.features(x)
        body = torch.flatten(model.pool(model.body(model.stem(x))), 1)
    assert raw.dtype == torch.float32
    # Exactly the float32 head applied to the (autocast) body's features.
    assert torch.equal(raw, model.head(body.float()))


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled")
def test_float16_and_a_loss_scaler_where_bfloat16_is_not_native(monkeypatch):
    cuda = torch.device("cuda:0")
    for capability, dtype in (((7, 0), torch.float16), ((8, 0), torch.bfloat16)):
        T._native_bf16.cache_clear()
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None, c=capability: c)
        assert T.amp_dtype(cuda) == dtype
        assert (T.grad_scaler(cuda, amp=True) is not None) == (dtype == torch.float16)
        assert T.grad_scaler(cuda, amp=False) is None
    T._native_bf16.cache_clear()
    assert T.amp_dtype(torch.device("cpu")) == torch.bfloat16
    assert T.grad_scaler(torch.device("cpu"), amp=True) is None


def test_an_epoch_with_a_loss_scaler_trains(split):
    train, _, _ = split
    torch.manual_seed(0)
    model = build_model(TINY)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=TINY.lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    loss, seen = T.train_one_epoch(
        model, opt, train, TrainPreset.from_config(TINY), torch.device("cpu"),
        batch_size=TINY.batch_size, generator=torch.Generator().manual_seed(0), scaler=scaler,
        order_generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert math.isfinite(loss) and seen == len(train)
    assert scaler.get_scale() == 1024.0  # no overflow: every step was taken, unscaled
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_validation_with_one_sync_matches_the_full_evaluation(split):
    _, val, _ = split
    torch.manual_seed(0)
    model = build_model(TINY)
    adjust = T.class_log_prior(val.targets)
    preset = EvalPreset(TINY)
    full = T.evaluate(model, val, preset, torch.device("cpu"), batch_size=5, adjust=adjust)
    loss, accuracy = T.validation_loss_accuracy(
        model, val, preset, torch.device("cpu"), batch_size=len(val), adjust=adjust
    )
    assert loss == pytest.approx(full["loss"], rel=1e-5)
    assert accuracy == pytest.approx(full["accuracy"])


def test_the_best_snapshot_is_the_best_epochs_weights_not_the_last(split):
    train, val, _ = split
    longer = T.fit(TINY, train, val, "cpu", seed=3)
    # Training only up to the best epoch ends on exactly the weights kept as best.
    again = T.fit(TINY.replace(epochs=longer.best_epoch), train, val, "cpu", seed=3)
    assert again.best_epoch == longer.best_epoch
    for key, value in longer.state_dict.items():
        assert value.device.type == "cpu"
        assert torch.equal(value, again.state_dict[key]), key
    assert longer.optimizer_state["state"]


def test_a_time_budget_ends_the_protocol_after_an_epoch(split):
    train, val, test = split
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return True

    seen = []
    result = T.run_protocol(TINY.replace(seeds=(0, 1, 2)), train, val, test, "cpu",
                            on_epoch=seen.append, should_stop=should_stop)  # fmt: skip
    assert [(s.seed, s.epoch) for s in seen] == [(0, 1)]
    assert len(result.fits) == 1 and result.ensemble_metrics["n"] == len(test)
