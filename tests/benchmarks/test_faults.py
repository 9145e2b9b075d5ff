"""A small preset of the fault bench (``slicerank bench faults``) against the session's real
Label Studio, with the scheduler's log on a real PostgreSQL: the full tally is in
docs/bench/service-faults.md. Each case must lose, double-count and wrongly reject nothing."""

from __future__ import annotations

import pytest

from benchmarks.faults import run_faults
from benchmarks.harness import audit

pytestmark = pytest.mark.slow


def test_audit_counts_lost_wrongly_rejected_and_double_counted():
    ls = {1: ["a", "b"], 2: ["b", "a"], 3: ["a", "b"], 4: ["a", "b"]}
    log = {1: ["a", "b"], 2: ["a", "b"], 9: ["a", "b"]}
    a = audit(ls, log, rejected={4}, engine_batches=5)
    assert (a.lost, a.wrongly_rejected, a.double_counted) == (1, 1, 2)
    assert (a.unknown_in_log, a.order_mismatches) == (1, 1) and not a.clean
    assert a.lost_ids == (3,) and a.rejected_ids == (4,)
    assert audit(ls, ls, rejected=set(), engine_batches=4).clean


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown fault cases"):
        run_faults(cases=("nope",))
    with pytest.raises(ValueError, match="positive"):
        run_faults(cases=("kill9",), runs={"kill9": 0})
    with pytest.raises(ValueError, match="images"):
        run_faults(cases=("kill9",), images=8)
    with pytest.raises(ValueError, match="ls_restart"):
        run_faults(cases=("ls_restart",), label_studio=object())


def test_fault_cases_lose_nothing(label_studio, tmp_path):
    """Two kill -9s, duplicated and out-of-order webhooks, edits / deletes / a spurious delete."""
    result = run_faults(
        cases=("kill9", "duplicates", "edits"),
        runs={"kill9": 2, "duplicates": 1, "edits": 1},
        out=str(tmp_path / "faults"),
        label_studio=label_studio,
        progress=False,
        images=160,  # a quicker set-up, still far from the stopping rule after ~40 batches
    )
    for name, case in result["cases"].items():
        assert case["error"] is None, (name, case["error"])
        assert case["n_runs"] == (2 if name == "kill9" else 1)
        assert case["answers_at_end"] > 0, name  # the raters did submit
        bad = [r for r in case["runs"] if not r["clean"]]
        assert not bad, (name, bad)
    assert result["totals"]["lost"] == 0
    assert result["totals"]["double_counted"] == 0
    assert result["totals"]["wrongly_rejected"] == 0


def test_label_studio_database_env_makes_and_drops_a_postgres_database():
    import psycopg

    from benchmarks.harness import _admin_url, label_studio_db_env

    with label_studio_db_env("sqlite") as env:
        assert env == {}
    with label_studio_db_env("postgresql") as env:
        assert env["DJANGO_DB"] == "default"  # Label Studio 1.23: "default" is PostgreSQL
        name = env["POSTGRE_NAME"]
        with psycopg.connect(_admin_url()) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert found is not None
    with psycopg.connect(_admin_url()) as conn:
        gone = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert gone is None
    with pytest.raises(ValueError, match="mysql"), label_studio_db_env("mysql"):
        pass
