"""``slicerank scheduler`` (the web service) and ``slicerank bench service``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``scheduler`` subcommand."""
    p = subparsers.add_parser(
        "scheduler",
        help="run the ranking scheduler service (Label Studio webhooks, dashboard)",
        description=(
            "Serve POST /webhook for Label Studio, GET /dashboard and /api/stats for project "
            "leads and /api/consensus. Settings come from the environment (LABEL_STUDIO_URL, "
            "LABEL_STUDIO_API_KEY, SCHEDULER_WEBHOOK_SECRET, SCHEDULER_DB_URL, ...; see "
            "docs/guide/label-studio.md)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=8700, help="port to listen on")
    p.set_defaults(func=_scheduler)


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``service`` benchmark target."""
    p = bench_subparsers.add_parser(
        "service",
        help="simulated raters submit batches through a real Label Studio to the scheduler",
    )
    p.add_argument("--raters", type=int, default=10, help="concurrent simulated raters")
    p.add_argument("--batches", type=int, default=1000, help="batches submitted in all")
    p.add_argument("--images", type=int, default=3323, help="images in the pool")
    p.add_argument("--strategy", default="bayes", help="engine strategy")
    p.add_argument("--out", default="runs/bench-service", help="working folder")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.set_defaults(func=_bench)


def _scheduler(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    import uvicorn
    from label_studio_sdk import LabelStudio

    from ranking_scheduler.ls_adapter import LabelStudioAdapter
    from ranking_scheduler.service import SchedulerService, create_app
    from ranking_scheduler.settings import SchedulerSettings
    from ranking_scheduler.store import SubmissionStore

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = SchedulerSettings.from_env(os.environ)
        settings.require_secrets()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.db_url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(settings.db_url[10:])), exist_ok=True)
    store = SubmissionStore(settings.db_url)
    client = LabelStudio(base_url=settings.label_studio_url, api_key=settings.api_key, timeout=60)
    service = SchedulerService(settings, store, LabelStudioAdapter(client, settings.project_prefix))
    try:
        service.start()
    except (LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        store.close()
        return 2
    logging.getLogger(__name__).info("scheduler listening on http://%s:%d", args.host, args.port)
    try:
        uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")
    finally:
        service.stop()
        store.close()
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ranking_scheduler.service_bench import main

    return main(args)
