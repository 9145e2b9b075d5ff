"""/predict's choice, score and probabilities agree after stack decoding (issue 22)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ml_backend.scan_predict import ScanDecoder
from ml_backend.stack import decode_marginals, decode_stack, stack_marginals
from slicerank_base import CLASSES
from tests.ml_backend.synthdata import prediction

#: A scan (base → apex) whose single most probable monotone sequence is all too_apical, while
#: its first slice is too_basal with probability 0.78 under the same constraint: the shape of
#: the issue's "lv at 0.13 beside too_basal 0.86".
SPLIT = [[0.45, 0.06, 0.5], [0.4, 0.19, 0.41], [0.35, 0.17, 0.48], [0.58, 0.04, 0.38]]


def test_the_example_is_one_where_the_most_probable_sequence_contradicts_the_marginals():
    m = stack_marginals(np.array(SPLIT))
    assert decode_stack(np.array(SPLIT))[0] == 2 and m[0].argmax() == 0 and m[0, 0] > 0.75


def test_each_shown_choice_is_the_most_probable_class_with_its_probability_as_score():
    tasks = [{"id": i, "data": {"image_id": f"i{i}", "scan_id": "s", "slice_index": i}}
             for i in range(len(SPLIT))]  # fmt: skip
    out = ScanDecoder("v1").decode(tasks, [prediction(p) for p in SPLIT], stacks={})
    choices = []
    for res in out:
        (choice,) = res["result"][0]["value"]["choices"]
        probs = res["probabilities"]
        assert res["decoding"] == "stack"
        assert choice == max(probs, key=probs.get), res
        assert res["score"] == probs[choice]
        assert res["choice_rule"].startswith("most probable class")
        choices.append(CLASSES.index(choice))
    assert choices == sorted(choices)  # still monotone along the scan


@pytest.mark.parametrize("seed", range(5))
def test_decode_marginals_is_the_monotone_sequence_with_most_expected_right(seed):
    rng = np.random.default_rng(seed)
    m = stack_marginals(rng.dirichlet([0.6, 0.6, 0.6], size=6))
    paths = [p for p in itertools.product(range(3), repeat=6) if list(p) == sorted(p)]
    best = max(paths, key=lambda p: sum(m[i, k] for i, k in enumerate(p)))
    got = decode_marginals(m)
    assert sum(m[i, k] for i, k in enumerate(got)) == pytest.approx(
        sum(m[i, k] for i, k in enumerate(best))
    )
    assert got == sorted(got)
