"""The Label Studio ML-backend HTTP contract, on FastAPI.

Label Studio 1.23 calls ``GET /health``, ``POST /setup`` (on connect; the answer's
``model_version`` is shown in the model settings), ``POST /predict`` (pre-annotations),
``POST /webhook`` with ``{"action": "START_TRAINING"}`` ("Start Training" in the model
settings; older servers post the annotations to ``POST /train``), ``GET /versions`` and
``POST /job_status``. The model logic is :class:`SliceClassifier`, shaped like the
label-studio-ml 2.x ``LabelStudioMLBase`` (``setup``, ``predict(tasks, context)``,
``fit(event, data)``); the app around it only does HTTP, auth and error mapping. Training never
runs inside a request: ``fit`` enqueues an RQ job and answers at once.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ml_backend.settings import BackendSettings, check_auth
from slicerank_base.bodylimit import BodyLimit

log = logging.getLogger(__name__)

#: What a Redis that is down or unreachable raises.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
#: Seconds ``/health`` waits for Redis to answer a ping.
HEALTH_PING_S = 0.5

#: Basic-auth credential parser (no auto error: the dependency answers 401 itself).
_BASIC = HTTPBasic(auto_error=False)
#: Largest project id accepted (Label Studio's ids are 32-bit database keys).
MAX_PROJECT_ID = 2**31 - 1
#: The object/control names the Classify project uses (ls_config/classify.xml).
IMAGE_OBJECT = "image"


#: Task data fields that key a slice (image, scan, place in the stack): plain scalars only.
TASK_KEYS = ("image_id", "scan_id", "slice_index")
#: Longest accepted value of a :data:`TASK_KEYS` string.
MAX_KEY_CHARS = 256


def task_problem(task: Any) -> str | None:
    """What is wrong with a posted task's shape (None when nothing): a JSON object whose
    ``data`` is an object and whose keying fields are short scalars. Image references are
    checked later, by :mod:`ml_backend.media`."""
    if not isinstance(task, dict):
        return f"a task must be a JSON object, not {type(task).__name__}"
    tid = task.get("id")
    if tid is not None and (isinstance(tid, bool) or not isinstance(tid, (int, str))):
        return f"task id {repr(tid)[:40]} must be an integer or a string"
    data = task.get("data")
    if not isinstance(data, dict):
        return f"task {repr(tid)[:40]}: 'data' must be a JSON object"
    for key in TASK_KEYS:
        value = data.get(key)
        ok = value is None or (
            isinstance(value, (int, float, str))
            and not isinstance(value, bool)
            and len(str(value)) <= MAX_KEY_CHARS
        )
        if not ok:
            return f"task {repr(tid)[:40]}: data.{key} must be a short string or number"
    return None


class SetupError(ValueError):
    """The project's labelling config cannot be served by this backend; says what to add."""


def parse_project_id(project: Any) -> int | None:
    """Label Studio sends the project as ``"<id>.<created timestamp>"``, an int or a dict.

    Raises ValueError for anything else (booleans, lists, negative or oversized ids).
    """
    if isinstance(project, dict):
        project = project.get("id")
    if project is None or project == "":
        return None
    shown = repr(project)[:60]
    if isinstance(project, bool) or not isinstance(project, (int, str)):
        raise ValueError(f"project {shown} is not a Label Studio project id")
    text = str(project).split(".", 1)[0]
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise ValueError(f"project {shown} is not a Label Studio project id")
    value = int(text)
    if not 0 < value <= MAX_PROJECT_ID:
        raise ValueError(f"project {shown} is not a Label Studio project id (1..{MAX_PROJECT_ID})")
    return value


def check_label_config(schema: Any) -> tuple[str, str, str]:
    """Find the class choice in a labelling config: (control name, image name, image value key).

    Raises :class:`SetupError` naming exactly what the config lacks.
    """
    if not isinstance(schema, str):
        raise SetupError(f"the labelling config must be an XML string, not {type(schema).__name__}")
    return _check_label_config(schema)


