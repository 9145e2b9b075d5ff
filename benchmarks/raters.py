"""``slicerank bench raters``: the simulated raters' calibration on phantom cohorts.

The raters perceive what each rendered slice shows (``cmr_ingest.phantom.apparent_u`` and
``reading_difficulty``, fixed from the anatomy and the physics before any model result). Two
noise levels are then fitted, and nothing else: the per-view sd to the study's intra-rater
kappa (0.90; the persistent error and the boundary offsets cancel within a rater) and then
the persistent sd to its inter-rater kappa (0.77), each by bisection on a calibration cohort
(seed ``CALIBRATION_COHORT``). A second cohort never used for fitting checks the result.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

#: The study's Table 5: mean intra- and inter-rater Cohen's kappa of one-at-a-time labels.
STUDY_KAPPA = (0.90, 0.77)
#: Phantom cohort seeds: one to fit the two noise levels, one only to check them.
CALIBRATION_COHORT = 900
CHECK_COHORT = 901
#: Panel seeds averaged in every kappa.
PANEL_SEEDS = (0, 1, 2)
#: About the study's 3,323 slices.
SCANS = 300


def phantom_panel_inputs(n_scans: int, seed: int):
    """(apparent positions, difficulty, true positions) of a phantom PNG cohort's slices."""
    from cmr_ingest import phantom
    from cmr_ingest.synth import _synth_ids, plan_scan, slice_perception

    seen = slice_perception(n_scans, seed)
    truth = {}
    for index in range(n_scans):
        plan = plan_scan(seed, index)
        for k, pos in enumerate(plan.positions):
            truth[_synth_ids(seed, index, k)[1]] = pos
    apparent = {i: a for i, (a, _) in seen.items()}
    difficulty = {i: d for i, (_, d) in seen.items()}
    assert set(truth) == set(apparent)
    return apparent, difficulty, truth, phantom.POSITION_CUTS


def _bisect(f, lo: float, hi: float, target: float, decreasing: bool, iters: int = 18) -> float:
    for _ in range(iters):
        mid = (lo + hi) / 2
        above = f(mid) > target
        if above == decreasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def calibrate(n_scans: int = SCANS, seeds=PANEL_SEEDS) -> dict[str, Any]:
    """Fit view_sd and persistent_sd; return them with the kappa table (before/after)."""
    from ranking_scheduler.simulator.raters import (
        DEFAULT_PARAMS,
        PHANTOM_PARAMS,
        kappa_study,
    )

    apparent, difficulty, truth, cuts = phantom_panel_inputs(n_scans, CALIBRATION_COHORT)
    base = replace(PHANTOM_PARAMS, cuts=cuts)

    def intra(view_sd: float) -> float:
        return kappa_study(apparent, seeds, replace(base, view_sd=view_sd), difficulty)[0]

    view_sd = _bisect(intra, 0.0, 0.1, STUDY_KAPPA[0], decreasing=True)

    def inter(persistent_sd: float) -> float:
        p = replace(base, view_sd=view_sd, persistent_sd=persistent_sd)
        return kappa_study(apparent, seeds, p, difficulty)[1]

    persistent_sd = _bisect(inter, 0.0, 0.15, STUDY_KAPPA[1], decreasing=True)
    fitted = replace(base, view_sd=view_sd, persistent_sd=persistent_sd)
    check = phantom_panel_inputs(n_scans, CHECK_COHORT)
    rows = [
        ("study-cohort defaults, true positions (before)", CALIBRATION_COHORT,
         kappa_study(truth, seeds, replace(DEFAULT_PARAMS, cuts=cuts))),
        ("fitted, image-grounded (calibration cohort)", CALIBRATION_COHORT,
         kappa_study(apparent, seeds, fitted, difficulty)),
        ("fitted, image-grounded (check cohort, not fitted)", CHECK_COHORT,
         kappa_study(check[0], seeds, replace(fitted, cuts=check[3]), check[1])),
        ("as shipped (PHANTOM_PARAMS), check cohort", CHECK_COHORT,
         kappa_study(check[0], seeds, replace(PHANTOM_PARAMS, cuts=check[3]), check[1])),
    ]  # fmt: skip
    return {
        "view_sd": view_sd,
        "persistent_sd": persistent_sd,
        "offset_sd": base.offset_sd,
        "lapse": base.lapse,
        "rater_spread": base.rater_spread,
        "scans": n_scans,
        "slices": len(apparent),
        "panel_seeds": list(seeds),
        "rows": [
            {
                "panel": name,
                "cohort": cohort,
                "intra": k[0],
                "inter": k[1],
                "within_0.02": abs(k[0] - STUDY_KAPPA[0]) <= 0.02
                and abs(k[1] - STUDY_KAPPA[1]) <= 0.02,
            }
            for name, cohort, k in rows
        ],  # fmt: skip
    }


def table(result: dict[str, Any]) -> str:
    """The calibration as a Markdown table."""
    lines = [
        "| panel | phantom cohort (seed) | intra κ | inter κ | within ±0.02 of 0.90 / 0.77 |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ok = "yes" if r["within_0.02"] else "no"
        lines.append(
            f"| {r['panel']} | {r['cohort']} | {r['intra']:.3f} | {r['inter']:.3f} | {ok} |"
        )
    return "\n".join(lines)


def main(args) -> int:
    from slicerank_base.jsonout import write_json

    t0 = time.perf_counter()
    result = calibrate(args.scans)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("view_sd", "persistent_sd", "slices", "wall_s")}))
    if args.json:
        write_json(args.json, result)
    return 0
