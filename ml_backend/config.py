"""The training recipe as one frozen, typed config, and the named presets.

The ``study`` preset follows Zaman et al. 2023 (Methods, Table 1):

* **Architecture** — "Resnet + feed forward neural network", trained from scratch, three
  outputs, 22,199,747 trainable parameters. Among the standard ResNet depths only ResNet-34
  lands near that (ResNet-18 ≈ 11.2M, ResNet-50's body alone ≈ 23.5M). With a one-channel
  (grayscale) stem the ResNet-34 body holds 21,278,400 parameters; the paper does not give the
  head, and no "round" head width reproduces the count exactly (we searched one to three
  hidden layers, with and without batch norm and biases, one- and three-channel stems). We use
  one hidden layer of 1,785 units (512 → 1785 → ReLU → dropout → 3), which gives
  **22,199,463** trainable parameters, 284 (0.001 %) short of Table 1.
* **Optimiser** — AdamW, learning rate 1e-4 (weight decay: PyTorch's default 0.01; the paper
  does not give it).
* **Batch size** — not reported in the paper's Table 1; 32.
* **Split** — stratified 80:10:10; up to 70 epochs keeping the lowest validation loss; 10 runs
  with different seeds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does; stored beside every checkpoint."""

    name: str = "study"
    # --- model ---
    #: Residual blocks per stage (ResNet-34: 3, 4, 6, 3).
    layers: tuple[int, ...] = (3, 4, 6, 3)
    #: Channels of the first stage; doubled at each later stage (ResNet: 64).
    width: int = 64
    in_channels: int = 1
    #: Hidden widths of the feed-forward head.
    head_hidden: tuple[int, ...] = (1785,)
    head_dropout: float = 0.5
    num_classes: int = 3
    # --- input geometry (see ml_backend.transforms) ---
    #: Fraction of the height removed, half from the top and half from the bottom.
    trim_vertical: float = 0.40
    #: Fraction of the width removed, half from each side.
    trim_horizontal: float = 0.30
    #: Side of the square centre crop taken after trimming.
    square: int = 256
    #: Side of the random (training) / centre (evaluation) crop fed to the network.
    crop: int = 224
    #: Scale the trimmed image so its shorter side is ``square``: "if_smaller" only enlarges
    #: (the paper's images were large enough for a plain 256 crop), "always" also shrinks.
    resize: str = "if_smaller"
    max_rotation_deg: float = 15.0
    hflip: bool = True
    vflip: bool = True
    # --- optimisation ---
    lr: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    epochs: int = 70
    seeds: tuple[int, ...] = tuple(range(10))
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    #: Train on the consensus class probabilities (ranking label source) instead of hard classes.
    soft_targets: bool = False
    # --- labels → loss → decision (see docs/guide/ml.md, "How the model learns") ---
    #: "ordinal": one latent position per image and two learned cut-points (a cumulative-link
    #: model, McCullagh 1980), so the three classes are ordered by construction;
    #: "softmax": three independent logits (the study's head).
    head: str = "ordinal"
    #: Weight of the regression of the latent position onto the ranking consensus's continuous
    #: position (ordinal head, ranking labels with scores); 0 = classes only. Off by default:
    #: on phantom cohorts it measured no better than the classes alone (docs/bench/model.md).
    position_weight: float = 0.0
    #: Logit adjustment (Menon et al. 2021) of the training loss by tau * log(class prior):
    #: 0 = plain cross-entropy, 1 = balanced. On by default: on a set with 2% too_apical
    #: (3-seed ensembles, 6 and 10 epochs) the plain loss left that class's recall at 0.4-0.5
    #: in 3 of 6 runs, the adjusted one in 1 of 6, and at 10 epochs gave 0.8-0.9 in 3 of 3
    #: (tests/ml_backend/test_learning.py); on two balanced cohorts it measured level with the
    #: plain loss (docs/bench/model.md).
    balance: float = 1.0
    #: Decision rule: "prior" adds one bias per class, fitted after training so the predicted
    #: class mix on the training images matches the labels' (no class can vanish); "argmax".
    decision: str = "prior"
    #: Split by scan (no scan in two of train/val/test) when scan ids are known, else by image.
    group_by_scan: bool = True
    # --- execution ---
    amp: bool = False
    channels_last: bool = False
    #: Keep the whole (pre-cropped, uint8) data set on the training device.
    data_on_device: bool = False
    #: Stop after this many training batches per epoch (benchmarks); 0 = all.
    max_batches: int = 0
    #: CPU threads while training on a CPU (0 = torch's default, one per core). A tiny model
    #: gains little from a second thread, and on a busy machine OpenMP's spinning barriers
    #: make it far slower: cpu-small took 72 s per epoch on 2 threads vs 2.1 s on 1 with the
    #: 2-core development VM at load average 18.
    cpu_threads: int = 0

    def __post_init__(self) -> None:
        problems = []
        if (
            len(self.split) != 3
            or any(f < 0 for f in self.split)
            or abs(sum(self.split) - 1) > 1e-6
        ):
            problems.append(f"split={self.split} must be three non-negative fractions summing to 1")
        if not 0 <= self.trim_vertical < 1 or not 0 <= self.trim_horizontal < 1:
            problems.append("trim_vertical and trim_horizontal must lie in [0, 1)")
        if self.crop > self.square:
            problems.append(f"crop={self.crop} must not exceed square={self.square}")
        if self.resize not in ("if_smaller", "always"):
            problems.append(f"resize={self.resize!r} must be 'if_smaller' or 'always'")
        if self.epochs < 1 or self.batch_size < 1 or not self.seeds:
            problems.append("epochs and batch_size must be >= 1 and seeds non-empty")
        if self.cpu_threads < 0:
            problems.append(f"cpu_threads={self.cpu_threads} must be >= 0 (0 = torch's default)")
        if self.num_classes != 3:
            problems.append("num_classes must be 3 (too_basal, lv, too_apical)")
        if self.head not in ("ordinal", "softmax"):
            problems.append(f"head={self.head!r} must be 'ordinal' or 'softmax'")
        if self.decision not in ("prior", "argmax"):
            problems.append(f"decision={self.decision!r} must be 'prior' or 'argmax'")
        if not 0 <= self.balance <= 2 or self.position_weight < 0:
            problems.append("balance must lie in [0, 2] and position_weight be >= 0")
        if problems:
            raise ValueError(f"invalid TrainConfig {self.name!r}: " + "; ".join(problems))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        values = {}
        for key, value in data.items():
            values[key] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


