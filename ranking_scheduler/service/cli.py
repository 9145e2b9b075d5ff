"""``slicerank scheduler``: the web service (``bench service`` lives in ``benchmarks``)."""

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
            "LABEL_STUDIO_API_KEY, SCHEDULER_WEBHOOK_SECRET, SCHEDULER_DASHBOARD_TOKEN, "
            "SCHEDULER_DB_URL, ...; see "
            "docs/guide/label-studio.md)."
        ),
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    p.add_argument("--port", type=int, default=8700, help="port to listen on")
    p.add_argument(
        "--rebind-projects",
        action="store_true",
        help="move the log to the Label Studio projects found now (the log is pinned to the "
        "project ids of its first start, and a start that finds others refuses; same as "
        "SCHEDULER_REBIND_PROJECTS=1)",
    )
    p.add_argument(
        "--accept-reconcile",
        action="store_true",
        help="list what the last refused reconciliation pass would drop from the log (nothing "
        "changes); with --yes, accept it: the scheduler's next full pass drops exactly those",
    )
    p.add_argument("--yes", action="store_true", help="confirm --accept-reconcile")
    p.set_defaults(func=_scheduler)


def _accept_reconcile(settings, yes: bool) -> int:
    """``--accept-reconcile [--yes]``: show the refused drop; accept it with ``--yes``."""
    from ranking_scheduler.service.accept import accept_drop, format_drop, refused_drop
    from ranking_scheduler.service.store import SubmissionStore

    with SubmissionStore(settings.db_url) as store:
        drop = refused_drop(store)
        if drop is None:
            print("No reconciliation pass is refused: nothing to accept.")
            return 0
        print(format_drop(drop))
        if not yes:
            print(
                "\nNothing changed. If Label Studio lost these on purpose (a lead deleted them), "
                "run again with --accept-reconcile --yes."
            )
            return 0
        n = accept_drop(store)
    print(
        f"\nAccepted: {n} annotation(s) are dropped at the scheduler's next full "
        "reconciliation (SCHEDULER_FULL_RECONCILE_INTERVAL_S) or its next start."
    )
    return 0


def _scheduler(args: argparse.Namespace) -> int:
    import logging
    import os
    import sys

    from label_studio_sdk import LabelStudio

    from ranking_scheduler.service.limits import listen, serve
    from ranking_scheduler.service.ls_adapter import LabelStudioAdapter
    from ranking_scheduler.service.service import SchedulerService
    from ranking_scheduler.service.settings import SchedulerSettings
    from ranking_scheduler.service.store import SubmissionStore
    from ranking_scheduler.service.webapp import create_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = SchedulerSettings.from_env(os.environ)
        settings.require_secrets()
        if getattr(args, "rebind_projects", False):
            settings = settings.with_(rebind_projects=True)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "accept_reconcile", False):
        return _accept_reconcile(settings, args.yes)
    if settings.db_url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(settings.db_url[10:])), exist_ok=True)
    store = SubmissionStore(settings.db_url)
    client = LabelStudio(base_url=settings.label_studio_url, api_key=settings.api_key, timeout=60)
    service = SchedulerService(settings, store, LabelStudioAdapter(client, settings.project_prefix))
    # Listen before starting: from here on a webhook waits in the socket's backlog, so the
    # first reconciliation (queued once the app runs) reads every answer whose webhook failed.
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        store.close()
        return 2
    try:
        service.start()
    except (LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sock.close()
        store.close()
        return 2
    logging.getLogger(__name__).info("scheduler listening on http://%s:%d", args.host, args.port)
    try:
        serve(create_app(service), sock)
    finally:
        service.stop()
        store.close()
    return 0
