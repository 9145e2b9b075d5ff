"""Pure pieces of issue 11: the cumulative-link head, the prior-matching decision bias, the
consensus position, the scan-grouped split, monotone stack decoding and the ensemble
checkpoint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ml_backend.config import CPU_SMALL
from ml_backend.labels import POSITION_CLIP, consensus_position, labels_from_consensus
from ml_backend.model import Ensemble, build_model
from ml_backend.ordinal import apply_bias, cumulative_log_probs, prior_bias
from ml_backend.scan_predict import ScanDecoder, task_stack_key
from ml_backend.splits import grouped_stratified_split
from ml_backend.stack import decode_scans, decode_stack, stack_marginals
from ml_backend.train import FitResult, ProtocolResult, load_checkpoint, protocol_checkpoint
from slicerank_base import CLASSES
from tests.ml_backend.synthdata import prediction

#: Tolerance of probability identities computed in float32.
PROB_TOL = 1e-5


def test_cumulative_link_probabilities_are_the_sigmoid_differences_and_stay_finite():
    eta = torch.tensor([-50.0, -2.0, 0.0, 0.3, 2.0, 50.0])
    c1, c2 = torch.tensor(-1.0), torch.tensor(1.0)
    logp = cumulative_log_probs(eta, c1, c2)
    p = logp.exp()
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(p.sum(1), torch.ones(6), atol=PROB_TOL, rtol=0)
    expected_basal = torch.sigmoid(c1 - eta)
    expected_apical = torch.sigmoid(eta - c2)
    torch.testing.assert_close(p[:, 0], expected_basal, atol=PROB_TOL, rtol=0)
    torch.testing.assert_close(p[:, 2], expected_apical, atol=PROB_TOL, rtol=0)
    # Ordered: the most probable class moves basal → lv → apical as eta rises.
    assert p.argmax(1).tolist() == [0, 0, 1, 1, 2, 2]


def test_the_ordinal_head_returns_log_probabilities_and_learnable_ordered_cuts():
    model = build_model(CPU_SMALL).eval()
    assert CPU_SMALL.head == "ordinal" and model.cuts is not None
    out = model(torch.zeros(3, 1, CPU_SMALL.crop, CPU_SMALL.crop))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(3), atol=PROB_TOL, rtol=0)
    model.cuts.raw_gap.data.fill_(-30.0)  # the gap can shrink but never turns negative
    c1, c2 = model.cuts()
    assert float((c2 - c1).detach()) > 0
    softmax = build_model(CPU_SMALL.replace(head="softmax"))
    assert softmax.cuts is None and softmax.head[-1].out_features == 3


def test_prior_bias_brings_back_a_class_that_argmax_never_picks():
    rng = np.random.default_rng(0)
    # Well ranked but badly calibrated: too_apical scores highest on the right images but
    # never wins the argmax (the collapse seen in issue 11).
    truth = rng.choice(3, size=400, p=[0.2, 0.73, 0.07])
    score = truth + rng.normal(0, 0.3, 400)
    logp = np.stack([-2 * score, np.zeros(400) + 0.5, 0.4 * score - 1.5], axis=1)
    assert (np.argmax(logp, 1) == 2).sum() == 0
    priors = np.bincount(truth, minlength=3)
    bias = prior_bias(logp, priors)
    pred = np.argmax(logp + bias, 1)
    share = np.bincount(pred, minlength=3) / 400
    np.testing.assert_allclose(share, priors / 400, atol=0.02)
    recall_apical = (pred[truth == 2] == 2).mean()
    assert recall_apical > 0.8
    probs = apply_bias(np.exp(logp) / np.exp(logp).sum(1, keepdims=True), bias)
    np.testing.assert_allclose(probs.sum(1), 1)
    assert (np.argmax(probs, 1) == pred).all()
    with pytest.raises(ValueError, match="do not fit 3 priors"):
        prior_bias(np.zeros((4, 2)), priors)
    with pytest.raises(ValueError, match="non-negative"):
        prior_bias(logp, np.array([-1.0, 1.0, 1.0]))


def test_consensus_position_puts_the_cuts_at_minus_and_plus_one_apex_positive():
    thresholds = {"basal_lv": {"score": 2.0}, "lv_apical": {"score": -1.0}}
    assert consensus_position(2.0, thresholds) == pytest.approx(-1.0)
    assert consensus_position(-1.0, thresholds) == pytest.approx(1.0)
    assert consensus_position(0.5, thresholds) == pytest.approx(0.0)
    assert consensus_position(100.0, thresholds) == -POSITION_CLIP
    assert consensus_position(0.0, {}) is None
    assert consensus_position(0.0, {"basal_lv": {"score": 0}, "lv_apical": {"score": 1}}) is None
    doc = {
        "thresholds": thresholds,
        "images": [
            {"image_id": "a", "class": "too_basal", "score_mean": 3.0},
            {"image_id": "b", "class": "lv", "score_mean": 0.5},
            {"image_id": "c", "class": "lv"},  # no score: no position
        ],
    }
    got = {x.image_id: x.position for x in labels_from_consensus(doc)}
    assert got == {"a": pytest.approx(-5 / 3), "b": pytest.approx(0.0), "c": None}


def _stacked_cohort(n_scans: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for s in range(n_scans):
        n_basal, n_apical = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        for cls, n in (("too_basal", n_basal), ("lv", 8), ("too_apical", n_apical)):
            labels += [cls] * n
            groups += [f"scan{s}"] * n
    return labels, groups


def test_grouped_split_keeps_each_scan_in_one_split_and_the_class_mix():
    labels, groups = _stacked_cohort(40, seed=3)
    tr, va, te = grouped_stratified_split(labels, groups, (0.8, 0.1, 0.1), seed=0)
    assert sorted(tr + va + te) == list(range(len(labels)))
    scans = [{groups[i] for i in part} for part in (tr, va, te)]
    assert not (scans[0] & scans[1] or scans[0] & scans[2] or scans[1] & scans[2])
    assert [len(s) for s in scans][1:] == [4, 4] or all(len(s) >= 3 for s in scans[1:])
    for part, frac in ((tr, 0.8), (va, 0.1), (te, 0.1)):
        for cls in CLASSES:
            total = labels.count(cls)
            got = sum(1 for i in part if labels[i] == cls)
            # Within two scans' worth of the class of its target share.
            assert abs(got - frac * total) <= 2 * 3, (cls, got, frac * total)
    assert grouped_stratified_split(labels, groups, (0.8, 0.1, 0.1), seed=0) == (tr, va, te)
    assert grouped_stratified_split(labels, groups, (0.8, 0.1, 0.1), seed=1) != (tr, va, te)
    with pytest.raises(ValueError, match="too few"):
        grouped_stratified_split(["lv"] * 4, ["a", "a", "b", "b"], (0.8, 0.1, 0.1), 0)
    with pytest.raises(ValueError, match="3 labels but 2 scan ids"):
        grouped_stratified_split(["lv"] * 3, ["a", "b"], (0.8, 0.1, 0.1), 0)


def _monotone_paths(n: int):
    return [s for s in itertools.product(range(3), repeat=n) if list(s) == sorted(s)]


def test_stack_decoding_is_the_exact_most_probable_monotone_sequence():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 7))
        p = rng.dirichlet([0.7, 0.7, 0.7], n)
        paths = _monotone_paths(n)
        weight = np.array([np.prod([p[i, s[i]] for i in range(n)]) for s in paths])
        assert decode_stack(p) == list(paths[int(np.argmax(weight))])
        marg = np.zeros((n, 3))
        for s, w in zip(paths, weight, strict=True):
            marg[np.arange(n), list(s)] += w
        np.testing.assert_allclose(stack_marginals(p), marg / marg.sum(1, keepdims=True))


def test_stack_decoding_fixes_an_out_of_order_slice_and_keeps_a_monotone_one():
    p = np.array([[0.8, 0.2, 0.0], [0.1, 0.5, 0.4], [0.05, 0.55, 0.4], [0.0, 0.45, 0.55]])
    # Per-slice argmax reads basal, lv, lv, apical: already monotone, unchanged.
    assert decode_stack(p) == [0, 1, 1, 2]
    q = np.array([[0.9, 0.1, 0.0], [0.1, 0.3, 0.6], [0.1, 0.6, 0.3], [0.0, 0.2, 0.8]])
    # Argmax says basal, apical, lv, apical: impossible along a stack.
    assert list(q.argmax(1)) == [0, 2, 1, 2]
    assert decode_stack(q) == [0, 1, 1, 2]
    assert decode_stack(np.zeros((0, 3))) == []
    with pytest.raises(ValueError, match="n×3"):
        decode_stack(np.zeros((2, 2)))
    labels, marg = decode_scans(
        {"a": q[0], "b": q[1], "c": q[2], "d": q[3], "lost": q[1]},
        {"d": ("s", 30.0), "b": ("s", 10.0), "a": ("s", 0.0), "c": ("s", 20.0)},
    )
    assert [labels[i] for i in "abcd"] == [0, 1, 1, 2]
    assert labels["lost"] == 2  # no stack: per-slice argmax
    np.testing.assert_allclose(marg["lost"], q[1])


def test_scan_decoder_decodes_tasks_of_a_known_scan_together_and_leaves_the_rest():
    q = np.array([[0.9, 0.1, 0.0], [0.1, 0.3, 0.6], [0.1, 0.6, 0.3], [0.0, 0.2, 0.8]])
    tasks = [{"id": k, "data": {"image_id": f"i{k}", "scan_id": "s1", "slice_index": k}}
             for k in range(4)]  # fmt: skip
    tasks.append({"id": 9, "data": {"image_id": "x"}})
    preds = [prediction(p) for p in q] + [prediction(q[1])]
    out = ScanDecoder("v1").decode(tasks, preds, stacks={})
    choices = [r["result"][0]["value"]["choices"][0] for r in out]
    # Slice 2 is 0.487 lv / 0.494 too_apical given its scan: the choice follows the marginals
    # it is shown with (the single most probable sequence would say lv; issue 22).
    assert choices == ["too_basal", "lv", "too_apical", "too_apical", "too_apical"]
    assert [r["decoding"] for r in out] == ["stack"] * 4 + ["slice"]
    assert out[1]["score"] == pytest.approx(out[1]["probabilities"]["lv"])
    # One task alone: its scan's other slices come from the media root (scan_probs).
    calls = []

    def scan_probs(scan):
        calls.append(scan)
        return {f"i{k}": (float(k), q[k]) for k in range(4)}

    decoder = ScanDecoder("v1")
    alone = decoder.decode(tasks[1:2], preds[1:2], stacks={}, scan_probs=scan_probs)
    assert alone[0]["result"][0]["value"]["choices"] == ["lv"] and alone[0]["decoding"] == "stack"
    decoder.decode(tasks[2:3], preds[2:3], stacks={}, scan_probs=scan_probs)
    assert calls == ["s1"]  # the scan was read once
    assert task_stack_key({"data": {"image_id": "m"}}, {"m": ("s9", 4)}) == ("s9", 4.0)
    assert task_stack_key({"data": {"scan_id": "s", "slice_index": "x"}}, {}) is None


def test_a_protocol_checkpoint_loads_as_the_ensemble_of_its_seeds(tmp_path):
    config = CPU_SMALL.replace(seeds=(0, 1))
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        states.append(build_model(config).state_dict())
    fits = [FitResult(seed, s, 1, 0.5 + seed) for seed, s in enumerate(states)]
    result = ProtocolResult(fits, [{}, {}], [[0, 0, 0]] * 2, [0.1, -0.2, 0.1], {})
    path = tmp_path / "ckpt.pt"
    torch.save(protocol_checkpoint(result, config), path)
    model, loaded, ckpt = load_checkpoint(path)
    assert isinstance(model, Ensemble) and len(model.members) == 2 and loaded == config
    assert ckpt["seeds"] == [0, 1] and ckpt["decision_bias"] == [0.1, -0.2, 0.1]
    x = torch.randn(4, 1, config.crop, config.crop)
    with torch.inference_mode():
        members = [torch.softmax(m(x), 1) for m in model.members]
        mean = torch.stack(members).mean(0) * torch.exp(torch.tensor([0.1, -0.2, 0.1]))
        expected = mean / mean.sum(1, keepdim=True)
        torch.testing.assert_close(torch.softmax(model(x), 1), expected, atol=PROB_TOL, rtol=0)
