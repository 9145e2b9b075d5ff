"""The training recipe's pure pieces: config, model size, transforms, split, labels, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ml_backend.config import CPU_SMALL, GPU, PRESETS, STUDY, TrainConfig, get_preset
from ml_backend.data import MissingImageError, build_dataset, stratified_split
from ml_backend.labels import (
    NoLabelsError,
    collect_labels,
    labels_from_classify_tasks,
    labels_from_consensus,
    labels_from_consensus_predictions,
    local_path_from_url,
)
from ml_backend.model import build_model, count_trainable
from ml_backend.registry import ModelRegistry, UnknownVersionError
from ml_backend.transforms import EvalPreset, TrainPreset, normalize, prepare_image
from tests.ml_backend.synthdata import classify_task, make_media_root

#: Table 1 of the study.
TABLE1_TRAINABLE = 22_199_747


def test_study_model_matches_table1_parameter_count():
    # Table 1 counts the study's softmax head; our default ordinal head has one output and
    # two cut-points instead of three outputs (3,570 fewer parameters).
    n = count_trainable(build_model(STUDY.replace(head="softmax")))
    assert n == 22_199_463
    assert count_trainable(build_model(STUDY)) == n - 1785 * 2 - 2 + 2
    assert abs(n - TABLE1_TRAINABLE) / TABLE1_TRAINABLE < 1e-4
    assert STUDY.layers == (3, 4, 6, 3) and STUDY.width == 64  # ResNet-34
    assert (STUDY.lr, STUDY.epochs, len(STUDY.seeds), STUDY.split) == (
        1e-4,
        70,
        10,
        (0.8, 0.1, 0.1),
    )


def test_model_outputs_three_logits_for_each_preset():
    for cfg in (CPU_SMALL, STUDY):
        out = build_model(cfg).eval()(torch.zeros(2, 1, cfg.crop, cfg.crop))
        assert out.shape == (2, 3)


def test_presets_and_config_validation():
    assert set(PRESETS) == {"study", "gpu", "cpu-small"}
    assert GPU.amp and GPU.channels_last and GPU.data_on_device and GPU.lr == STUDY.lr
    assert TrainConfig.from_dict(json.loads(json.dumps(GPU.to_dict()))) == GPU
    with pytest.raises(ValueError, match="split"):
        STUDY.replace(split=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="crop=300"):
        STUDY.replace(crop=300)
    with pytest.raises(ValueError, match="unknown training preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown TrainConfig fields: colour"):
        TrainConfig.from_dict({"colour": 1})


def test_prepare_image_trims_20_top_bottom_15_left_right_then_centre_crops():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (640, 640), dtype=np.uint8)
    out = prepare_image(img, STUDY)
    # trim 128 rows top/bottom and 96 columns each side → 384×448, then the central 256×256.
    np.testing.assert_array_equal(out, img[192:448, 192:448])


def test_prepare_image_enlarges_small_images_instead_of_padding():
    img = np.full((416, 416), 7, np.uint8)
    out = prepare_image(img, STUDY)
    assert out.shape == (256, 256)
    assert (out == 7).all()  # no zero padding anywhere
    with pytest.raises(ValueError, match="2-D grayscale"):
        prepare_image(np.zeros((10, 10, 3), np.uint8), STUDY)


def test_train_preset_without_rotation_or_flips_is_an_exact_random_crop():
    rng = np.random.default_rng(2)
    batch = torch.from_numpy(rng.integers(0, 255, (4, 1, 40, 40), dtype=np.uint8))
    preset = TrainPreset(crop=32, max_rotation_deg=0.0, hflip=False, vflip=False)
    out = preset(batch, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 32, 32)
    for i in range(4):
        crops = [normalize(batch[i, :, y : y + 32, x : x + 32]) for y in range(9) for x in range(9)]
        assert any(torch.allclose(out[i], c, atol=1e-4) for c in crops)


def test_train_preset_augments_and_is_reproducible_for_a_seed():
    batch = torch.from_numpy(
        np.random.default_rng(3).integers(0, 255, (8, 1, 72, 72), dtype=np.uint8)
    )
    preset = TrainPreset.from_config(CPU_SMALL)
    a = preset(batch, torch.Generator().manual_seed(5))
    b = preset(batch, torch.Generator().manual_seed(5))
    c = preset(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 1, 64, 64)


def test_eval_preset_is_the_centre_crop_of_the_training_framing():
    img = np.random.default_rng(4).integers(0, 255, (420, 400), dtype=np.uint8)
    preset = EvalPreset(CPU_SMALL)
    out = preset.images_to_batch([img])
    prepared = torch.from_numpy(prepare_image(img, CPU_SMALL))
    assert torch.equal(out[0, 0], normalize(prepared[4:68, 4:68]))


def test_stratified_split_keeps_class_proportions_and_is_deterministic():
    labels = ["lv"] * 70 + ["too_basal"] * 20 + ["too_apical"] * 10
    tr, va, te = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert sorted(tr + va + te) == list(range(100))
    assert len(set(tr) & set(va)) == len(set(tr) & set(te)) == len(set(va) & set(te)) == 0
    for part, expect in (
        (va, {"lv": 7, "too_basal": 2, "too_apical": 1}),
        (te, {"lv": 7, "too_basal": 2, "too_apical": 1}),
    ):
        assert {c: sum(labels[i] == c for i in part) for c in expect} == expect
    assert stratified_split(labels, (0.8, 0.1, 0.1), seed=0) == (tr, va, te)
    assert stratified_split(labels, (0.8, 0.1, 0.1), seed=1) != (tr, va, te)
    with pytest.raises(ValueError, match="too few"):
        stratified_split(["lv", "lv"], (0.8, 0.1, 0.1), seed=0)
    # A class of three still puts one image in each split.
    tr, va, te = stratified_split(["lv"] * 3, (0.8, 0.1, 0.1), seed=0)
    assert (len(tr), len(va), len(te)) == (1, 1, 1)


def test_classify_labels_take_the_newest_submitted_annotation(tmp_path):
    rows = make_media_root(tmp_path, n_per_class=1)
    task = classify_task(1, rows[0], label="lv")
    newer = json.loads(json.dumps(task["annotations"][0]))
    newer.update(id=5, updated_at="2026-11-27T03:00:00Z")
    newer["result"][0]["value"]["choices"] = ["too_apical"]
    cancelled = json.loads(json.dumps(newer))
    cancelled.update(id=6, updated_at="2026-11-27T04:00:00Z", was_cancelled=True)
    cancelled["result"][0]["value"]["choices"] = ["too_basal"]
    task["annotations"] += [newer, cancelled]
    unlabelled = classify_task(2, rows[1])
    labels = labels_from_classify_tasks([task, unlabelled])
    assert [(x.image_id, x.label, x.path_hint) for x in labels] == [
        (rows[0]["image_id"], "too_apical", rows[0]["path"])
    ]
    bad = classify_task(3, rows[2], label="lv")
    bad["annotations"][0]["result"][0]["value"]["choices"] = ["atrium"]
    with pytest.raises(ValueError, match="class 'atrium'"):
        labels_from_classify_tasks([bad])
    with pytest.raises(NoLabelsError, match="no labels for source 'classify'"):
        collect_labels("classify", tasks=[unlabelled])


def test_consensus_labels_and_soft_targets():
    doc = {
        "model_version": "ranking-consensus",
        "thresholds": {},
        "images": [
            {"image_id": "a", "rank": 1, "score_mean": -1.0, "score_sd": 0.2, "views": 3,
             "class": "too_basal", "p_too_basal": 0.8, "p_lv": 0.2, "p_too_apical": 0.0},
            {"image_id": "b", "rank": 2, "score_mean": 0.1, "score_sd": 0.2, "views": 3,
             "class": "lv", "p_too_basal": 0.1, "p_lv": 0.6, "p_too_apical": 0.1},
        ],
    }  # fmt: skip
    hard = labels_from_consensus(doc)
    assert [(x.image_id, x.label, x.soft) for x in hard] == [
        ("a", "too_basal", None),
        ("b", "lv", None),
    ]
    soft = labels_from_consensus(doc, soft=True)
    assert soft[1].soft == pytest.approx((0.125, 0.75, 0.125))
    del doc["images"][0]["p_lv"]
    with pytest.raises(ValueError, match="'a' lacks p_too_basal"):
        labels_from_consensus(doc, soft=True)


def test_consensus_predictions_on_classify_tasks(tmp_path):
    rows = make_media_root(tmp_path, n_per_class=1)
    task = classify_task(1, rows[0])
    task["predictions"] = [
        {"model_version": "v0001-classify", "result": [{"from_name": "slice_class", "to_name": "image", "type": "choices", "value": {"choices": ["lv"]}}]},
        {"model_version": "ranking-consensus", "result": [{"from_name": "slice_class", "to_name": "image", "type": "choices", "value": {"choices": ["too_basal"]}}]},
    ]  # fmt: skip
    labels = labels_from_consensus_predictions([task])
    assert [(x.image_id, x.label) for x in labels] == [(rows[0]["image_id"], "too_basal")]
    assert local_path_from_url("/data/local-files/?d=media%2Fa.png") == "media/a.png"


def test_build_dataset_names_the_missing_image(tmp_path):
    rows = make_media_root(tmp_path, n_per_class=2)
    labels = labels_from_classify_tasks(
        [classify_task(i, r, label=r["true_class"]) for i, r in enumerate(rows)]
    )
    ds = build_dataset(labels, tmp_path, CPU_SMALL)
    assert ds.images.shape == (6, 1, 72, 72) and ds.images.dtype == torch.uint8
    (tmp_path / rows[3]["path"]).unlink()
    with pytest.raises(MissingImageError, match=rows[3]["image_id"]):
        build_dataset(labels, tmp_path, CPU_SMALL)


def _register(reg: ModelRegistry, source: str = "classify"):
    return reg.register(
        checkpoint={"model": {"w": torch.zeros(1)}, "optimizer": None, "epoch": 1, "config": CPU_SMALL.to_dict()},
        config=CPU_SMALL.to_dict(), label_source={"source": source}, splits={"train": ["a"]},
        metrics={"test": {}},
    )  # fmt: skip


def test_registry_numbers_versions_and_lists_newest(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    assert reg.versions() == [] and reg.newest() is None
    a = _register(reg)
    b = _register(reg, "ranking")
    assert (a.name, b.name) == ("v0001-classify", "v0002-ranking")
    assert reg.newest().name == "v0002-ranking"
    assert b.read_json("splits") == {"train": ["a"]}
    assert torch.load(b.checkpoint, map_location="cpu")["epoch"] == 1
    with pytest.raises(UnknownVersionError, match="v0099"):
        reg.get("v0099")


def test_failed_registration_leaves_no_half_registered_version(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    _register(reg)
    with pytest.raises(TypeError):
        reg.register(checkpoint={"model": {}}, config=CPU_SMALL.to_dict(),
                     label_source={"source": "classify"}, splits={}, metrics={"bad": object()})  # fmt: skip
    assert [v.name for v in reg.versions()] == ["v0001-classify"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["v0001-classify"]


def test_fit_with_the_gpu_execution_flags_runs_and_keeps_the_lowest_val_loss(tmp_path):
    # channels-last and device-resident data also work on a CPU (AMP only switches on on CUDA),
    # so the GPU preset's code path is exercised here even without a GPU.
    from ml_backend.train import fit

    rows = make_media_root(tmp_path, n_per_class=4)
    labels = labels_from_classify_tasks(
        [classify_task(i, r, label=r["true_class"]) for i, r in enumerate(rows)]
    )
    cfg = CPU_SMALL.replace(channels_last=True, data_on_device=True, amp=True, epochs=3)
    ds = build_dataset(labels, tmp_path, cfg)
    tr, va, _ = stratified_split([x.label for x in labels], cfg.split, 0)
    seen = []
    result = fit(cfg, ds.subset(tr), ds.subset(va), "cpu", seed=0, on_epoch=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3]
    best = min(seen, key=lambda s: s.val_loss)
    assert result.best_epoch == best.epoch and result.best_val_loss == best.val_loss
    assert result.optimizer_state is not None and set(result.state_dict) == set(
        build_model(cfg).state_dict()
    )