@functools.lru_cache(maxsize=32)
def _check_label_config(schema: str) -> tuple[str, str, str]:
    from label_studio_sdk.label_interface import LabelInterface
    from label_studio_sdk.label_interface.control_tags import ChoicesTag

    from slicerank_base import CLASSES

    try:
        interface = LabelInterface(schema)
    except Exception as exc:
        raise SetupError(f"the labelling config is not valid XML ({exc})") from None
    controls = [c for c in interface.controls if isinstance(c, ChoicesTag)]
    if not controls:
        raise SetupError(
            'the labelling config has no <Choices> tag: add <Choices name="slice_class" '
            'toName="image" choice="single"> with choices too_basal, lv, too_apical'
        )
    control = next((c for c in controls if c.name == "slice_class"), controls[0])
    missing = [c for c in CLASSES if c not in (control.labels or [])]
    if missing:
        raise SetupError(
            f'<Choices name="{control.name}"> lacks the choice value(s) {", ".join(missing)}: '
            'add <Choice value="..."/> for each of too_basal, lv, too_apical'
        )
    to_name = control.to_name[0]
    obj = interface.get_object(to_name)
    if obj.tag.lower() != "image":
        raise SetupError(
            f'<Choices name="{control.name}"> must point toName at an <Image>, not <{obj.tag}>'
        )
    return control.name, to_name, obj.value.lstrip("$")


