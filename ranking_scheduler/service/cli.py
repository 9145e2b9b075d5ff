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
    import threading

    from label_studio_sdk import LabelStudio

    from ranking_scheduler.service.limits import make_server
    from ranking_scheduler.service.ls_adapter import LabelStudioAdapter
    from ranking_scheduler.service.service import SchedulerService
    from ranking_scheduler.service.settings import SchedulerSettings
    from ranking_scheduler.service.startup import HealthProbe, StartGate, start_when_reachable
    from ranking_scheduler.service.store import SubmissionStore
    from ranking_scheduler.service.webapp import create_app
    from slicerank_base.reach import EXIT_CONFIG, EXIT_UNREACHABLE, ServiceUnreachable, start_wait_s

    log = logging.getLogger(__name__)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = SchedulerSettings.from_env(os.environ)
        settings.require_secrets()
        if getattr(args, "rebind_projects", False):
            settings = settings.with_(rebind_projects=True)
        give_up = start_wait_s(os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if getattr(args, "accept_reconcile", False):
        return _accept_reconcile(settings, args.yes)
    if settings.db_url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(settings.db_url[10:])), exist_ok=True)

    def start_service(store):
        client = LabelStudio(
            base_url=settings.label_studio_url, api_key=settings.api_key, timeout=60
        )
        adapter = LabelStudioAdapter(client, settings.project_prefix)
        return SchedulerService(settings, store, adapter).start()

    # Listen at once: while Label Studio or the database is awaited, /health says what is down.
    # The server has the scheduler's limits (limits.py: slow clients cut off, connections
    # capped; the app caps bodies).
    gate = StartGate()
    server = make_server(gate, host=args.host, port=args.port)
    started: dict = {}

    def start() -> None:
        try:
            store, service = start_when_reachable(
                lambda: SubmissionStore(settings.db_url), start_service,
                db_url=settings.db_url, label_studio_url=settings.label_studio_url,
                api_key=settings.api_key, gate=gate, give_up_after_s=give_up,
                stop=lambda: server.should_exit,
            )  # fmt: skip
        except ServiceUnreachable as exc:
            started["error"] = (EXIT_UNREACHABLE, str(exc))
        except (LookupError, ValueError) as exc:  # ConfigError is a ValueError
            started["error"] = (EXIT_CONFIG, str(exc))
        except Exception as exc:  # noqa: BLE001 - reported below, and the server stops
            started["error"] = (1, f"{type(exc).__name__}: {exc}")
        else:
            started.update(store=store, service=service)
            gate.open(
                create_app(service, health=HealthProbe(settings.label_studio_url, store).down)
            )
            # Reconcile only once webhooks are accepted: nothing can fall in between.
            service.request_reconcile()
            log.info("scheduler ready on http://%s:%d", args.host, args.port)
            return
        server.should_exit = True

    threading.Thread(target=start, name="scheduler-start", daemon=True).start()
    log.info("scheduler listening on http://%s:%d (starting)", args.host, args.port)
    try:
        server.run()
    finally:
        if "service" in started:
            started["service"].stop()
            started["store"].close()
    if "error" in started:
        code, message = started["error"]
        print(f"error: {message}", file=sys.stderr)
        return code
    return 0
