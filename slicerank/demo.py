"""``slicerank demo``: the whole study end to end on embedded defaults.

One command on one machine: a synthetic cohort (plus a held-out test cohort with ground
truth), a local Label Studio (SQLite), Redis (the one at ``REDIS_URL`` or a private
``redis-server``), the scheduler, the ML backend and one RQ worker as child processes; the
three projects provisioned; three simulated clinicians labelling through Label Studio's REST
API with both strategies at equal labelling time; one model trained per strategy through the
backend's RQ queue; predictions written back into Label Studio; the held-out set scored and the
analysis report written. Every stage is a function that takes its inputs explicitly and returns
a JSON-able dict; ``--json FILE`` collects them.

Re-running with the same ``--out`` reuses the cohort, Label Studio's database, the scheduler's
log and the model registry (labels are topped up to the budget, not doubled); ``--fresh``
starts over. Ctrl-C (or SIGTERM) stops every child process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slicerank.demo_cohort import stage_cohort
from slicerank.demo_config import (
    DEFAULT_OUT,
    DEFAULT_SCANS,
    DEFAULT_TEST_SCANS,
    LS_USER_DOMAIN,
    DemoConfig,
    Layout,
    load_credentials,
    prepare_out_dir,
)
from slicerank.demo_labelling import scheduler_stats_fn, stage_consensus
from slicerank.demo_progress import progress_bar, whole_seconds
from slicerank.demo_raters import (
    LabelStudioREST,
    LeadTimes,
    labelling_budget,
    make_panel,
    simulate_ranking,
    simulate_single,
)
from slicerank.demo_report import (
    predict_testset,
    print_headline,
    stage_analysis,
    stage_label_report,
    test_scans,
    write_prediction_csvs,
)
from slicerank.demo_services import (
    choose_ports,
    service_env,
    service_ports,
    stage_backend,
    stage_label_studio,
    stage_provision,
    stage_redis,
    stage_scheduler,
)
from slicerank.demo_training import stage_train

log = logging.getLogger(__name__)


def run_demo(
    cfg: DemoConfig, *, out=print, on_ready: Callable[[dict], None] = lambda result: None
) -> dict[str, Any]:
    """Run every stage; returns the outputs of each (what ``--json`` writes).

    ``on_ready`` gets the results once everything is set up and (unless ``--no-simulate``)
    labelled, trained and reported: before waiting for Ctrl-C when the services stay up.
    """
    import httpx
    import redis

    from ml_backend.splits import validation_scans
    from ranking_scheduler.simulator.raters import premise_name
    from ranking_scheduler.simulator.simulate import read_cohort
    from ranking_scheduler.simulator.stack_labels import labeller_document, single_labeller
    from slicerank_base.procs import ProcessSet

    layout = prepare_out_dir(cfg)
    creds = load_credentials(layout.credentials)
    result: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}}
    timings: dict[str, float] = {}
    result["timings_s"] = timings
    t0 = time.monotonic()
    n_stages = 8 if cfg.simulate else 3
    stages = progress_bar(n_stages, "demo", unit="stage")

    def mark(name: str, since: float) -> None:
        timings[name] = round(time.monotonic() - since, 2)
        stages.set_postfix_str(name)
        stages.update(1)

    with ProcessSet() as procs, httpx.Client(timeout=60.0) as http:
        t = time.monotonic()
        result["cohort"] = stage_cohort(
            layout.media, cfg.scans, cfg.seed, labelled=layout.label_studio.exists()
        )
        result["testset"] = stage_cohort(layout.testset, cfg.test_scans, cfg.seed + 1000)
        mark("cohorts", t)

        t = time.monotonic()
        result["redis"] = stage_redis(cfg, layout, procs)
        redis_url = result["redis"]["url"]
        result["redis"]["url"] = _redact(redis_url)
        ports = choose_ports(cfg, layout.state)
        server = stage_label_studio(cfg, layout, creds, procs, ports["label_studio"])
        result["label_studio"] = {"url": server.url, "username": creds["username"]}
        env = service_env(cfg, layout, creds, server.url, redis_url)
        queue_name = env["SLICERANK_QUEUE"]
        services = service_ports(cfg, ports)
        services["dashboard_url"] = f"{services['scheduler_url']}/dashboard"
        result["services"] = services
        stage_backend(layout, env, services, procs)
        mark("services", t)

        t = time.monotonic()
        client = server.client()
        result["provision"] = stage_provision(
            client, layout, services["scheduler_url"], services["backend_url"],
            creds["webhook_secret"], cfg.seed, (creds["backend_user"], creds["backend_pass"]),
        )  # fmt: skip
        projects = result["provision"]["projects"]
        stage_scheduler(layout, env, services, procs)
        mark("provision", t)

        urls = {
            "label_studio": server.url,
            "rank_project": f"{server.url}/projects/{projects['Rank']}/data",
            "classify_project": f"{server.url}/projects/{projects['Classify']}/data",
            "dashboard": services["dashboard_url"],
            "report": str(layout.report / "report.html"),
        }
        result["urls"] = urls
        if not cfg.simulate:
            stages.close()
            on_ready(result)
            print_access(out, urls, creds, layout, simulated=False)
            wait_until_interrupted(procs)
            return result

        rest = LabelStudioREST(http, server.url, creds["api_key"])
        manifest = layout.media / "manifest.csv"
        # The raters perceive what each rendered slice shows, under the named premise.
        panel = make_panel(manifest, cfg.raters, cfg.seed, premise=cfg.premise, scans=cfg.scans)
        result["premise"] = {"abs_difficulty": cfg.premise, "name": premise_name(cfg.premise)}
        # One split for both arms, by scan, drawn before either arm has a label.
        stacks = read_cohort(manifest).stacks or {}
        val_scans = validation_scans({scan for scan, _ in stacks.values()}, cfg.seed)
        result["split"] = {"validation_scans": list(val_scans), "shared_by_both_arms": True}
        user_ids = {
            r.name: rest.ensure_user(f"{r.name}@{LS_USER_DOMAIN}", r.name) for r in panel.raters
        }
        budget = labelling_budget(result["cohort"]["images"], cfg.hours)
        result["budget"] = budget
        # Measured labelling time: every simulated annotation carries a plausible lead_time.
        lead_times = LeadTimes([r.name for r in panel.raters], cfg.seed)
        result["lead_times"] = {"median_s": lead_times.median_s, "rater_speed": lead_times.speed}

        t = time.monotonic()
        bar = progress_bar(budget["single_labels"], "one-at-a-time labels", unit="label")
        labeller = single_labeller(sorted(stacks), stacks, seed=cfg.seed)
        result["classify"] = simulate_single(
            rest, projects["Classify"], panel, user_ids, budget["single_labels"], labeller,
            bar.update, lead_times=lead_times,
        )  # fmt: skip
        bar.close()
        single_doc = labeller_document(labeller)
        single_path = layout.scheduler / "single-consensus.json"
        single_path.write_text(json.dumps(single_doc, indent=2))
        result["single_consensus"] = {"path": str(single_path), "images": len(single_doc["images"])}
        mark("one-at-a-time labelling", t)

        t = time.monotonic()
        bar = progress_bar(round(budget["seconds"]), "ranking (labelling s)", unit="s")
        result["ranking"] = simulate_ranking(
            rest, projects, panel, user_ids, budget["seconds"],
            scheduler_stats_fn(http, services["scheduler_url"], creds["dashboard_token"]),
            procs.check_alive, whole_seconds(bar.update), lead_times=lead_times,
        )  # fmt: skip
        bar.close()
        result["consensus"] = stage_consensus(
            http, services["scheduler_url"], creds["dashboard_token"],
            layout.scheduler / "demo-consensus.json",
        )  # fmt: skip
        mark("ranking", t)

        t = time.monotonic()
        conn = redis.Redis.from_url(redis_url)
        models = {}
        # Both models learn through the same path: a consensus file giving every slice of
        # the labelled cohort a class decoded along its scan (the scheduler's for ranking,
        # the one-at-a-time labeller's for one-at-a-time), on the same training scans.
        files = {"one-at-a-time": str(single_path), "ranking": result["consensus"]["path"]}
        for name, consensus_file in files.items():
            models[name] = stage_train(
                conn, queue_name, label_source="ranking", project_id=projects["Classify"],
                consensus_path=consensus_file, val_scans=val_scans,
                layout=layout, preset=cfg.train_preset, device=env["SLICERANK_DEVICE"],
                epochs=cfg.epochs, check_alive=procs.check_alive,
                timeout_s=cfg.timeout_s,
            )  # fmt: skip
        result["models"] = models
        mark("training", t)

        t = time.monotonic()
        versions = {name: m["model_version"] for name, m in models.items()}
        truth, predictions = predict_testset(
            layout.testset, layout.models, versions, env["SLICERANK_DEVICE"]
        )
        result["predictions"] = write_prediction_csvs(layout.report / "inputs", truth, predictions)
        mark("held-out predictions", t)

        t = time.monotonic()
        result["label_report"] = stage_label_report(
            single_path, Path(result["consensus"]["path"]), manifest,
            layout.report / "labels", cfg.seed,
        )  # fmt: skip
        result["report"] = stage_analysis(
            truth, predictions, layout.report, cfg.seed, premise=cfg.premise,
            clusters=test_scans(layout.testset), label_headline=result["label_report"],
        )  # fmt: skip
        mark("analysis", t)
        result["wall_s"] = round(time.monotonic() - t0, 1)
        stages.close()

        on_ready(result)
        print_headline(out, result["report"]["headline"], premise=cfg.premise)
        print_access(out, urls, creds, layout, simulated=True)
        if cfg.keep_running:
            wait_until_interrupted(procs)
    return result


def wait_until_interrupted(procs) -> None:
    """Keep the services running until Ctrl-C (or SIGTERM); stop if one of them dies."""
    print("services are running; press Ctrl-C to stop them", flush=True)
    try:
        while True:
            procs.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("\nstopping services...", flush=True)


def print_access(out, urls: dict[str, str], creds: dict[str, str], layout: Layout, *, simulated):
    """Tell a person where to look and how to log in (the password is in credentials.json)."""
    out("")
    out(f"Label Studio   {urls['label_studio']}")
    out(f"  login        {creds['username']}  (password in {layout.credentials})")
    out(f"  rank slices  {urls['rank_project']}")
    out(f"  classify     {urls['classify_project']}")
    out(f"dashboard      {urls['dashboard']}")
    out(f"  sign in      with dashboard_token from {layout.credentials} (read-only)")
    if simulated:
        out(f"report         {urls['report']}")
    out(f"logs           {layout.logs}")


def _redact(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username or ''}:***@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole study end to end on one machine (synthetic data, simulated raters)",
        description=(
            "Generate a synthetic cohort, start Label Studio, Redis (unless REDIS_URL answers), "
            "the scheduler, the ML backend and a worker; provision the projects; let simulated "
            "clinicians label with both strategies at equal labelling time; train one model per "
            "strategy; score them on a held-out synthetic test set and write the report."
        ),
    )
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--fresh", action="store_true", help="delete --out first and start over")
    p.add_argument("--scans", type=int, default=DEFAULT_SCANS, help="scans to label")
    p.add_argument("--test-scans", type=int, default=DEFAULT_TEST_SCANS, help="held-out scans")
    p.add_argument("--seed", type=int, default=0, help="seed of the cohort and the raters")
    p.add_argument(
        "--premise", type=float, default=1.0,
        help="how many times noisier the simulated raters' absolute labels are than their "
        "comparisons (default 1.0: equal noise; 1.5: the study's premise); every headline "
        "names it",
    )  # fmt: skip
    p.add_argument("--raters", type=int, default=3, help="simulated clinicians (1-3)")
    p.add_argument(
        "--hours",
        type=float,
        help="labelling time per strategy (default: the time one label per image takes)",
    )
    p.add_argument(
        "--strategy", default="bayes", choices=("bayes", "paper"), help="scheduler strategy"
    )
    p.add_argument("--gpu", action="store_true", help="train with the study's recipe on CUDA")
    p.add_argument("--preset", help="training preset (default: cpu-small, or gpu with --gpu)")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument(
        "--no-simulate",
        dest="simulate",
        action="store_false",
        help="set everything up and leave the projects to real people (runs until Ctrl-C)",
    )
    p.add_argument("--keep-running", action="store_true", help="keep the services up after the run")
    p.add_argument("--host", default="127.0.0.1", help="interface the services listen on")
    p.add_argument("--ls-port", type=int, help="Label Studio port (default: a free one)")
    p.add_argument("--scheduler-port", type=int, help="scheduler port (default: a free one)")
    p.add_argument("--backend-port", type=int, help="ML backend port (default: a free one)")
    p.add_argument("--json", metavar="FILE", help="write every stage's outputs as JSON")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from slicerank_base.jsonout import write_json

    if getattr(args, "verbose", 0) < 2:
        # One line per HTTP call would bury the progress bars.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    try:
        cfg = DemoConfig(
            out=Path(args.out),
            scans=args.scans,
            test_scans=args.test_scans,
            seed=args.seed,
            premise=args.premise,
            raters=args.raters,
            hours=args.hours,
            strategy=args.strategy,
            gpu=args.gpu,
            preset=args.preset,
            epochs=args.epochs,
            simulate=args.simulate,
            keep_running=args.keep_running,
            fresh=args.fresh,
            host=args.host,
            ls_port=args.ls_port,
            scheduler_port=args.scheduler_port,
            backend_port=args.backend_port,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def save(result: dict) -> None:
        if args.json:
            write_json(args.json, result)

    try:
        save(run_demo(cfg, on_ready=save))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        # A stage failed: the child processes are already stopped; say which and why.
        print(f"slicerank demo: error: {exc}", file=sys.stderr)
        return 1
    return 0