class SliceClassifier:
    """The backend's model, in the label-studio-ml 2.x shape."""

    def __init__(
        self, settings: BackendSettings, *, redis_conn: Any = None, device: str = "cpu"
    ) -> None:
        from ml_backend.predictor import PredictorCache
        from ml_backend.registry import ModelRegistry

        self.settings = settings
        self.registry = ModelRegistry(settings.model_dir)
        self.cache = PredictorCache(self.registry, device=device, pinned=settings.model_version)
        self.redis = redis_conn
        self._manifest: dict[str, str] | None = None
        # A scan's slices are decoded together when the scan is known (issue 11).
        from ml_backend.scan_predict import ScanPredictions

        self.scans = ScanPredictions(settings.media_root)

    # -- label-studio-ml 2.x API ------------------------------------------------------------
    def setup(self, schema: str | None = None) -> dict[str, Any]:
        """Check the project's config (if sent) and report the served model version."""
        if schema:
            check_label_config(schema)
        version = self.cache.wanted()
        return {
            "model_version": version.name if version else "",
            "model_class": type(self).__name__,
        }

    def predict(
        self, tasks: list[dict[str, Any]], context: Any = None, label_config: str | None = None
    ) -> dict[str, Any]:
        """Predictions for ``tasks`` (one per task, same order), or a clear 'no model yet'."""
        from ml_backend.data import MissingImageError
        from ml_backend.media import ImageRefError

        from_name, to_name, value = "slice_class", IMAGE_OBJECT, "image"
        if label_config:
            from_name, to_name, value = check_label_config(label_config)
        predictor = self.cache.get()
        if predictor is None:
            return {
                "results": [],
                "model_version": None,
                "message": "no trained model yet: start training from Label Studio's model "
                "settings or run `slicerank train`",
            }
        results, skipped = predictor.predict_tasks(
            tasks, media_root=self.settings.media_root, manifest=self._get_manifest(),
            label_studio_url=self.settings.label_studio_url,
            api_key=self.settings.label_studio_api_key, value=value, from_name=from_name,
            to_name=to_name, scans=self.scans,
        )  # fmt: skip
        if tasks and len(skipped) == len(tasks):
            # Nothing to serve: the request fails with the first task's reason, as a whole.
            first = skipped[0]
            raise (ImageRefError if first["error"] == "ImageRefError" else MissingImageError)(
                first["reason"]
            )
        out: dict[str, Any] = {"results": results, "model_version": predictor.version}
        if skipped:
            # The others are served; each skipped task gets no prediction ([]) and a reason.
            for item in skipped[:20]:
                log.warning("/predict skipped task %s: %s", item["task"], item["reason"])
            out["skipped"] = [{k: x[k] for k in ("task", "reason")} for x in skipped]
        return out

    def fit(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Start training on ``START_TRAINING`` (enqueue only); other events are ignored."""
        from ml_backend.jobs import TrainRequest, enqueue_training

        if event != "START_TRAINING":
            return {"status": "ignored", "event": event}
        project_id = parse_project_id(data.get("project"))
        if project_id is None:
            raise ValueError("START_TRAINING without a project id")
        if self.redis is None:
            raise RuntimeError("no Redis connection: set REDIS_URL")
        request = TrainRequest(
            label_source=self.settings.label_source,
            project_id=project_id,
            consensus_path=str(self.settings.consensus_path)
            if self.settings.consensus_path
            else None,
            preset=self.settings.preset,
            media_root=str(self.settings.media_root) if self.settings.media_root else None,
            model_dir=str(self.settings.model_dir),
            # The backend's own device is for inference; the worker picks the training one.
            device="auto",
        )
        result = enqueue_training(
            self.redis,
            request,
            queue_name=self.settings.queue_name,
            job_timeout=self.settings.job_timeout,
        )
        return {
            "job": result.job_id,
            "created": result.created,
            "status": result.status,
            "message": result.message,
        }

    def _get_manifest(self) -> dict[str, str] | None:
        from ml_backend.data import read_manifest_paths

        root = self.settings.media_root
        if self._manifest is None and root is not None and (Path(root) / "manifest.csv").is_file():
            self._manifest = read_manifest_paths(Path(root))
        return self._manifest


def create_app(
    settings: BackendSettings, *, redis_conn: Any = None, device: str = "cpu"
) -> FastAPI:
    """The FastAPI app serving ``settings`` (Redis connection and device passed in)."""
    from ml_backend.data import MissingImageError
    from ml_backend.media import ImageRefError
    from ml_backend.registry import UnknownVersionError

    # Refuse to build an unauthenticated app unless the development flag says so.
    check_auth(settings)
    model = SliceClassifier(settings, redis_conn=redis_conn, device=device)
    redis_state = RedisState(redis_conn, settings.redis_url)
    expected = _digest(settings.basic_auth_user, settings.basic_auth_pass)

    def authenticate(
        credentials: Annotated[HTTPBasicCredentials | None, Depends(_BASIC)],
    ) -> None:
        if settings.dev_no_auth and not settings.basic_auth_user:
            return
        given = _digest(credentials.username, credentials.password) if credentials else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "basic auth required", headers={"WWW-Authenticate": "Basic"})

    # The interactive docs and the schema are served behind the same auth as the API.
    app = FastAPI(title="slicerank ML backend", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model = model
    # Every endpoint's body is capped, from Content-Length and while it streams in.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # Everything but the health check needs the basic-auth credentials when they are set; the
    # health check reveals nothing and container health probes cannot send credentials.
    api = APIRouter(dependencies=[Depends(authenticate)])

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, RecursionError):
            # RecursionError: nesting deeper than the JSON parser goes (an attack, not a task).
            raise HTTPException(400, "request body is not JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "request body must be a JSON object")
        return data

    @app.exception_handler(SetupError)
    async def _setup_error(_: Request, exc: SetupError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    @app.get("/")
    def health() -> dict[str, Any]:
        """Label Studio's health check: "UP", or "DEGRADED" naming what is down (always 200:
        predictions still work without Redis, and Label Studio would disconnect on an error)."""
        problem = redis_state.check()
        if problem:
            return {"status": "DEGRADED", "model_class": type(model).__name__,
                    "down": {"redis": problem}}  # fmt: skip
        return {"status": "UP", "model_class": type(model).__name__}

    @api.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        """Validate the project's config; report the model version."""
        data = await body(request)
        return model.setup(data.get("schema"))

    @api.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """Pre-annotations for the posted tasks."""
        data = await body(request)
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise HTTPException(400, "'tasks' must be a list of Label Studio tasks")
        if len(tasks) > settings.predict_max_tasks:
            raise HTTPException(
                413,
                f"{len(tasks)} tasks in one /predict request; at most {settings.predict_max_tasks} "
                "(SLICERANK_PREDICT_MAX_TASKS): select fewer tasks in Label Studio's Data Manager",
            )
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise HTTPException(400, "'params' must be a JSON object")
        context = params.get("context")
        for task in tasks:
            problem = task_problem(task)
            if problem:
                raise HTTPException(400, problem)
        try:
            return await _run(model.predict, tasks, context, data.get("label_config"))
        except ImageRefError as exc:
            raise HTTPException(400, str(exc)) from None
        except (MissingImageError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from None

    @api.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        """Label Studio webhooks; START_TRAINING enqueues a training job."""
        data = await body(request)
        action = data.get("action")
        if not action:
            raise HTTPException(400, "webhook body has no 'action'")
        return _fit_response(action, data)

    @api.post("/train")
    async def train(request: Request) -> JSONResponse:
        """The older training call (LS posts all annotations); enqueues like START_TRAINING."""
        data = await body(request)
        return _fit_response("START_TRAINING", data)

    def _fit_response(action: str, data: dict[str, Any]) -> JSONResponse:
        try:
            out = model.fit(action, data)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except RuntimeError as exc:
            raise HTTPException(503, str(exc)) from None
        except REDIS_DOWN as exc:
            raise HTTPException(503, redis_state.down(exc)) from None
        code = 201 if out.get("created") else 200
        return JSONResponse(out, status_code=code)

    @api.get("/versions")
    def versions() -> dict[str, Any]:
        """Registered versions, newest first, with their label source and test metrics."""
        items = list(reversed(model.registry.versions()))
        details = []
        for v in items:
            metrics = v.read_json("metrics")
            details.append({"name": v.name, **v.info, "test": metrics.get("test", {})})
        return {"versions": [v.name for v in items], "details": details}

    @api.post("/job_status")
    async def job_status(request: Request) -> dict[str, Any]:
        """Status and progress of a training job (``{"job": id}``)."""
        from rq.exceptions import NoSuchJobError

        from ml_backend.jobs import job_summary

        data = await body(request)
        if model.redis is None:
            raise HTTPException(503, "no Redis connection: set REDIS_URL")
        try:
            return job_summary(model.redis, str(data.get("job")))
        except NoSuchJobError:
            raise HTTPException(404, f"no training job {data.get('job')!r}") from None
        except REDIS_DOWN as exc:
            raise HTTPException(503, redis_state.down(exc)) from None

    @app.exception_handler(UnknownVersionError)
    async def _unknown_version(_: Request, exc: UnknownVersionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @api.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        """The OpenAPI schema (authenticated)."""
        from fastapi.openapi.utils import get_openapi

        return get_openapi(title=app.title, version=app.version, routes=app.routes)

    @api.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The interactive API docs (authenticated)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    app.include_router(api)
    return app


class RedisState:
    """Whether the training queue's Redis answers, for ``/health`` and the 503s; each change
    (down, back) is logged once, naming REDIS_URL."""

    def __init__(self, conn: Any, url: str) -> None:
        self.conn, self.url = conn, url
        self.problem: str | None = None
        self._probe = _quick_client(conn) if conn is not None else None

    def check(self) -> str | None:
        """Ping Redis; the problem in one line, or None when it answers (or none is set)."""
        if self._probe is None:
            return self._set("no Redis connection: set REDIS_URL")
        try:
            self._probe.ping()
        except REDIS_DOWN as exc:
            return self.down(exc)
        return self._set(None)

    def down(self, exc: BaseException) -> str:
        """The message for a Redis that failed with ``exc``."""
        from slicerank_base.reach import redact_url

        return self._set(
            f"Redis unreachable at {redact_url(self.url)} (REDIS_URL): {exc}; training cannot be "
            "queued until it is back (start Redis or fix REDIS_URL; predictions still work)"
        )

    def _set(self, problem: str | None) -> str | None:
        if problem != self.problem:
            if problem:
                log.warning("backend: %s", problem)
            elif self.problem:
                log.info("backend: Redis at REDIS_URL answers again")
            self.problem = problem
        return problem


def _quick_client(conn: Any) -> Any:
    """A client to the same Redis as ``conn`` that gives up within :data:`HEALTH_PING_S`:
    Label Studio waits 1 s for ``/health`` (ML_TIMEOUT_HEALTH) before it calls the backend
    broken, and a Redis host that drops packets would otherwise hold the answer for seconds."""
    import redis

    pool = getattr(conn, "connection_pool", None)
    if pool is None:  # not a redis-py client: ping it as it is
        return conn
    kwargs = {**pool.connection_kwargs, "socket_connect_timeout": HEALTH_PING_S,
              "socket_timeout": HEALTH_PING_S}  # fmt: skip
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    )


def _digest(user: str, password: str) -> bytes:
    # Hash both sides to one fixed length so the comparison's time says nothing about either.
    return hashlib.sha256(f"{len(user)}:{user}:{password}".encode()).digest()


async def _run(func, *args):
    # Inference is CPU/GPU bound: run it off the event loop so /health stays responsive.
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args)
