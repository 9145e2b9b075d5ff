"""Idempotent provisioning of the slicerank Label Studio projects through ``label-studio-sdk``.

``provision(client, ...)`` creates or updates the Rank, Classify and Boundary projects (found by
title), gives each a Local Files storage on the media root, points the Rank and Boundary webhooks
at the scheduler with a shared-secret header, registers the ML backend on Classify when its URL is
given, and imports one Classify task per manifest image in a shuffled order. Everything is compared
with what Label Studio already holds, so a second run changes nothing. The SDK client is passed in.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ls_config.local_files import LocalFiles

log = logging.getLogger(__name__)

RANK, CLASSIFY, BOUNDARY = "Rank", "Classify", "Boundary"
KINDS = (RANK, CLASSIFY, BOUNDARY)
"""The three projects, by the last word of their title."""

CONFIG_FILES = {RANK: "rank.xml", CLASSIFY: "classify.xml", BOUNDARY: "boundary.xml"}

SECRET_HEADER = "X-Slicerank-Secret"
"""Custom header Label Studio sends with every webhook; its value is the shared secret."""

WEBHOOK_ACTIONS = (
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
    "TASKS_DELETED",
)
"""Events the scheduler listens to (skips arrive as ANNOTATION_CREATED, cancelled; deleting
tasks deletes their annotations but sends only TASKS_DELETED)."""

WEBHOOK_PATH = "/webhook"
"""Path of the scheduler's webhook endpoint."""

INSTRUCTIONS = {
    RANK: (
        "<p>Each task shows 8 short-axis slices from different scans, marked <b>A</b> to "
        "<b>H</b>. Put them in order from the <b>most basal</b> to the <b>most apical</b> and "
        "submit.</p><p><b>Keyboard</b> (10 key presses): Tab, type the letters most basal first "
        "(e.g. <code>CAHBDFE</code>; the eighth may be left out), Enter, Ctrl+Enter. A typed "
        "order counts over the list. <b>Mouse</b>: drag the rows of the list (most basal at the "
        "top), then Submit. <b>View</b> of all 8 at once: keys 1-4 brightness and contrast, 5-7 "
        "zoom on the centre; the same key again resets it.</p>"
        "<p>New tasks are created as you work; you never wait for the next one.</p>"
    ),
    CLASSIFY: (
        "<p>Classify each slice as <b>too basal</b> (1), <b>LV</b> (2) or <b>too apical</b> (3) "
        "using the SCMR definitions: LV slices have at least 50% of the blood pool surrounded by "
        "myocardium, down to the last slice with a visible blood pool at end-systole. A class "
        "ticked when the task opens is the model's suggestion: Ctrl+Enter accepts it. "
        "Brightness, contrast and zoom are on the toolbar beside the slice (Shift+1 fits it "
        "again).</p>"
    ),
    BOUNDARY: (
        "<p>These slices sit where the ranking places a class boundary. Classify each as "
        "<b>too basal</b> (1), <b>LV</b> (2) or <b>too apical</b> (3); the answers fix the "
        "thresholds that turn the ranking into classes.</p>"
    ),
}


def project_title(kind: str, prefix: str = "") -> str:
    """Title of one of the three projects, e.g. ``"slicerank Rank"`` (``prefix`` goes in front)."""
    if kind not in KINDS:
        raise ValueError(f"project kind {kind!r} is not one of {KINDS}")
    return f"{prefix}slicerank {kind}"


def label_config(kind: str) -> str:
    """The XML label config of a project kind, read from the files beside this module."""
    return resources.files("ls_config").joinpath(CONFIG_FILES[kind]).read_text()


def local_file_url(path: str, media_root: str | os.PathLike, document_root: str | os.PathLike):
    """URL under which Label Studio serves ``path`` (relative to the media root) as a local file."""
    return LocalFiles.below(media_root, document_root).url(path)


def find_project(client, title: str):
    """The project with exactly this title, or ``None``."""
    for project in client.projects.list():
        if project.title == title:
            return project
    return None


