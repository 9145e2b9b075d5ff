"""Settings of the scheduler service, read once from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ranking_scheduler.engine.ranking import STRATEGIES


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={env.get(name)!r} is not a yes/no value (use 1 or 0)")


@dataclass(frozen=True)
class SchedulerSettings:
    """Everything the scheduler service is configured with (env var in brackets).

    ``label_studio_url`` (LABEL_STUDIO_URL), ``api_key`` (LABEL_STUDIO_API_KEY),
    ``secret`` (SCHEDULER_WEBHOOK_SECRET, or SCHEDULER_SECRET): the webhook header value, taken
    on ``POST /webhook`` only; ``dashboard_token`` (SCHEDULER_DASHBOARD_TOKEN): the read-only
    credential of the dashboard and the JSON reads (see ``service.auth``); ``db_url`` (SCHEDULER_DB_URL, SQLite by default);
    ``out_dir`` (SCHEDULER_OUT_DIR: consensus.json/csv); ``project_prefix``
    (SCHEDULER_PROJECT_PREFIX, as given to ``slicerank provision --prefix``);
    ``strategy`` (SCHEDULER_STRATEGY: ``ranking``/``bayes``, ``single``, ``hybrid``, ``paper``,
    ``random``), ``min_views`` (SCHEDULER_MIN_VIEWS: human views every slice gets before the
    engine stops, 0 = let the stacks infer the slices nobody needs to see, 1 = every slice seen
    once; not for ``paper``, which has ``target_views``), ``target_views`` (SCHEDULER_TARGET_VIEWS),
    ``batch_size`` (SCHEDULER_BATCH_SIZE), ``seed`` (SCHEDULER_SEED);
    ``manifest`` (SCHEDULER_MANIFEST): the media root's manifest.csv (or its folder); when set
    the engine gets each image's scan and slice order (``service.geometry``);
    ``open_per_rater`` (SCHEDULER_OPEN_PER_RATER) open Rank tasks per active rater,
    ``min_open_tasks`` (SCHEDULER_MIN_OPEN_TASKS) and ``max_open_tasks``
    (SCHEDULER_MAX_OPEN_TASKS) bounds, ``active_window_s`` (SCHEDULER_ACTIVE_WINDOW_S): a rater
    who submitted within it counts as active; ``stale_after_s`` (SCHEDULER_STALE_AFTER_S): an
    unanswered Rank task older than this is retired and replaced from current state;
    ``recent_view_s`` (SCHEDULER_RECENT_VIEW_S, 0 = off): a slice ranked within this many
    seconds goes into no new Rank task while enough others are free (Label Studio, not the
    scheduler, picks which rater gets a task, so nobody is shown a slice they just ranked);
    ``boundary_open`` (SCHEDULER_BOUNDARY_OPEN) open boundary questions at most,
    ``boundary_budget`` (SCHEDULER_BOUNDARY_BUDGET) boundary labels in all (-1: the engine's);
    ``reconcile_interval_s`` (SCHEDULER_RECONCILE_INTERVAL_S, 0 = off): how often the open
    tasks are checked against Label Studio; ``full_reconcile_interval_s``
    (SCHEDULER_FULL_RECONCILE_INTERVAL_S, 0 = only at start): how often every annotation is
    (edits and deletions made while a webhook was lost);
    ``watch_interval_s`` (SCHEDULER_WATCH_INTERVAL_S, 0 = off): how often the open-task count is
    compared with Label Studio's, which triggers a reconciliation when a webhook went missing;
    ``spare_safety`` (SCHEDULER_SPARE_SAFETY, >= 0; 0 = only the fixed per-rater count): spare Rank
    tasks beyond one per active rater = submission rate x worst recent replacement lag x this;
    ``create_concurrency`` (SCHEDULER_CREATE_CONCURRENCY, >= 1): Rank-task imports in flight at
    once (a slow import then does not hold up the replacements after it);
    ``rebind_projects`` (SCHEDULER_REBIND_PROJECTS=1, or ``slicerank scheduler
    --rebind-projects``): the log is pinned to the Label Studio project ids it was first
    started with, and a start that finds other ids refuses unless this is set (a deliberate
    move of the log to the projects found now);
    ``reconcile_max_delete_share`` (SCHEDULER_RECONCILE_MAX_DELETE_SHARE, 0..1): a
    reconciliation pass that would drop more than this share of the logged annotations (and
    more than ``RECONCILE_DELETE_FLOOR``) is refused and reported instead.
    """

    label_studio_url: str = "http://127.0.0.1:8080"
    api_key: str = ""
    secret: str = ""
    dashboard_token: str = ""
    db_url: str = "sqlite:///runs/scheduler.db"
    out_dir: str = "runs/scheduler"
    project_prefix: str = ""
    strategy: str = "bayes"
    target_views: int = 3
    min_views: int = 0
    batch_size: int = 8
    seed: int = 0
    manifest: str = ""
    open_per_rater: int = 3
    # Raters who start together all ask for a task before any has submitted (so none counts
    # as active yet): the floor covers ~10 at once with spares; 8 let 5 of 1,000 submissions
    # of the 10-rater benchmark find no next task in its first seconds.
    min_open_tasks: int = 16
    max_open_tasks: int = 64
    active_window_s: float = 900.0
    stale_after_s: float = 7200.0
    recent_view_s: float = 300.0
    boundary_open: int = 2
    boundary_budget: int = -1
    reconcile_interval_s: float = 60.0
    full_reconcile_interval_s: float = 900.0
    watch_interval_s: float = 5.0
    spare_safety: float = 1.5
    create_concurrency: int = 3
    rebind_projects: bool = False
    reconcile_max_delete_share: float = 0.05

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"SCHEDULER_STRATEGY={self.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        if self.min_views and self.strategy == "paper":
            raise ValueError(
                f"SCHEDULER_MIN_VIEWS={self.min_views} does not apply to SCHEDULER_STRATEGY=paper "
                "(it shows every image SCHEDULER_TARGET_VIEWS times): unset it or pick ranking, "
                "single or hybrid"
            )
        if self.max_open_tasks < self.min_open_tasks:
            raise ValueError(
                f"SCHEDULER_MAX_OPEN_TASKS={self.max_open_tasks} is below "
                f"SCHEDULER_MIN_OPEN_TASKS={self.min_open_tasks}"
            )
        if not 0 <= self.spare_safety <= 100:
            raise ValueError(f"SCHEDULER_SPARE_SAFETY={self.spare_safety} must be within 0..100")
        if self.create_concurrency < 1:
            raise ValueError(
                f"SCHEDULER_CREATE_CONCURRENCY={self.create_concurrency} must be at least 1"
            )
        if not 0 <= self.reconcile_max_delete_share <= 1:
            raise ValueError(
                "SCHEDULER_RECONCILE_MAX_DELETE_SHARE="
                f"{self.reconcile_max_delete_share} must be within 0..1"
            )
        if self.batch_size < 2:
            raise ValueError(f"SCHEDULER_BATCH_SIZE={self.batch_size} must be at least 2")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SchedulerSettings:
        """Read the settings from an environment mapping (``os.environ`` in the CLI)."""
        d = cls()
        return cls(
            label_studio_url=environ.get("LABEL_STUDIO_URL", d.label_studio_url),
            api_key=environ.get("LABEL_STUDIO_API_KEY", ""),
            secret=environ.get("SCHEDULER_WEBHOOK_SECRET") or environ.get("SCHEDULER_SECRET", ""),
            dashboard_token=environ.get("SCHEDULER_DASHBOARD_TOKEN", ""),
            db_url=environ.get("SCHEDULER_DB_URL", d.db_url),
            out_dir=environ.get("SCHEDULER_OUT_DIR", d.out_dir),
            project_prefix=environ.get("SCHEDULER_PROJECT_PREFIX", ""),
            strategy=environ.get("SCHEDULER_STRATEGY", d.strategy),
            target_views=_int(environ, "SCHEDULER_TARGET_VIEWS", d.target_views, 1),
            min_views=_int(environ, "SCHEDULER_MIN_VIEWS", d.min_views, 0),
            batch_size=_int(environ, "SCHEDULER_BATCH_SIZE", d.batch_size, 2),
            seed=_int(environ, "SCHEDULER_SEED", d.seed),
            manifest=environ.get("SCHEDULER_MANIFEST", ""),
            open_per_rater=_int(environ, "SCHEDULER_OPEN_PER_RATER", d.open_per_rater, 1),
            min_open_tasks=_int(environ, "SCHEDULER_MIN_OPEN_TASKS", d.min_open_tasks, 1),
            max_open_tasks=_int(environ, "SCHEDULER_MAX_OPEN_TASKS", d.max_open_tasks, 1),
            active_window_s=_float(environ, "SCHEDULER_ACTIVE_WINDOW_S", d.active_window_s),
            stale_after_s=_float(environ, "SCHEDULER_STALE_AFTER_S", d.stale_after_s),
            recent_view_s=_float(environ, "SCHEDULER_RECENT_VIEW_S", d.recent_view_s),
            boundary_open=_int(environ, "SCHEDULER_BOUNDARY_OPEN", d.boundary_open),
            boundary_budget=_int(environ, "SCHEDULER_BOUNDARY_BUDGET", -1, -1),
            reconcile_interval_s=_float(
                environ, "SCHEDULER_RECONCILE_INTERVAL_S", d.reconcile_interval_s
            ),
            full_reconcile_interval_s=_float(
                environ, "SCHEDULER_FULL_RECONCILE_INTERVAL_S", d.full_reconcile_interval_s
            ),
            watch_interval_s=_float(environ, "SCHEDULER_WATCH_INTERVAL_S", d.watch_interval_s),
            spare_safety=_float(environ, "SCHEDULER_SPARE_SAFETY", d.spare_safety),
            create_concurrency=_int(
                environ, "SCHEDULER_CREATE_CONCURRENCY", d.create_concurrency, 1
            ),
            rebind_projects=_bool(environ, "SCHEDULER_REBIND_PROJECTS"),
            reconcile_max_delete_share=_float(
                environ, "SCHEDULER_RECONCILE_MAX_DELETE_SHARE", d.reconcile_max_delete_share
            ),
        )

    def with_(self, **changes) -> SchedulerSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def require_secrets(self) -> None:
        """Raise ``ValueError`` naming the missing variables the service cannot run without."""
        missing = [
            name
            for name, value in (
                ("LABEL_STUDIO_API_KEY", self.api_key),
                ("SCHEDULER_WEBHOOK_SECRET", self.secret),
                ("SCHEDULER_DASHBOARD_TOKEN", self.dashboard_token),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"set {' and '.join(missing)} in the environment")
        if len(self.secret) < 12:
            raise ValueError("SCHEDULER_WEBHOOK_SECRET must be at least 12 characters")
        if len(self.dashboard_token) < 12:
            raise ValueError("SCHEDULER_DASHBOARD_TOKEN must be at least 12 characters")
        if self.dashboard_token == self.secret:
            # One secret doing both jobs would let every dashboard reader forge annotations.
            raise ValueError(
                "SCHEDULER_DASHBOARD_TOKEN must differ from SCHEDULER_WEBHOOK_SECRET (readers "
                "of the dashboard must not be able to post webhooks)"
            )

    def __repr__(self) -> str:
        # Never print the secrets (settings end up in logs and tracebacks).
        hidden = ("api_key", "secret", "dashboard_token")
        shown = {k: v for k, v in self.__dict__.items() if k not in hidden}
        return f"SchedulerSettings({shown}, api_key=***, secret=***, dashboard_token=***)"
