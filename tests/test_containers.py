"""Containerfile and compose.yaml, checked without a container engine: nothing is built or started.

The compose file must follow the compose specification (the JSON schema that check-jsonschema
vendors), every container of the project's image must run a program that this project installs,
the image must be built in stages and run as a non-root user, and start-up order must rest on
healthchecks rather than on luck.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import shutil
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "Containerfile"
COMPOSE_FILE = ROOT / "compose.yaml"
VENV_BIN = Path(sys.executable).parent  # not resolved: the venv's bin/, not the base interpreter's

# Services that run without a healthcheck, and why. Each switches off the image's HTTP check.
WITHOUT_HEALTHCHECK = {
    "migrate": "a one-shot job; others wait for it to complete successfully, not to be healthy",
    "scheduler": "periodiq serves nothing and leaves no heartbeat to probe",
}
# For each console script: how to find the Python module its arguments name.
MODULE_ARGUMENT = {
    "dramatiq": lambda argv, env: argv[1],  # dramatiq BROKER-MODULE [MODULES...] [options]
    "periodiq": lambda argv, env: argv[1],  # periodiq BROKER-MODULE [MODULES...]
    "litestar": lambda argv, env: env["LITESTAR_APP"],  # litestar run / database upgrade read LITESTAR_APP
    "python": lambda argv, env: argv[argv.index("-m") + 1],  # python -m app.web.serve (the web app)
}
COMPILERS = re.compile(r"^(gcc|g\+\+|cc|clang|build-essential|node|nodejs|npm)(-[\d.]+)?$")


# --- Reading the files -------------------------------------------------------------------------


class Instruction:
    def __init__(self, keyword: str, arguments: str) -> None:
        self.keyword = keyword.upper()
        self.arguments = arguments

    def __repr__(self) -> str:
        return f"{self.keyword} {self.arguments}"


@cache
def containerfile() -> tuple[Instruction, ...]:
    """The instructions, with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append(Instruction(keyword, arguments.strip()))
        pending = ""
    return tuple(instructions)


def stages() -> list[list[Instruction]]:
    """The instructions of each build stage, from its FROM to the next."""
    found: list[list[Instruction]] = []
    for instruction in containerfile():
        if instruction.keyword == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def final_stage() -> list[Instruction]:
    return stages()[-1]


def image_environment() -> dict[str, str]:
    """ENV of the final stage (KEY=value pairs)."""
    env: dict[str, str] = {}
    for instruction in final_stage():
        if instruction.keyword == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(instruction.arguments))
    return env


