"""Stack-aware decoding: a scan's per-slice class probabilities → one monotone sequence.

Along a short-axis stack, ordered base → apex, the true classes read too_basal… lv…
too_apical: each class forms one contiguous run (possibly empty) in that order. A per-slice
classifier can break that (an ``lv`` between two ``too_apical``). Treating the slices as
independent given the image, the most probable *monotone* labelling maximises
``sum_i log p_i(y_i)`` subject to ``y_1 <= y_2 <= ... <= y_n`` — exact by dynamic
programming over the three states (a Viterbi pass with only forward transitions), O(3n).
:func:`stack_marginals` gives each slice's class probability under the same constraint
(forward-backward over the monotone paths, each weighted by its probability), for ROC
curves of the decoded predictions. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Floor on probabilities before taking logs (a zero would forbid a class outright).
EPS = 1e-9


def _check(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"stack probabilities must be n×3 (base → apex), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("stack probabilities must be finite and non-negative")
    return p


def decode_stack(probs: np.ndarray) -> list[int]:
    """The most probable monotone class sequence (0, 1, 2 = too_basal, lv, too_apical) for
    slices ordered base → apex, given each slice's class probabilities (n×3)."""
    p = _check(probs)
    return _best_monotone(np.log(np.clip(p, EPS, None)))


def decode_marginals(marginals: np.ndarray) -> list[int]:
    """The monotone class sequence with the most slices expected right: it maximises
    ``sum_i m_i(y_i)`` over the :func:`stack_marginals` ``m`` (maximum expected accuracy).

    Where each slice's most probable class already reads monotone along the stack (nearly
    always) this *is* that class, so a shown choice agrees with its own probabilities; the
    single most probable sequence (:func:`decode_stack`) can instead pick, near a boundary, a
    class whose marginal is small (issue 22: ``lv`` shown at 0.13 beside ``too_basal`` 0.86).
    """
    return _best_monotone(_check(marginals))


def _best_monotone(scores: np.ndarray) -> list[int]:
    """The non-decreasing sequence maximising the sum of per-slice ``scores`` (n×3): exact
    dynamic programming over the three states (a Viterbi pass with forward moves only)."""
    n = len(scores)
    if n == 0:
        return []
    best = scores[0].copy()  # best[k]: best score of slices 0..i ending in class k
    back = np.zeros((n, 3), dtype=int)
    for i in range(1, n):
        # Class k at slice i may follow any class j <= k at slice i-1.
        prev = np.maximum.accumulate(best)
        arg = np.array([int(np.argmax(best[: k + 1])) for k in range(3)])
        best = prev + scores[i]
        back[i] = arg
    out = [int(np.argmax(best))]
    for i in range(n - 1, 0, -1):
        out.append(int(back[i, out[-1]]))
    return out[::-1]


def stack_marginals(probs: np.ndarray) -> np.ndarray:
    """Each slice's class probabilities given that the stack's labelling is monotone (n×3):
    sum over monotone sequences of ``prod_i p_i(y_i)``, normalised, computed in log space."""
    p = _check(probs)
    n = len(p)
    if n == 0:
        return np.zeros((0, 3))
    logp = np.log(np.clip(p, EPS, None))
    fwd = np.zeros((n, 3))
    fwd[0] = logp[0]
    for i in range(1, n):
        fwd[i] = np.logaddexp.accumulate(fwd[i - 1]) + logp[i]
    bwd = np.zeros((n, 3))
    for i in range(n - 2, -1, -1):
        # From class k at slice i, slice i+1 may take any class j >= k.
        nxt = bwd[i + 1] + logp[i + 1]
        bwd[i] = np.logaddexp.accumulate(nxt[::-1])[::-1]
    joint = fwd + bwd
    joint -= joint.max(axis=1, keepdims=True)
    m = np.exp(joint)
    return m / m.sum(axis=1, keepdims=True)


def decode_scans(
    probs: Mapping[str, Sequence[float]], stacks: Mapping[str, tuple[str, float]]
) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Decode every scan at once: ``probs`` maps image id → (p_too_basal, p_lv, p_too_apical),
    ``stacks`` image id → (scan id, order along the stack, base → apex).

    Returns (image id → decoded class index, image id → constrained marginals). Images with no
    stack entry keep their per-slice argmax and probabilities.
    """
    by_scan: dict[str, list[tuple[float, str]]] = {}
    labels: dict[str, int] = {}
    marginals: dict[str, np.ndarray] = {}
    for image_id, p in probs.items():
        if image_id in stacks:
            scan, z = stacks[image_id]
            by_scan.setdefault(scan, []).append((float(z), image_id))
        else:
            arr = np.asarray(p, dtype=float)
            labels[image_id] = int(np.argmax(arr))
            marginals[image_id] = arr
    for members in by_scan.values():
        members.sort()
        ids = [i for _, i in members]
        arr = np.asarray([probs[i] for i in ids], dtype=float)
        for i, k, m in zip(ids, decode_stack(arr), stack_marginals(arr), strict=True):
            labels[i] = k
            marginals[i] = m
    return labels, marginals
