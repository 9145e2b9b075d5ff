"""The study's classifier: a ResNet trained from scratch with a feed-forward head (3 outputs).

The residual body follows He et al. 2016 (BasicBlock, as torchvision's ResNet-18/34) but takes
the stem width and the block counts from the config, so the CPU preset can use a narrow,
shallow copy of the same design; with ``width=64, layers=(3, 4, 6, 3)`` it is ResNet-34.

The head is either the study's three logits (``head="softmax"``) or an ordinal
(cumulative-link) head: one latent position and two learned cut-points
(:mod:`ml_backend.ordinal`). Either way ``forward`` returns N×3 scores whose softmax is the
class probabilities (the ordinal head returns log-probabilities), so training, evaluation and
serving treat both alike. :class:`Ensemble` averages several seeds' probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from ml_backend.config import TrainConfig
from ml_backend.ordinal import CutPoints, cumulative_log_probs


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (projection when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward pass."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SliceResNet(nn.Module):
    """ResNet body + feed-forward head returning class logits (softmax gives probabilities)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        w = config.width
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 7, 2, 3, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        in_ch = w
        for i, blocks in enumerate(config.layers):
            out_ch = w * 2**i
            for b in range(blocks):
                stages.append(BasicBlock(in_ch, out_ch, 2 if (b == 0 and i > 0) else 1))
                in_ch = out_ch
        self.body = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        for hidden in config.head_hidden:
            head += [
                nn.Linear(in_ch, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(config.head_dropout),
            ]
            in_ch = hidden
        self.ordinal = config.head == "ordinal"
        head.append(nn.Linear(in_ch, 1 if self.ordinal else config.num_classes))
        self.head = nn.Sequential(*head)
        self.cuts = CutPoints() if self.ordinal else None
        self._init_weights()

    def _init_weights(self) -> None:
        # Random initialisation as torchvision's ResNet (the study trained from scratch).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W images → the head's raw output (N×1 latent position or N×3 logits).

        The head runs in float32 even under autocast: in bfloat16 the latent position would be
        rounded in steps of 0.016-0.03, and the decision bias fitted on those probabilities
        would not match serving's float32 ones. The head is tiny; the body keeps the speed."""
        x = torch.flatten(self.pool(self.body(self.stem(x))), 1)
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())

    def scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head output → N×3 class scores (ordinal: log-probabilities)."""
        if self.cuts is None:
            return raw
        c1, c2 = self.cuts()
        return cumulative_log_probs(raw[:, 0], c1, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×H×W images → N×3 class scores (softmax gives the probabilities)."""
        return self.scores(self.features(x))


class Ensemble(nn.Module):
    """Several fitted models as one: log of their mean class probabilities, plus a per-class
    decision bias (:func:`ml_backend.ordinal.prior_bias`), so ``softmax(forward(x))`` is the
    ensemble's (re-weighted) probabilities."""

    def __init__(self, members: list[nn.Module], bias: list[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        self.register_buffer("bias", torch.tensor(bias or [0.0, 0.0, 0.0], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean probability of the members (as log) plus the decision bias."""
        probs = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members])
        return torch.log(probs.mean(0).clamp_min(1e-12)) + self.bias


def build_model(config: TrainConfig) -> SliceResNet:
    """A freshly (randomly) initialised model for ``config``."""
    return SliceResNet(config)


def count_trainable(model: nn.Module) -> int:
    """Number of trainable parameters (Table 1 reports 22,199,747 for the study's model)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
