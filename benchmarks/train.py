"""``slicerank bench train``: training throughput of the study's model against the bare
forward+backward rate, inference rate and (optionally) ``/predict`` latency through a real HTTP
server; ``--full`` runs the study's protocol (70 epochs × 10 seeds on 3,323 images, or fewer
with ``--epochs``/``--seeds``/``--max-seconds``) with one JSON line per epoch.

The images are synthetic (disc phantoms at the study's geometry); the weights are random for
the latency part (speed does not depend on them). Nothing here needs the serving stack
(FastAPI, uvicorn), Redis, RQ or pydicom except the optional ``/predict`` step, so
``scripts/gpu_first_run.py`` can run it from the source tree on a bare GPU machine.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_backend.config import GPU, STUDY, TrainConfig, get_preset
from ml_backend.data import SliceDataset, stratified_split
from ml_backend.model import build_model, count_trainable
from ml_backend.settings import resolve_device
from ml_backend.train import (
    EpochStats,
    amp_dtype,
    batch_loss,
    class_log_prior,
    grad_scaler,
    run_protocol,
    set_cuda_flags,
    train_one_epoch,
)
from ml_backend.transforms import TrainPreset

#: The study's class counts (one-image-at-a-time labels, Results): 3,323 images in all.
STUDY_CLASS_COUNTS = (665, 2413, 245)
#: Seeds of the study's protocol, for extrapolating a shorter run.
STUDY_SEEDS = len(STUDY.seeds)


def synthetic_prepared(n: int, config: TrainConfig, seed: int = 0) -> SliceDataset:
    """``n`` prepared (square uint8) phantom images with labels in the study's proportions."""
    rng = np.random.default_rng(seed)
    s = config.square
    yy, xx = np.mgrid[0:s, 0:s]
    r2 = (yy - s / 2) ** 2 + (xx - s / 2) ** 2
    total = sum(STUDY_CLASS_COUNTS)
    targets = rng.choice(3, size=n, p=[c / total for c in STUDY_CLASS_COUNTS])
    radius = np.array([0.3, 0.2, 0.08])[targets] * s * rng.uniform(0.85, 1.15, n)
    images = np.empty((n, 1, s, s), np.uint8)
    for i in range(n):
        images[i, 0] = np.where(r2 < radius[i] ** 2, 200, 40) + rng.integers(0, 30, (s, s))
    return SliceDataset(
        [f"img{i:05d}" for i in range(n)],
        torch.from_numpy(images),
        torch.from_numpy(targets.astype(np.int64)),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_and_optimizer(config: TrainConfig, device: torch.device):
    """The model and optimizer exactly as :func:`ml_backend.train.fit` sets them up (cuDNN
    flags included), from a fixed seed."""
    set_cuda_flags(device)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )  # fmt: skip
    return model, optimizer


def _adjust(config: TrainConfig, targets: torch.Tensor, device: torch.device):
    """The logit adjustment ``fit`` would use for these targets (None when off)."""
    if config.balance <= 0:
        return None
    return (config.balance * class_log_prior(targets)).to(device)


def _summary(rates: list[float], **extra: Any) -> dict[str, Any]:
    return {"images_per_s": statistics.median(rates), "runs": rates, **extra}


def bare_forward_backward(
    config: TrainConfig, device: torch.device, *, batch_size: int, steps: int, repeats: int = 1
) -> dict[str, Any]:
    """Images/s of forward+backward+optimiser step on one resident random batch (no data
    handling, no augmentation): the ceiling the training loop is measured against. The same
    loss (:func:`ml_backend.train.batch_loss`), autocast type, loss scaler, memory format and
    cuDNN setting as training; the median of ``repeats`` timings of ``steps`` steps.

    ``dispatch_share`` is the host's time to queue the steps over the whole time: near 1 on a
    GPU means the step is launch-bound (the GPU waits for Python), which CUDA graphs cure."""
    model, opt = _model_and_optimizer(config, device)
    model.train()
    x = torch.randn(batch_size, 1, config.crop, config.crop, device=device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch_size,), device=device)
    adjust = _adjust(config, y, device)
    scaler = grad_scaler(device, config.amp)

    def step() -> None:
        loss = batch_loss(model, x, y, adjust=adjust, amp_device=device, amp=config.amp)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    for _ in range(2):
        step()
    _sync(device)
    rates, shares = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        queued = time.perf_counter() - t0
        _sync(device)
        elapsed = time.perf_counter() - t0
        rates.append(steps * batch_size / elapsed)
        shares.append(queued / elapsed)
    return _summary(rates, steps=steps, batch_size=batch_size,
                    dispatch_share=statistics.median(shares))  # fmt: skip


