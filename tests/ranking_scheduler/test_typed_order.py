"""A ranking typed as the slices' marks (rank.xml's keyboard path), read by the scheduler."""

from __future__ import annotations

import pytest

from ls_config.webclient import choices_result, ranker_result, typed_result
from ranking_scheduler.service.intake import (
    AnnotationEvent,
    parse_boundary,
    parse_ranking,
    unchanged,
)
from ranking_scheduler.service.ls_adapter import LabelStudioAdapter, PoolImage
from ranking_scheduler.service.typed_order import MARKS, read_typed_order

IDS = [f"i{k}" for k in range(8)]  # the task's order: i0 carries A, i1 B, ...


def test_marks_name_the_slices_in_task_order():
    assert read_typed_order("CAHBDFEG", IDS) == ["i2", "i0", "i7", "i1", "i3", "i5", "i4", "i6"]


@pytest.mark.parametrize(
    "text", ["cahbdfeg", "C A H B D F E G", "c,a,h,b,d,f,e,g", "C-A-H-B-D-F-E-G"]
)
def test_case_and_separators_do_not_matter(text):
    assert read_typed_order(text, IDS) == ["i2", "i0", "i7", "i1", "i3", "i5", "i4", "i6"]


def test_the_last_slice_may_be_left_out():
    assert read_typed_order("cahbdfe", IDS) == ["i2", "i0", "i7", "i1", "i3", "i5", "i4", "i6"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("CAHBDFEX", "'X', which no slice carries"),
        ("CAHBDFEC", "names C more than once"),
        ("CAHBD", "names 5 of 8 slices \\(missing EFG\\); type at least 7"),
        (" , ", "names no slice"),
        ("CAHBDFE1", "'1', which no slice carries"),
    ],
)
def test_a_bad_typed_order_is_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        read_typed_order(text, IDS)


def test_a_smaller_task_has_fewer_marks():
    assert read_typed_order("ba", IDS[:3]) == ["i1", "i0", "i2"]
    with pytest.raises(ValueError, match="'D', which no slice carries"):
        read_typed_order("DAB", IDS[:3])


def test_parse_ranking_a_typed_order_counts_over_the_untouched_list():
    # Label Studio saves the Ranker's list even when nobody dragged it.
    result = ranker_result(IDS) + typed_result("hgfedcb") + choices_result("zoom_2")
    assert parse_ranking(result, IDS) == list(reversed(IDS))


def test_parse_ranking_without_typed_order_reads_the_list_as_before():
    result = ranker_result(list(reversed(IDS))) + choices_result("brighter")
    assert parse_ranking(result, IDS) == list(reversed(IDS))


def test_parse_ranking_refuses_a_bad_typed_order_instead_of_using_the_list():
    with pytest.raises(ValueError, match="names C more than once"):
        parse_ranking(ranker_result(IDS) + typed_result("CC"), IDS)
    with pytest.raises(ValueError, match="at most one typed order"):
        parse_ranking(typed_result("AB") + typed_result("BA"), IDS)
    bad = typed_result("AB")
    bad[0]["value"] = {"text": ["AB", "BA"]}
    with pytest.raises(ValueError, match="one line of text"):
        parse_ranking(bad, IDS)


def test_unchanged_reads_a_typed_order_against_the_task_order():
    class Sub:
        kind = "rank"
        ordered = tuple(reversed(IDS))

    event = AnnotationEvent(1, 2, 3, "r", typed_result("HGFEDCBA"))
    assert unchanged(Sub(), event, IDS)
    assert not unchanged(Sub(), AnnotationEvent(1, 2, 3, "r", typed_result("ABCDEFGH")), IDS)


def test_rank_task_marks_grid_and_list_alike():
    images = [PoolImage(i, f"/data/local-files/?d=m/{i}.png", k) for k, i in enumerate(IDS)]
    data = LabelStudioAdapter.rank_task("b1", images)["data"]
    assert [item["id"] for item in data["images"]] == IDS
    for mark, item in zip(MARKS, data["images"], strict=True):
        assert f'<span class="sr-mark">{mark}</span>' in item["html"]
        assert f'alt="slice {mark}"' in data["grid"]
    assert data["grid"].count('class="sr-cell"') == 8
    with pytest.raises(ValueError, match="at most 8 slices"):
        LabelStudioAdapter.rank_task("b2", images + images[:1])


def test_parse_boundary_passes_over_the_view_buttons():
    result = choices_result("brighter", from_name="window") + choices_result("lv")
    assert parse_boundary(result) == "lv"
    with pytest.raises(ValueError, match="expected exactly one class"):
        parse_boundary(choices_result("brighter", from_name="window"))
