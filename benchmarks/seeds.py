"""Which seeds tune and which report (issue 19: recipe discipline).

Every recipe, engine and rater choice so far was made looking at results on the tuning seeds
(the demo's seeds 0-4 and ``bench model``'s cohorts 1-3, all inside ``TUNING_SEEDS``). The
reporting seeds were never looked at while choosing; they run only the frozen recipe
(:data:`FROZEN_RECIPE`), and the docs' comparison tables come from them. A held-out cohort is
drawn with its labelled cohort's seed + 1000, so those never overlap either. Other fixed
cohorts: the raters' calibration (900, 901) and ``bench labels`` (700).
"""

from __future__ import annotations

#: Seeds a person may look at while choosing recipes, engines and raters.
TUNING_SEEDS = range(0, 100)
#: Seeds for the numbers we publish: only the frozen recipe runs on them.
REPORTING_SEEDS = range(500, 510)
#: The recipe frozen before any reporting seed ran: the demo's defaults (the cpu-small
#: preset as shipped, its decision rule and loss) for both arms, the one-at-a-time arm's
#: labels through ``single_labeller``, one shared split by scan (``validation_scans``).
FROZEN_RECIPE = {
    "preset": "cpu-small",
    "variants": ("classify", "ranking"),
    "validation": "ml_backend.splits.validation_scans (10% of scans, seeded, before labels)",
}


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"``, ``"500-504"`` or ``"reporting"`` (every reporting seed) → seeds."""
    if text.strip() == "reporting":
        return list(REPORTING_SEEDS)
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    return out


def check_reporting(seeds, *, recipe_changed: bool, what: str) -> None:
    """Refuse to run a changed recipe on a reporting seed (tune on the tuning seeds)."""
    used = sorted(set(seeds) & set(REPORTING_SEEDS))
    if used and recipe_changed:
        raise ValueError(
            f"{what} on reporting seed(s) {used}: the reporting seeds run only the frozen "
            f"recipe {FROZEN_RECIPE}; compare recipes on tuning seeds "
            f"({TUNING_SEEDS.start}-{TUNING_SEEDS.stop - 1}) instead"
        )