def graphed_bare_rate(
    config: TrainConfig, device: torch.device, *, batch_size: int, steps: int, repeats: int = 1
) -> dict[str, Any]:
    """:func:`bare_forward_backward` with the whole step (forward, backward, fused AdamW)
    captured once in a CUDA graph and replayed: the rate without Python's launch overhead, an
    upper bound for ``torch.compile(mode="reduce-overhead")``. CUDA only."""
    if device.type != "cuda":
        raise RuntimeError("CUDA graphs need a CUDA device")
    set_cuda_flags(device)
    torch.manual_seed(0)
    model = build_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True, capturable=True)  # fmt: skip
    model.train()
    x = torch.randn(batch_size, 1, config.crop, config.crop, device=device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch_size,), device=device)
    adjust = _adjust(config, y, device)
    dtype = amp_dtype(device)
    if dtype == torch.float16:
        raise RuntimeError("float16 needs a loss scaler, which this ceiling does not capture")

    def step() -> None:
        # Autocast's weight cache must be off inside a graph (PyTorch's CUDA-graph notes).
        with torch.autocast("cuda", dtype=dtype, enabled=config.amp, cache_enabled=False):
            loss = batch_loss(model, x, y, adjust=adjust)
        loss.backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    _sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            graph.replay()
        _sync(device)
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return _summary(rates, steps=steps, batch_size=batch_size)


def training_rate(
    config: TrainConfig,
    device: torch.device,
    *,
    batch_size: int,
    steps: int,
    repeats: int = 1,
    data: SliceDataset | None = None,
) -> dict[str, Any]:
    """Images/s of :func:`ml_backend.train.train_one_epoch` (indexing + augmentation + step,
    one host sync per pass over the data as in training) on ``data`` (default: enough synthetic
    images for ``steps`` batches, at most the study's training split); the median of
    ``repeats`` timings of ``steps`` steps."""
    if data is None:
        n_train = round(sum(STUDY_CLASS_COUNTS) * 0.8)
        data = synthetic_prepared(min(batch_size * steps + 1, n_train), config)
    if config.data_on_device:
        data = data.to(device)
    model, opt = _model_and_optimizer(config, device)
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(0)
    order_gen = gen
    if data.images.device.type != gen.device.type:
        order_gen = torch.Generator(device=data.images.device).manual_seed(0)
    preset = TrainPreset.from_config(config)
    kwargs = dict(batch_size=batch_size, generator=gen, amp=config.amp,
                  channels_last=config.channels_last, adjust=_adjust(config, data.targets, device),
                  order_generator=order_gen, scaler=grad_scaler(device, config.amp))  # fmt: skip

    def run(n_steps: int) -> int:
        seen = 0
        while n_steps > 0:
            _, done = train_one_epoch(
                model, opt, data, preset, device, max_batches=n_steps, **kwargs
            )
            if done == 0:
                break
            n_steps -= -(-done // batch_size)
            seen += done
        return seen

    run(2)
    _sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seen = run(steps)
        _sync(device)
        rates.append(seen / (time.perf_counter() - t0))
    return _summary(rates, steps=steps, batch_size=batch_size)


def inference_rate(
    config: TrainConfig, device: torch.device, *, batch_size: int = 64, batches: int = 3
) -> float:
    """Images/s of evaluation-mode inference."""
    model = build_model(config).to(device).eval()
    x = torch.randn(batch_size, 1, config.crop, config.crop, device=device)
    with torch.inference_mode():
        model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
        _sync(device)
    return batches * batch_size / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict_latency(requests: int, *, device: str = "cpu") -> dict[str, float]:
    """Latency (ms) of ``POST /predict`` with one Classify task, through uvicorn and httpx,
    serving a registered study-size model (random weights) and a 416×416 PNG."""
    import httpx
    import uvicorn
    from PIL import Image

    from ml_backend.registry import ModelRegistry
    from ml_backend.server import create_app
    from ml_backend.settings import BackendSettings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        media = root / "media"
        (media / "img").mkdir(parents=True)
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (416, 416), dtype=np.uint8)).save(media / "img/a.png")
        (media / "manifest.csv").write_text("image_id,scan_id,path\nimg-a,s1,img/a.png\n")
        model = build_model(STUDY)
        ModelRegistry(root / "models").register(
            checkpoint={"model": model.state_dict(), "optimizer": None, "epoch": 0, "config": STUDY.to_dict()},
            config=STUDY.to_dict(), label_source={"source": "bench"}, splits={}, metrics={},
        )  # fmt: skip
        settings = BackendSettings(model_dir=root / "models", media_root=media, basic_auth_user="ls",
                                   basic_auth_pass="secret")  # fmt: skip
        app = create_app(settings, device=device)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            task = {"id": 1, "data": {"image": "/data/local-files/?d=media/img/a.png", "image_id": "img-a",
                                      "scan_id": "s1"}}  # fmt: skip
            body = {"tasks": [task], "project": "1.1700000000", "label_config": None, "params": {}}
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", auth=("ls", "secret"), timeout=30
            ) as client:
                for _ in range(100):
                    try:
                        client.get("/health")
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                client.post("/predict", json=body).raise_for_status()  # loads the model once
                times = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = client.post("/predict", json=body)
                    times.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                    assert r.json()["results"], r.text
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    arr = np.array(times)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "max_ms": float(arr.max()), "requests": requests}  # fmt: skip


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        # Other work on a shared machine skews the numbers: record how busy it was.
        "load_average_1m": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def predict_step(requests: int) -> dict[str, Any]:
    """``/predict`` latency, or why it was skipped: 0 requests, or no serving stack here (a
    bare GPU machine has no FastAPI/uvicorn, and the training numbers must not depend on it)."""
    if requests <= 0:
        return {"skipped": "--predict-requests 0"}
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"the serving stack is not installed ({exc})"}
    return predict_latency(requests, device="cpu")


