"""Ordinal pieces: the cumulative-link class probabilities and the prior-matching decision.

The three classes are ordered along the heart's long axis (too_basal < lv < too_apical). A
cumulative-link ("proportional odds") model (McCullagh 1980; CORAL, Cao et al. 2020, is the
same idea with shared weights) predicts one latent position ``eta`` per image and two
cut-points ``c1 < c2``::

    P(y > k) = sigmoid(eta - c_k),   k = 1, 2

so ``p(too_basal) = sigmoid(c1 - eta)``, ``p(too_apical) = sigmoid(eta - c2)`` and ``p(lv)`` the
rest. A rare end class cannot be "forgotten" the way a softmax logit can: it is the tail of
the same axis the common classes are learnt on. Everything here is pure tensor/NumPy code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Smallest gap between the two cut-points (keeps p(lv) > 0 and its log finite).
MIN_GAP = 1e-3


def cumulative_log_probs(eta: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """Log class probabilities (N×3) of latent positions ``eta`` (N) with cut-points c1 < c2.

    ``log p(lv)`` uses ``sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a))`` so
    it stays finite and accurate far out in either tail.
    """
    eta = eta.float()
    a, b = c2 - eta, c1 - eta
    log_basal = nn.functional.logsigmoid(b)
    log_apical = nn.functional.logsigmoid(-a)
    log_lv = (
        nn.functional.logsigmoid(a)
        + nn.functional.logsigmoid(-b)
        + torch.log1p(-torch.exp(-(c2 - c1)))
    )
    return torch.stack([log_basal, log_lv, log_apical], dim=1)


class CutPoints(nn.Module):
    """Two learned, ordered cut-points: ``c1`` free, ``c2 = c1 + softplus(g) + MIN_GAP``."""

    def __init__(self, c1: float = -1.0, gap: float = 2.0) -> None:
        super().__init__()
        self.c1 = nn.Parameter(torch.tensor(float(c1)))
        # Inverse softplus, so the initial gap is exactly ``gap``.
        self.raw_gap = nn.Parameter(torch.tensor(float(np.log(np.expm1(gap - MIN_GAP)))))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cut-points ``(c1, c2)``."""
        return self.c1, self.c1 + nn.functional.softplus(self.raw_gap) + MIN_GAP


def prior_bias(
    log_probs: np.ndarray, priors: np.ndarray, *, rounds: int = 20, span: float = 30.0
) -> np.ndarray:
    """One additive bias per class so that ``argmax(log_probs + bias)`` reproduces ``priors``.

    The "prior-respecting" decision rule: fitted on the training images after training, it
    makes the predicted class mix match the labels' mix, so a class the network ranks well
    but rarely lets win (the issue-11 failure: too_apical ROC AUC 0.96, F1 0) is still
    predicted. Coordinate-wise bisection: a class's predicted share rises monotonically with
    its own bias, so each round sets every class's bias (the middle class stays at 0) to hit
    its prior given the others. Returns the bias with the smallest total share error seen.
    Raises ``ValueError`` on inconsistent shapes or priors.
    """
    log_probs = np.asarray(log_probs, dtype=float)
    priors = np.asarray(priors, dtype=float)
    if log_probs.ndim != 2 or log_probs.shape[1] != priors.shape[0] or len(log_probs) == 0:
        raise ValueError(
            f"prior_bias: log_probs of shape {log_probs.shape} do not fit {priors.shape[0]} priors"
        )
    if (priors < 0).any() or priors.sum() <= 0:
        raise ValueError(f"prior_bias: priors {priors.tolist()} must be non-negative, not all 0")
    priors = priors / priors.sum()
    k = len(priors)
    # Scores far below the rest would need huge biases: clip so bisection stays in range.
    x = np.clip(log_probs - log_probs.max(axis=1, keepdims=True), -span / 2, 0)

    def shares(bias: np.ndarray) -> np.ndarray:
        return np.bincount(np.argmax(x + bias, axis=1), minlength=k) / len(x)

    bias = np.zeros(k)
    best, best_err = bias.copy(), float(np.abs(shares(bias) - priors).sum())
    fixed = k // 2
    for _ in range(rounds):
        for c in range(k):
            if c == fixed:
                continue
            lo, hi = -span, span
            for _ in range(40):
                bias[c] = (lo + hi) / 2
                if shares(bias)[c] < priors[c]:
                    lo = bias[c]
                else:
                    hi = bias[c]
            bias[c] = (lo + hi) / 2
        err = float(np.abs(shares(bias) - priors).sum())
        if err < best_err - 1e-12:
            best, best_err = bias.copy(), err
        if err <= 1.0 / len(x):
            break
    return best


def apply_bias(probs: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Class probabilities re-weighted by ``exp(bias)`` and renormalised (rows sum to 1)."""
    probs = np.asarray(probs, dtype=float)
    if bias is None:
        return probs
    w = probs * np.exp(np.asarray(bias, dtype=float))[None, :]
    return w / w.sum(axis=1, keepdims=True)
