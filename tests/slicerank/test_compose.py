"""docker-compose.yml checked statically against the code it starts (no Docker engine here).

Data-driven: the commands are parsed with the real ``slicerank`` parser, and the environment
variables each slicerank service sets are compared with the names the packages' settings read
(every ``settings.py`` and every ``from_env``), so the check follows the code as it changes.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from slicerank.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PACKAGES = (
    "slicerank_base",
    "slicerank",
    "cmr_ingest",
    "ls_config",
    "ranking_scheduler",
    "ml_backend",
    "analysis",
)
SLICERANK_IMAGE_DEFAULT = "slicerank:"
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}")
SECRET_WORDS = ("PASSWORD", "SECRET", "API_KEY", "_PASS", "TOKEN")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def slicerank_services() -> dict[str, dict]:
    """The services that run the slicerank image (built from ./Dockerfile)."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if "build" in svc or SLICERANK_IMAGE_DEFAULT in str(svc.get("image", ""))
    }


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def mount(volume: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume, interpolations like ${A:-./b} included."""
    parts = volume.split(":")
    if parts[-1] in ("ro", "rw"):
        parts = parts[:-1]
    return ":".join(parts[:-1]), parts[-1]


def _is_environ(node: ast.AST) -> bool:
    """``os.environ``, ``environ`` or ``env`` (the mapping ``from_env`` functions receive)."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name in ("environ", "env", "environment")


def settings_env_names(package: str) -> set[str]:
    """Environment variable names a package reads.

    Upper-case string constants in its ``settings.py`` modules and ``from_env`` bodies, plus
    every ``environ.get("X")`` / ``environ["X"]`` / ``os.getenv("X")`` anywhere in it.
    """
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        if path.name == "settings.py":
            roots = [tree]
        else:
            roots = [
                node
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name == "from_env"
            ]
        for root in roots:
            for node in ast.walk(root):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and ENV_NAME.match(node.value)
                ):
                    names.add(node.value)
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr == "get"
                    and _is_environ(func.value)
                    or getattr(func, "attr", getattr(func, "id", "")) == "getenv"
                ):
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and _is_environ(node.value):
                key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
    return names


def command_package(argv: list[str]) -> str:
    """The top-level package whose handler runs ``slicerank <argv>``."""
    args = build_parser().parse_args(argv)
    func = getattr(args, "func", None)
    assert func is not None, f"'slicerank {' '.join(argv)}' selects no handler"
    return func.__module__.split(".")[0]


def resolved_config(tmp_path) -> dict:
    """``docker-compose config`` with .env.example's values and long dummy secrets."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (scripts/setup.sh installs it)")
    env = {
        # A different dummy per secret: the scheduler refuses one value for two credentials.
        k: v or "x" * 24 + k.lower()
        for k, v in env_example().items()
        if v or any(w in k for w in SECRET_WORDS)
    }
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    result = subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file),
         "--profile", "setup", "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_config_is_valid_with_the_example_settings(tmp_path):
    resolved = resolved_config(tmp_path)
    assert set(resolved["services"]) >= {
        "db", "redis", "label-studio", "scheduler", "backend", "worker", "provision"
    }  # fmt: skip


def test_settings_accept_the_environment_each_service_gets(tmp_path):
    """Every ``Settings.from_env`` of the service's package parses the resolved environment."""
    import importlib
    import inspect

    resolved = resolved_config(tmp_path)["services"]
    checked = 0
    for name, svc in slicerank_services().items():
        package = command_package(svc["command"])
        env = {k: str(v) for k, v in (resolved[name].get("environment") or {}).items()}
        for path in (ROOT / package).rglob("settings.py"):
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and hasattr(cls, "from_env"):
                    settings = cls.from_env(env)  # raises ValueError naming a bad variable
                    if hasattr(settings, "require_secrets"):
                        settings.require_secrets()
                    checked += 1
    assert checked >= 3  # scheduler, backend and worker at least