def run_bench(
    *,
    batches: int = 6,
    batch_size: int = 32,
    predict_requests: int = 40,
    device: str = "auto",
    repeats: int | None = None,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """The default benchmark (seconds to a few minutes on a CPU): ``batches`` timed steps of
    training and of the bare step, each the median of ``repeats`` timings (default 3 on a GPU,
    1 on a CPU)."""
    dev = torch.device(resolve_device(device))
    config = config or (GPU if dev.type == "cuda" else STUDY)
    repeats = repeats or (3 if dev.type == "cuda" else 1)
    train = training_rate(config, dev, batch_size=batch_size, steps=batches, repeats=repeats)
    bare = bare_forward_backward(config, dev, batch_size=batch_size, steps=batches, repeats=repeats)
    train_ips, bare_ips = train["images_per_s"], bare["images_per_s"]
    infer_ips = inference_rate(config, dev)
    n_train = round(sum(STUDY_CLASS_COUNTS) * 0.8)
    n_val = round(sum(STUDY_CLASS_COUNTS) * 0.1)
    epoch_s = n_train / train_ips + n_val / infer_ips
    return {
        "machine": machine(),
        "device": str(dev),
        "preset": config.name,
        "trainable_parameters": count_trainable(build_model(config)),
        "input": f"{config.crop}x{config.crop}",
        "batch_size": batch_size,
        "train_images_per_s": train_ips,
        "bare_forward_backward_images_per_s": bare_ips,
        "train_vs_bare": train_ips / bare_ips,
        "train_runs": train["runs"],
        "bare_runs": bare["runs"],
        "bare_dispatch_share": bare["dispatch_share"],
        "inference_images_per_s": infer_ips,
        "study_epoch_s": epoch_s,
        "study_protocol_h": epoch_s * config.epochs * len(config.seeds) / 3600,
        "predict_one_task": predict_step(predict_requests),
    }


class EpochLog:
    """Appends one JSON line per epoch to a file (flushed at once, so a run that is cut off
    still leaves every finished epoch), with the seconds since the log started."""

    def __init__(self, path: str | os.PathLike[str] | None, **fields: Any) -> None:
        self.path = Path(path) if path else None
        self.fields = fields
        self.t0 = time.perf_counter()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, stats: EpochStats) -> None:
        if self.path is None:
            return
        row = {**self.fields, **stats.as_dict(), "elapsed_s": time.perf_counter() - self.t0}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def extrapolate(
    history: list[EpochStats], total_s: float, *, epochs: int, seeds: int = STUDY_SEEDS
) -> dict[str, Any]:
    """The whole protocol's time (``epochs`` × ``seeds``) from a shorter run: the seconds per
    epoch measured end to end (each seed's set-up and final evaluation included) times the
    epochs asked for. Exact when whole seeds ran; from the first seed's epochs otherwise."""
    done = len(history)
    if done == 0:
        return {"epochs_run": 0, "extrapolated_s": None}
    per_epoch = total_s / done
    complete = sum(1 for s in {h.seed for h in history}
                   if sum(h.seed == s for h in history) == epochs)  # fmt: skip
    return {
        "epochs_run": done,
        "seeds_complete": complete,
        "seconds_per_epoch": per_epoch,
        "extrapolated_s": per_epoch * epochs * seeds,
        "extrapolated_to": f"{epochs} epochs x {seeds} seeds",
    }