#: The study's recipe on any device (fp32, data loaded per batch from host memory).
STUDY = TrainConfig()

#: The study's recipe tuned for one CUDA GPU: mixed precision, channels-last, the whole data set
#: resident on the device and augmented there in batches, so no input pipeline can stall it.
GPU = STUDY.replace(name="gpu", amp=True, channels_last=True, data_on_device=True)

#: A narrow ResNet on small inputs for tests and the CPU demo (seconds per epoch on two cores).
CPU_SMALL = STUDY.replace(
    name="cpu-small",
    layers=(1, 1, 1, 1),
    width=8,
    head_hidden=(32,),
    head_dropout=0.2,
    square=72,
    crop=64,
    resize="always",
    # A tenth of the study's rate is too slow to learn anything in a few epochs.
    lr=1e-3,
    batch_size=16,
    # Three epochs let one demo run keep an all-`lv` model (the lowest validation loss after
    # epoch 1 or 2); eight cost ~3 s per model on 430 slices and still improve at the end
    # (test accuracy 0.968 vs 0.941 mean over 6 seeds on phantom slices, true labels).
    epochs=8,
    # Three seeds served as one ensemble (issue 11: a single CPU model swings by several
    # points of accuracy from seed to seed); about 3x the training time, ~1 min per demo.
    seeds=(0, 1, 2),
    cpu_threads=1,
)

#: Presets by name, as ``--preset`` and ``SLICERANK_TRAIN_PRESET`` take them.
PRESETS: dict[str, TrainConfig] = {c.name: c for c in (STUDY, GPU, CPU_SMALL)}


def get_preset(name: str) -> TrainConfig:
    """The preset called ``name``; an unknown name is an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown training preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None