def test_compose_refuses_to_start_without_secrets(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (scripts/setup.sh installs it)")
    empty = tmp_path / "env"
    empty.write_text("")
    result = subprocess.run(
        [
            exe,
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE),
            "--env-file",
            str(empty),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "in .env" in result.stderr


def image_default(image: str) -> str:
    """The image a service runs when .env names none: ``${X_IMAGE:-default}`` -> default."""
    match = re.fullmatch(r"\$\{([A-Z_]+_IMAGE):-([^}]+)\}", image)
    assert match, f"{image!r}: give the image as ${{NAME_IMAGE:-registry image}}"
    return match.group(2)


def test_label_studio_is_the_official_pinned_image_with_local_networking():
    ls = compose()["services"]["label-studio"]
    assert image_default(ls["image"]) == "heartexlabs/label-studio:1.23.2"
    env = ls["environment"]
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["DJANGO_DB"] == "default"
    assert env["POSTGRE_HOST"] == "db"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    # 1.23 refuses a Local Files storage on the document root itself: media goes below it.
    root = env["LOCAL_FILES_DOCUMENT_ROOT"].rstrip("/") + "/"
    media = [v for v in ls["volumes"] if mount(v)[1].startswith(root)]
    assert media, "the media folder must be mounted below LOCAL_FILES_DOCUMENT_ROOT"
    provision = compose()["services"]["provision"]["command"]
    assert provision[provision.index("--document-root") + 1] == env["LOCAL_FILES_DOCUMENT_ROOT"]
    assert provision[provision.index("--media-root") + 1] == mount(media[0])[1]


def test_label_studio_reads_every_variable_set_for_it():
    """Each variable is read by Label Studio 1.23 (with or without its LABEL_STUDIO_ prefix)."""
    label_studio = pytest.importorskip("label_studio")
    source = "\n".join(
        p.read_text(errors="replace")
        for p in Path(label_studio.__file__).parent.rglob("*.py")
        if "tests" not in p.parts
    )
    for name in compose()["services"]["label-studio"]["environment"]:
        short = name.removeprefix("LABEL_STUDIO_")
        assert f"'{name}'" in source or f"'{short}'" in source, f"Label Studio does not read {name}"


@pytest.mark.parametrize("service", sorted(slicerank_services()))
def test_service_command_is_a_real_subcommand(service):
    svc = slicerank_services()[service]
    command = svc["command"]
    assert isinstance(command, list), f"{service}: give the command as a list"
    args = build_parser().parse_args(command)  # exits (SystemExit) on an unknown flag
    assert getattr(args, "func", None), f"{service}: 'slicerank {command[0]}' has no handler"
    port = getattr(args, "port", None)
    if port is not None:
        targets = [str(p).rsplit(":", 1)[-1] for p in svc.get("ports", [])]
        assert str(port) in targets, f"{service}: --port {port} is not published ({targets})"
        check = " ".join(svc["healthcheck"]["test"])
        url = re.search(r"https?://[^'\"\s]+", check).group(0)
        assert urlparse(url).port == port, f"{service}: health check {url} misses --port {port}"


@pytest.mark.parametrize("service", sorted(slicerank_services()))
def test_service_environment_is_read_by_the_settings(service):
    svc = slicerank_services()[service]
    package = command_package(svc["command"])
    # A service uses its own package's settings and the shared Label Studio client settings.
    readable = set()
    for pkg in {package, "ls_config", "slicerank"}:
        readable |= settings_env_names(pkg)
    if package != "slicerank" and not settings_env_names(package):
        pytest.fail(f"{service}: package {package} has no settings.py / from_env to check against")
    unknown = sorted(set(svc.get("environment", {})) - readable)
    assert not unknown, f"{service} ({package}) sets variables nothing reads: {unknown}"


def test_services_reach_each_other_on_the_ports_they_listen_on():
    services = compose()["services"]
    listens = {}
    for name, svc in slicerank_services().items():
        args = build_parser().parse_args(svc["command"])
        if getattr(args, "port", None):
            listens[name] = args.port
    listens["label-studio"] = 8080
    listens["redis"] = 6379
    listens["db"] = 5432
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            for match in re.finditer(r"(?:https?|redis|postgresql\+psycopg)://[^\s]+", str(value)):
                url = urlparse(match.group(0).replace("${", "").replace("}", ""))
                host = url.hostname
                if host in listens:
                    assert url.port == listens[host], f"{name}.{key} -> {host}:{url.port}"


def test_every_setting_is_documented_and_no_secret_is_committed():
    text = COMPOSE.read_text()
    used = set(INTERPOLATION.findall(text))
    documented = env_example()
    missing = sorted(used - set(documented))
    assert not missing, f".env.example lacks {missing}"
    for name in used:
        if any(w in name for w in SECRET_WORDS):
            assert documented[name] == "", f".env.example must not hold a value for {name}"
            assert re.search(r"\$\{" + name + r":\?", text), f"{name} must be required (:?)"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for idx, line in enumerate(lines):
        if line and not line.startswith("#"):
            key = line.split("=", 1)[0]
            assert idx and lines[idx - 1].startswith("#"), f".env.example: {key} has no comment"


def test_gpu_worker_reserves_one_nvidia_gpu_and_shares_redis_and_models():
    services = compose()["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["MODEL_DIR"] == services["backend"]["environment"]["MODEL_DIR"]
    model_vol = {mount(v) for v in worker["volumes"]} & {
        mount(v) for v in services["backend"]["volumes"]
    }
    model_dir = worker["environment"]["MODEL_DIR"]
    assert any(t == model_dir for _, t in model_vol), "backend and worker must share MODEL_DIR"
    for name, svc in services.items():
        if name not in ("db", "db-init"):
            assert "healthcheck" in svc or svc.get("restart") == "no", f"{name}: no health check"


OFFLINE_IMAGES = ROOT / "docker" / "debian" / "images.env"
DOCKERFILE = ROOT / "Dockerfile"


def test_every_image_defaults_to_the_registry_and_has_an_offline_build():
    """Registry images by default; each can be swapped for one `make images-offline` builds."""
    offline = {}
    for line in OFFLINE_IMAGES.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            offline[key] = value
    names = {}
    for name, svc in compose()["services"].items():
        variable = re.fullmatch(r"\$\{([A-Z_]+):-[^}]+\}", svc["image"])
        assert variable, f"{name}: image {svc['image']!r} cannot be swapped through .env"
        image_default(svc["image"])
        names[name] = variable.group(1)
    assert set(names.values()) == set(offline), (names, offline)
    script = (ROOT / "scripts" / "images-offline.sh").read_text()
    for variable in offline:
        assert f'build "${variable}"' in script, f"images-offline.sh does not build {variable}"


def test_offline_dockerfiles_start_from_the_debian_base_only():
    """No registry: every offline image is FROM the debootstrap base the script imports."""
    files = [DOCKERFILE, *sorted((ROOT / "docker" / "debian").glob("*/Dockerfile"))]
    assert len(files) == 4
    script = (ROOT / "scripts" / "images-offline.sh").read_text()
    assert "BASE_IMAGE=$BASE" in script and "debootstrap" in script
    for path in files:
        froms = re.findall(r"^FROM\s+(\S+)", path.read_text(), re.M)
        assert froms == ["${BASE_IMAGE}"], f"{path}: FROM {froms} (only the BASE_IMAGE argument)"


def test_docker_build_context_holds_everything_the_dockerfile_copies():
    """The .dockerignore allow-list lets in every folder the Dockerfile copies."""
    allowed = {
        line[1:].strip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE.read_text(), re.M)
    sources = {src.strip("/") for line in copied for src in line.split()}
    assert sources, "no COPY in the Dockerfile"
    assert sources <= allowed, f".dockerignore leaves out {sorted(sources - allowed)}"
    # And every package setuptools installs (pyproject's include list).
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include}
    assert packages <= sources, f"the Dockerfile does not copy {sorted(packages - sources)}"


def test_cpu_worker_is_the_gpu_worker_without_the_gpu(tmp_path):
    resolved = resolved_config(tmp_path)["services"]
    gpu, cpu = resolved["worker"], resolved["worker-cpu"]
    assert gpu["deploy"]["replicas"] == 1 and cpu["deploy"]["replicas"] == 0  # GPU by default
    assert "resources" not in cpu["deploy"], "the CPU worker must reserve no GPU"
    assert gpu["environment"].pop("SLICERANK_DEVICE") == "cuda"
    assert cpu["environment"].pop("SLICERANK_DEVICE") == "cpu"
    for key in set(gpu) | set(cpu):
        if key != "deploy":
            assert gpu.get(key) == cpu.get(key), f"worker and worker-cpu differ in {key}"


def test_host_ca_certificates_beyond_mozillas_are_the_extra_ones():
    import importlib.util

    spec = importlib.util.spec_from_file_location("host_ca", ROOT / "scripts" / "host_ca_certs.py")
    host_ca = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_ca)

    def pem(body: str) -> str:
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"

    bundle = "\n".join([pem("AAAA"), pem("  PROXY  "), pem("BBBB"), pem("PROXY")])
    known = host_ca.certificates(pem("AAAA") + pem("BBBB"))
    assert host_ca.extra_certificates(bundle, known) == [pem("PROXY")]
    assert host_ca.extra_certificates(bundle, host_ca.certificates(bundle)) == []


def test_health_checks_survive_podmans_docker_api():
    """An exec-form argument with a space is split by podman 4.3's Docker API (the check then
    runs `python -c import` and fails for ever): such checks go through CMD-SHELL."""
    for name, svc in compose()["services"].items():
        test = (svc.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            spaced = [arg for arg in test[1:] if " " in arg]
            assert not spaced, f"{name}: exec-form health check argument with spaces {spaced}"


def test_label_studio_accepts_the_scheduler_webhook_url():
    """Label Studio validates a webhook URL with Django's URLValidator, which refuses a host
    name without a dot (``http://scheduler:8700``): provisioning failed on the first webhook."""
    validators = pytest.importorskip("django.core.validators")
    from django.core.exceptions import ValidationError

    services = compose()["services"]
    command = services["provision"]["command"]
    url = command[command.index("--scheduler-url") + 1]
    try:
        validators.URLValidator()(url + "/webhook")
        refused = False
    except ValidationError:
        refused = True  # its message needs Django's settings to print
    assert not refused, f"Label Studio refuses the webhook URL {url}/webhook: use a dotted host"
    host, port = urlparse(url).hostname, urlparse(url).port
    scheduler = services["scheduler"]
    assert host in scheduler["networks"]["default"]["aliases"], f"{host} names no service"
    assert port == build_parser().parse_args(scheduler["command"]).port
