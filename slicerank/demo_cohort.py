"""Demo stage: the synthetic labelling and held-out cohorts (reused between runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def stage_cohort(
    out_dir: Path, n_scans: int, seed: int, *, labelled: bool = False
) -> dict[str, Any]:
    """Generate a synthetic cohort into ``out_dir``, or reuse one made with the same settings.

    ``labelled``: Label Studio already holds tasks for the cohort in ``out_dir``, so a cohort
    with other settings would orphan them; that is an error asking for ``--fresh``.
    """
    from cmr_ingest.manifest import read_manifest
    from cmr_ingest.synth import generate_cohort

    stamp = out_dir / ".demo-cohort.json"
    wanted = {"scans": n_scans, "seed": seed}
    manifest = out_dir / "manifest.csv"
    have = json.loads(stamp.read_text()) if stamp.exists() else None
    reused = have == wanted and manifest.exists()
    if not reused:
        if labelled and have is not None:
            raise ValueError(
                f"{out_dir} holds a labelled cohort of {have['scans']} scans (seed "
                f"{have['seed']}), not {n_scans} (seed {seed}): add --fresh to start over, "
                "or choose another --out"
            )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        generate_cohort(n_scans, out_dir, seed=seed, progress=True)
        stamp.write_text(json.dumps(wanted))
    rows = read_manifest(manifest)
    classes: dict[str, int] = {}
    for row in rows:
        classes[row["true_class"]] = classes.get(row["true_class"], 0) + 1
    return {
        "dir": str(out_dir),
        "manifest": str(manifest),
        "scans": n_scans,
        "seed": seed,
        "images": len(rows),
        "classes": classes,
        "reused": reused,
    }