def find_projects(
    client, prefix: str = "", *, prefer: dict[str, int] | None = None
) -> dict[str, int]:
    """Ids of the provisioned projects by kind; raises ``LookupError`` naming any that is missing,
    or a title several projects share (a copy, a colleague's test) unless ``prefer`` (kind ->
    id, e.g. the ids a scheduler's log is pinned to) names one of them: never a silent pick."""
    titles = {project_title(kind, prefix): kind for kind in KINDS}
    found: dict[str, list[int]] = {}
    for project in client.projects.list():
        if project.title in titles:
            found.setdefault(titles[project.title], []).append(project.id)
    missing = [project_title(k, prefix) for k in KINDS if k not in found]
    if missing:
        raise LookupError(f"Label Studio has no project titled {missing}; run slicerank provision")
    chosen = {}
    for kind, ids in found.items():
        if len(ids) > 1 and (prefer or {}).get(kind) not in ids:
            raise LookupError(
                f"Label Studio has {len(ids)} projects titled {project_title(kind, prefix)!r} "
                f"(ids {sorted(ids)}); rename or delete the copies so that one is left"
            )
        chosen[kind] = (prefer or {}).get(kind) if len(ids) > 1 else ids[0]
    return chosen


@dataclass
class ProvisionReport:
    """What one provisioning run did: ``actions`` lists every change; empty means nothing changed."""

    projects: dict[str, int] = field(default_factory=dict)
    actions: list[str] = field(default_factory=list)
    classify_tasks_imported: int = 0

    def to_json(self) -> dict:
        """A JSON-ready summary."""
        return {
            "projects": self.projects,
            "actions": self.actions,
            "classify_tasks_imported": self.classify_tasks_imported,
            "changed": bool(self.actions),
        }


def _ensure_project(client, kind: str, prefix: str, report: ProvisionReport) -> int:
    title = project_title(kind, prefix)
    wanted = {
        "label_config": label_config(kind),
        "expert_instruction": INSTRUCTIONS[kind],
        "show_instruction": True,
        "show_skip_button": kind != CLASSIFY,
        "maximum_annotations": 1,
    }
    project = find_project(client, title)
    if project is None:
        project = client.projects.create(title=title, **wanted)
        report.actions.append(f"created project {title!r}")
        return project.id
    project = client.projects.get(project.id)
    changed = {
        key: value
        for key, value in wanted.items()
        if (getattr(project, key, None) or "") != (value or "")
        and not (key == "label_config" and _same_xml(project.label_config, value))
    }
    if changed:
        client.projects.update(project.id, **changed)
        report.actions.append(f"updated project {title!r}: {sorted(changed)}")
    return project.id


def _same_xml(a: str | None, b: str) -> bool:
    return " ".join((a or "").split()) == " ".join(b.split())


def _ensure_storage(client, project_id: int, path: Path, title: str, report: ProvisionReport):
    for storage in client.import_storage.local.list(project=project_id):
        if Path(storage.path or "").resolve() == path:
            return
    client.import_storage.local.create(
        project=project_id,
        path=str(path),
        title=title,
        use_blob_urls=False,
        regex_filter=".*\\.png$",
    )
    report.actions.append(f"created Local Files storage {path} on project {project_id}")


def _ensure_webhook(client, project_id: int, url: str, secret: str, report: ProvisionReport):
    # Label Studio clears a webhook's actions on an update without them: always send them all.
    fields = {
        "url": url,
        "actions": sorted(WEBHOOK_ACTIONS),
        "headers": {SECRET_HEADER: secret},
        "is_active": True,
        "send_payload": True,
        "send_for_all_actions": False,
    }
    for hook in client.webhooks.list(project=project_id):
        if hook.project != project_id or not hook.url.startswith(url.rsplit(WEBHOOK_PATH, 1)[0]):
            continue
        same = (
            hook.url == url
            and sorted(hook.actions or []) == fields["actions"]
            and (hook.headers or {}) == fields["headers"]
            and hook.is_active
            and hook.send_payload
            and not hook.send_for_all_actions
        )
        if not same:
            client.webhooks.update(hook.id, **fields)
            # The secret itself never goes into logs or the report.
            report.actions.append(f"updated webhook {url} on project {project_id}")
        return
    client.webhooks.create(project=project_id, **fields)
    report.actions.append(f"created webhook {url} on project {project_id}")