def run_full_protocol(
    *,
    device: str = "auto",
    config: TrainConfig = GPU,
    n_images: int = 3323,
    epochs: int | None = None,
    seeds: int | None = None,
    max_seconds: float | None = None,
    jsonl: str | os.PathLike[str] | None = None,
    bare_steps: int = 200,
    bare_repeats: int = 3,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> dict[str, Any]:
    """The study's protocol on synthetic data: ``seeds`` seeds (default the preset's 10) of
    ``epochs`` epochs (default 70), split 80:10:10, one JSON line per epoch to ``jsonl``, plus
    the bare forward+backward rate measured in the same process (``bare_steps`` 0: skip).

    With ``max_seconds`` the run stops after the epoch that leaves less than two epochs' time
    in the budget, and no new seed starts; the result then says how far it got and
    extrapolates (:func:`extrapolate`). On a CPU the study-size presets are refused (their
    protocol would take hundreds of hours there): use ``cpu-small``."""
    dev = torch.device(resolve_device(device))
    if dev.type != "cuda" and config.name in (STUDY.name, GPU.name):
        raise RuntimeError(
            f"--full with preset {config.name!r} needs a CUDA GPU (70 epochs x 10 seeds of the "
            "study model take hundreds of hours on a CPU); on a CPU use --preset cpu-small"
        )
    config = config.replace(
        epochs=epochs or config.epochs,
        seeds=tuple(range(seeds)) if seeds else config.seeds,
    )
    data = synthetic_prepared(n_images, config)
    tr, va, te = stratified_split(data.targets.tolist(), config.split, config.split_seed)
    bare = None
    if bare_steps > 0:
        bare = bare_forward_backward(
            config, dev, batch_size=config.batch_size, steps=bare_steps, repeats=bare_repeats
        )
    history: list[EpochStats] = []
    log_epoch = EpochLog(jsonl, preset=config.name, device=str(dev))
    t0 = time.perf_counter()

    def record(stats: EpochStats) -> None:
        history.append(stats)
        log_epoch(stats)
        if on_epoch is not None:
            on_epoch(stats)

    def should_stop() -> bool:
        if max_seconds is None or not history:
            return False
        return time.perf_counter() - t0 + 2 * history[-1].seconds > max_seconds

    result = run_protocol(config, data.subset(tr), data.subset(va), data.subset(te), dev,
                          on_epoch=record, should_stop=should_stop)  # fmt: skip
    total_s = time.perf_counter() - t0
    # The median: robust to the first epoch of each seed, which carries cuDNN's autotuning.
    train_ips = float(np.median([h.images_per_s for h in history]))
    summary = result.summary()
    numbers: dict[str, Any] = {
        "machine": machine(),
        "device": str(dev),
        "preset": config.name,
        "amp_dtype": str(amp_dtype(dev)).replace("torch.", "") if config.amp else None,
        "images": n_images,
        "epochs": config.epochs,
        "seeds": len(config.seeds),
        "batch_size": config.batch_size,
        "max_seconds": max_seconds,
        "stopped_early": len(history) < config.epochs * len(config.seeds),
        "total_s": total_s,
        **extrapolate(history, total_s, epochs=STUDY.epochs),
        "train_images_per_s_median": train_ips,
        "losses_finite": bool(
            all(np.isfinite([h.train_loss for h in history] + [h.val_loss for h in history]))
        ),
        "test": summary["test"],
        "ensemble": summary["ensemble"],
        "ensemble_bias": summary["ensemble_bias"],
    }
    if bare is not None:
        numbers["bare_forward_backward_images_per_s"] = bare["images_per_s"]
        numbers["bare_runs"] = bare["runs"]
        numbers["train_vs_bare"] = train_ips / bare["images_per_s"]
    return numbers


def main(args) -> int:
    """Handler of ``slicerank bench train``."""
    from slicerank_base.jsonout import write_json

    preset = get_preset(args.preset) if args.preset else None
    dev = resolve_device(args.device)
    config = preset or (GPU if dev.startswith("cuda") else STUDY)
    if dev == "cpu" and config.cpu_threads:
        # As training does: a small model on a busy CPU is far faster on one thread.
        torch.set_num_threads(config.cpu_threads)
    if args.full:
        numbers = run_full_protocol(
            device=dev, config=config, n_images=args.images, epochs=args.epochs, seeds=args.seeds,
            max_seconds=args.max_seconds, jsonl=args.jsonl, bare_steps=args.batches or 200,
            bare_repeats=args.repeats or 3,
        )  # fmt: skip
    else:
        numbers = run_bench(batches=args.batches or 6, batch_size=args.batch_size,
                            predict_requests=args.predict_requests, device=args.device,
                            repeats=args.repeats, config=config)  # fmt: skip
    print(json.dumps(numbers, indent=2))
    if args.json:
        write_json(args.json, numbers)
    return 0