def image_command() -> list[str]:
    commands = [instruction for instruction in final_stage() if instruction.keyword == "CMD"]
    assert commands, "the final stage has no CMD"
    return json.loads(commands[-1].arguments)  # exec form: a JSON array


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment:`, written as a mapping or as a list of KEY=value."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def project_services() -> list[str]:
    """The services that run the image built from the Containerfile."""
    return [name for name, service in services().items() if "build" in service]


@cache
def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(vendored.read_text(encoding="utf-8"))


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def programs(command: list[str]) -> list[list[str]]:
    """The argv of each program a command runs; `sh -c "a && exec b"` runs two."""
    if command[:2] == ["sh", "-c"]:
        steps = [shlex.split(step) for step in command[2].split("&&")]
        return [step[1:] if step[0] == "exec" else step for step in steps]
    return [command]


# --- (a) compose.yaml follows the compose specification ------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    errors = schema_errors(compose())
    assert not errors, "compose.yaml breaks the compose specification:\n" + "\n".join(errors)
    assert "version" not in compose(), "the compose specification has no `version:`; remove it"


def test_the_schema_check_catches_a_broken_compose_file() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["web"]["depends_on_typo"] = ["postgres"]
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert len(schema_errors(broken)) >= 2


# --- (b) every container of the project's image runs a program the project installs --------------


def test_the_project_image_runs_web_worker_and_scheduler() -> None:
    assert {"web", "worker", "scheduler"} <= set(project_services())


@pytest.mark.parametrize("name", project_services())
def test_service_command_runs_an_installed_program(name: str) -> None:
    service = services()[name]
    command = service.get("command", image_command())
    argvs = programs(shlex.split(command) if isinstance(command, str) else command)
    env = image_environment() | service_environment(service)
    for argv in argvs:
        program = argv[0]
        assert program in MODULE_ARGUMENT, f"{name} runs {program!r}, not one of the project's programs"
        assert shutil.which(program, path=str(VENV_BIN)), f"{program} is not installed in {VENV_BIN}"
        module = MODULE_ARGUMENT[program](argv, env).split(":")[0]
        assert importlib.util.find_spec(module) is not None, f"{name}: {program} names {module}, which is missing"


# --- (c) the Containerfile ----------------------------------------------------------------------


def test_image_is_built_in_stages() -> None:
    assert len(stages()) >= 2


def test_final_stage_runs_as_a_non_root_user() -> None:
    users = [instruction.arguments for instruction in final_stage() if instruction.keyword == "USER"]
    assert users, "the final stage has no USER, so it runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_final_stage_has_a_healthcheck() -> None:
    checks = [instruction.arguments for instruction in final_stage() if instruction.keyword == "HEALTHCHECK"]
    assert checks, "the final stage has no HEALTHCHECK"
    assert checks[-1].upper() != "NONE"
    assert "/health/live" in checks[-1]


def test_final_stage_installs_no_compiler_and_no_node() -> None:
    for instruction in final_stage():
        if instruction.keyword == "RUN":
            words = re.split(r"[\s;&|]+", instruction.arguments)
            found = [word for word in words if COMPILERS.match(word)]
            assert not found, f"the final stage installs {found}: {instruction}"


def test_image_serves_the_app_the_health_checks_ask() -> None:
    env = image_environment()
    assert env["LITESTAR_APP"] == "app.web.app:create_app"
    assert env["PORT"] == "8000"
    assert "/app/.venv/bin" in env["PATH"].split(":")


# --- (d) start-up order rests on healthchecks ------------------------------------------------------


@pytest.mark.parametrize("name", list(services()))
def test_every_dependency_has_a_condition(name: str) -> None:
    depends_on = services()[name].get("depends_on", {})
    assert isinstance(depends_on, dict), f"{name}: list-style depends_on waits only for a container to start"
    for dependency, rule in depends_on.items():
        assert dependency in services(), f"{name} depends on unknown service {dependency}"
        assert "condition" in rule, f"{name} -> {dependency} has no condition"
        if rule["condition"] == "service_healthy":
            assert dependency not in WITHOUT_HEALTHCHECK, f"{name} waits for {dependency} to be healthy, it never is"


@pytest.mark.parametrize("name", list(services()))
def test_every_service_has_a_healthcheck_or_a_reason(name: str) -> None:
    healthcheck = services()[name].get("healthcheck", {})
    if name in WITHOUT_HEALTHCHECK:
        # Otherwise it would inherit an image's check that cannot pass there.
        assert healthcheck.get("disable") is True, f"{name}: switch the healthcheck off explicitly"
    else:
        assert healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} switches its healthcheck off"


def test_services_without_healthcheck_exist() -> None:
    assert set(WITHOUT_HEALTHCHECK) <= set(services()), "WITHOUT_HEALTHCHECK names a service that is gone"


def test_nothing_waits_for_a_ready_web_app() -> None:
    """web's healthcheck is /health/ready, which needs a worker heartbeat: waiting on it would deadlock."""
    assert "/health/ready" in str(services()["web"]["healthcheck"]["test"])
    for name, service in services().items():
        rule = service.get("depends_on", {}).get("web", {})
        assert rule.get("condition") != "service_healthy", f"{name} waits for a healthy web, which waits for it"


# --- (e) every process of the image sees the same task results -----------------------------------


def artifact_directory(service: dict[str, Any]) -> str:
    """Where a container of the image keeps task results (settings.artifact_path)."""
    env = {**image_environment(), **service_environment(service)}
    return env.get("ARTIFACT_DIR") or f"{env['VAR_DIR']}/artifacts"


def named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, from a service's short-syntax `volumes:`."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, _, target = str(volume).partition(":")
        if source in (compose().get("volumes") or {}):
            mounts[target.split(":")[0]] = source
    return mounts


@pytest.mark.parametrize("name", ["web", "worker", "housekeeper"])
def test_web_worker_and_housekeeper_share_the_task_results(name: str) -> None:
    """The worker writes a result, web serves its download and the housekeeper purges it: without
    one volume under all three, a download finds no file (each container has its own filesystem)."""
    web = services()["web"]
    shared = named_mounts(web).get(artifact_directory(web))
    assert shared, f"web keeps task results at {artifact_directory(web)} on no named volume"
    service = services()[name]
    assert named_mounts(service).get(artifact_directory(service)) == shared, f"{name} does not mount {shared}"


def test_the_image_makes_the_results_directory_its_user_owns() -> None:
    """A new named volume takes the owner of the image's directory it is mounted on: without it, root."""
    runs = " ".join(i.arguments for i in final_stage() if i.keyword == "RUN")
    assert f"mkdir -p {artifact_directory({})}" in runs
    assert "chown -R app:app /app/var" in runs


# --- (f) the image itself, where a container engine runs -------------------------------------------


def container_engine() -> str | None:
    """docker or podman, when one is installed and its daemon (or podman's runtime) answers."""
    import subprocess

    for engine in ("podman", "docker"):
        if shutil.which(engine):
            answered = subprocess.run([engine, "info"], capture_output=True, timeout=30).returncode == 0
            if answered:
                return engine
    return None


@pytest.mark.embedded  # once per `make test`: the container runs in embedded mode
def test_the_image_builds_and_serves() -> None:
    """Build the Containerfile and start its default command: /health/live answers from the container.

    Skipped where no container engine answers (this machine may have a docker client and no daemon);
    never under CI=true when one does: then a failure to build is a failure.
    """
    import subprocess
    import time
    import uuid

    import httpx

    from tests.servers import free_port

    engine = container_engine()
    if engine is None:
        # Stated reason: the issue asks for the image to be built where a container runtime exists and skipped with a
        # clear message elsewhere, CI included (CI machines may have a docker client without a daemon).
        pytest.skip("no container engine answers here (`docker info` / `podman info` fail): the image is not built")
    tag = f"app-test:{uuid.uuid4().hex[:8]}"
    built = subprocess.run(
        [engine, "build", "-f", str(CONTAINERFILE), "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=1800
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    port = free_port()
    name = f"app-test-{uuid.uuid4().hex[:8]}"
    # Embedded mode in the container (no DATABASE_URL, no REDIS_URL), with a key: production refuses none.
    started = subprocess.run(
        [
            engine,
            "run",
            "-d",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{port}:8000",
            "-e",
            f"SECRET_KEY={uuid.uuid4().hex * 2}",
            tag,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            logs = subprocess.run([engine, "logs", name], capture_output=True, text=True).stdout
            assert time.monotonic() < deadline, f"the container never answered /health/live:\n{logs[-3000:]}"
            time.sleep(1)
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True)
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True)
