"""``slicerank bench train``: training throughput of the study's model, bare forward+backward
rate, inference rate and ``/predict`` latency through a real HTTP server; ``--full`` runs the
study's whole protocol (70 epochs × 10 seeds on 3,323 images) on a GPU.

The images are synthetic (disc phantoms at the study's geometry); the weights are random for
the latency part (speed does not depend on them).
"""

from __future__ import annotations

import os
import platform
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml_backend.config import GPU, STUDY, TrainConfig
from ml_backend.data import SliceDataset
from ml_backend.model import build_model, count_trainable
from ml_backend.settings import resolve_device
from ml_backend.train import EpochStats, run_protocol, train_one_epoch
from ml_backend.transforms import TrainPreset

#: The study's class counts (one-image-at-a-time labels, Results): 3,323 images in all.
STUDY_CLASS_COUNTS = (665, 2413, 245)


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


def bare_forward_backward(
    config: TrainConfig, device: torch.device, *, batch_size: int, steps: int
) -> float:
    """Images/s of forward+backward+optimiser step on one resident random batch (no data
    handling, no augmentation): the ceiling the training loop is measured against."""
    model = build_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=device.type == "cuda")
    x = torch.randn(batch_size, 1, config.crop, config.crop, device=device)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (batch_size,), device=device)
    amp = config.amp and device.type == "cuda"

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t0)


def training_rate(
    config: TrainConfig, device: torch.device, *, batch_size: int, batches: int
) -> float:
    """Images/s of :func:`ml_backend.train.train_one_epoch` (indexing + augmentation + step)."""
    data = synthetic_prepared(batch_size * (batches + 1), config)
    if config.data_on_device:
        data = data.to(device)
    model = build_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, fused=device.type == "cuda")
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(0)
    kwargs = dict(batch_size=batch_size, generator=gen, amp=config.amp and device.type == "cuda",
                  channels_last=config.channels_last)  # fmt: skip
    train_one_epoch(
        model, opt, data, TrainPreset.from_config(config), device, max_batches=1, **kwargs
    )
    _sync(device)
    t0 = time.perf_counter()
    _, seen = train_one_epoch(
        model, opt, data, TrainPreset.from_config(config), device, max_batches=batches, **kwargs
    )
    _sync(device)
    return seen / (time.perf_counter() - t0)


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
        "cpu_count": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        # Other work on a shared machine skews the numbers: record how busy it was.
        "load_average_1m": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_bench(
    *, batches: int = 6, batch_size: int = 32, predict_requests: int = 40, device: str = "auto"
) -> dict[str, Any]:
    """The default benchmark (seconds to a few minutes on a CPU)."""
    dev = torch.device(resolve_device(device))
    config = GPU if dev.type == "cuda" else STUDY
    train_ips = training_rate(config, dev, batch_size=batch_size, batches=batches)
    bare_ips = bare_forward_backward(config, dev, batch_size=batch_size, steps=batches)
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
        "inference_images_per_s": infer_ips,
        "study_epoch_s": epoch_s,
        "study_protocol_h": epoch_s * config.epochs * len(config.seeds) / 3600,
        "predict_one_task": predict_latency(predict_requests, device="cpu"),
    }


def run_full_protocol(
    *, device: str = "auto", config: TrainConfig = GPU, n_images: int = 3323
) -> dict[str, Any]:
    """The study's full protocol on synthetic data: every seed, every epoch, split 80:10:10,
    plus the bare forward+backward rate measured in the same process for comparison.

    Untested on a GPU so far (none was available while this was written)."""
    from ml_backend.data import stratified_split

    dev = torch.device(resolve_device(device))
    if dev.type != "cuda":
        raise RuntimeError("--full runs the 70-epoch x 10-seed protocol and needs a CUDA GPU")
    data = synthetic_prepared(n_images, config)
    tr, va, te = stratified_split(data.targets.tolist(), config.split, config.split_seed)
    bare = bare_forward_backward(config, dev, batch_size=config.batch_size, steps=50)
    history: list[EpochStats] = []
    t0 = time.perf_counter()
    result = run_protocol(
        config, data.subset(tr), data.subset(va), data.subset(te), dev, on_epoch=history.append
    )
    total_s = time.perf_counter() - t0
    train_ips = float(np.median([h.images_per_s for h in history]))
    return {
        "machine": machine(),
        "device": str(dev),
        "preset": config.name,
        "images": n_images,
        "epochs": config.epochs,
        "seeds": len(config.seeds),
        "batch_size": config.batch_size,
        "total_s": total_s,
        "train_images_per_s_median": train_ips,
        "bare_forward_backward_images_per_s": bare,
        "train_vs_bare": train_ips / bare,
        "test": result.summary()["test"],
        "ensemble": result.summary()["ensemble"],
    }


def main(args) -> int:
    """Handler of ``slicerank bench train``."""
    import json

    from slicerank_base.jsonout import write_json

    if args.full:
        numbers = run_full_protocol(device=args.device)
    else:
        numbers = run_bench(batches=args.batches, batch_size=args.batch_size,
                            predict_requests=args.predict_requests, device=args.device)  # fmt: skip
    print(json.dumps(numbers, indent=2))
    if args.json:
        write_json(args.json, numbers)
    return 0