def ensure_ml_backend(
    client,
    project_id: int,
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    attempts: int = 4,
    report: ProvisionReport | None = None,
) -> dict:
    """Register the ML backend at ``url`` on a project once; returns ``{"id", "url", "created"}``.

    ``auth`` is the backend's HTTP basic-auth (user, password), which Label Studio then sends
    with every call. Label Studio calls the backend's ``/health`` and ``/setup`` while
    registering it and gives ``/setup`` about 3 s; a backend's first ``/setup`` loads its newest
    model and can take longer on a busy machine, later calls hit its cache: hence the retries.
    """
    from label_studio_sdk.core.api_error import ApiError

    for backend in client.ml.list(project=project_id):
        if backend.url.rstrip("/") == url.rstrip("/"):
            return {"id": backend.id, "url": url, "created": False}
    kwargs = {}
    if auth:
        kwargs = {
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": auth[0],
            "basic_auth_pass": auth[1],
        }
    for attempt in range(1, attempts + 1):
        try:
            created = client.ml.create(
                project=project_id,
                url=url,
                title="slicerank CNN",
                is_interactive=False,
                auto_update=True,
                **kwargs,
            )
            break
        except ApiError as exc:
            if attempt == attempts:
                body = exc.body
                detail = body.get("validation_errors") if isinstance(body, dict) else None
                raise ValueError(
                    f"Label Studio could not register the ML backend {url}: {detail or body}; "
                    "start the backend first (slicerank backend), check BASIC_AUTH_USER/"
                    "BASIC_AUTH_PASS match the backend's, or leave out --backend-url"
                ) from None
            time.sleep(2.0)
    if report is not None:
        report.actions.append(f"registered ML backend {url} on project {project_id}")
    return {"id": created.id, "url": url, "created": True, "attempts": attempt}


def existing_task_image_ids(client, project_id: int) -> set[str]:
    """``data.image_id`` of every task already in a project."""
    ids = set()
    for task in client.tasks.list(project=project_id, page_size=500):
        image_id = (task.data or {}).get("image_id")
        if image_id is not None:
            ids.add(str(image_id))
    return ids


def classify_task(row: dict, media_root, document_root) -> dict:
    """Task data for one manifest row in the Classify project."""
    return {
        "image": local_file_url(row["path"], media_root, document_root),
        "image_id": str(row["image_id"]),
        "scan_id": str(row["scan_id"]),
    }


def provision(
    client,
    *,
    media_root: str | os.PathLike,
    manifest_rows: list[dict],
    scheduler_url: str | None,
    secret: str | None,
    backend_url: str | None = None,
    backend_auth: tuple[str, str] | None = None,
    document_root: str | os.PathLike | None = None,
    prefix: str = "",
    seed: int = 0,
) -> ProvisionReport:
    """Create or update everything in Label Studio for one media root; returns what changed.

    ``manifest_rows`` are the rows of the media root's ``manifest.csv`` (``image_id``, ``scan_id``,
    ``path`` at least). ``backend_auth`` is the ML backend's basic-auth (user, password), if it
    has one. Classify tasks are imported in an order shuffled with ``seed`` so raters
    never see a scan's stack in order; images already present (by ``image_id``) are skipped.
    """
    # The storage path and every task URL come from one pair of folders (local_files.py).
    files = LocalFiles.below(media_root, document_root)
    media_root, document_root = files.media_root, files.document_root
    if scheduler_url and not secret:
        raise ValueError("a scheduler URL needs the shared secret (SCHEDULER_SECRET) for webhooks")
    for i, row in enumerate(manifest_rows):
        missing = [k for k in ("image_id", "scan_id", "path") if not row.get(k)]
        if missing:
            raise ValueError(f"manifest row {i + 1} has no {missing}")
    report = ProvisionReport()
    for kind in KINDS:
        pid = _ensure_project(client, kind, prefix, report)
        report.projects[kind] = pid
        _ensure_storage(client, pid, media_root, f"slicerank media {kind}", report)
        if scheduler_url and kind in (RANK, BOUNDARY):
            url = scheduler_url.rstrip("/") + WEBHOOK_PATH
            _ensure_webhook(client, pid, url, secret, report)
    if backend_url:
        ensure_ml_backend(
            client, report.projects[CLASSIFY], backend_url, auth=backend_auth, report=report
        )

    present = existing_task_image_ids(client, report.projects[CLASSIFY])
    todo = [row for row in manifest_rows if str(row["image_id"]) not in present]
    random.Random(seed).shuffle(todo)
    tasks = [{"data": classify_task(row, media_root, document_root)} for row in todo]
    for start in range(0, len(tasks), 1000):
        client.projects.import_tasks(report.projects[CLASSIFY], request=tasks[start : start + 1000])
    if tasks:
        report.classify_tasks_imported = len(tasks)
        report.actions.append(f"imported {len(tasks)} Classify tasks")
    for action in report.actions:
        log.info("provision: %s", action)
    return report
