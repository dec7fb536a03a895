"""The Dockerfile and compose.yaml kept honest without building anything: the base image is an
argument, the commands they run exist in the CLI, every XACTHUC_* name is a real setting and
the stack's settings load. Building and running the image is scripts/container/check.sh
(minutes; not part of the test suite)."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from xacthuc.cli.main import parser
from xacthuc.server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {f"XACTHUC_{name.upper()}" for name in Settings.model_fields}


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), " ".join(rest.split())))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def one(dockerfile: list[tuple[str, str]], keyword: str) -> str:
    found = [args for k, args in dockerfile if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def env_of(dockerfile: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in dockerfile:
        if keyword == "ENV":
            for pair in args.split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def substituted(value: str) -> str:
    """A compose value with ${VAR:-default} and ${VAR} as they are with nothing set."""
    return re.sub(r"\$\{[A-Za-z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def test_the_base_image_is_an_argument_with_the_public_default(
    dockerfile: list[tuple[str, str]],
) -> None:
    assert dockerfile[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    froms = [args for k, args in dockerfile if k == "FROM"]
    assert len(froms) == 2
    # Both stages on the same base: the venv built in the first runs on the second's python.
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in froms), froms


def test_the_image_copies_every_source_root_and_ships_no_tests() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = {
        part.rstrip("/")
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for part in line.split()[1:-1]
    }
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert set(wheel["targets"]["wheel"]["sources"]) <= copied
    assert {"pyproject.toml", "constraints.txt", "README.md", "LICENSE"} <= copied
    assert all((ROOT / path).exists() for path in copied), copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"tests", "benchmarks", ".venv", ".git"} <= set(ignored)


def test_the_image_runs_as_a_non_root_user_and_group(dockerfile: list[tuple[str, str]]) -> None:
    uid, _, gid = one(dockerfile, "USER").partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    created = " ".join(args for k, args in dockerfile if k == "RUN")
    assert f"--uid {uid}" in created
    assert f"--gid {gid}" in created


def test_entrypoint_and_cmd_are_the_cli_serving(dockerfile: list[tuple[str, str]]) -> None:
    entrypoint = json.loads(one(dockerfile, "ENTRYPOINT"))
    cmd = json.loads(one(dockerfile, "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["xacthuc"]
    assert "xacthuc" in scripts
    assert parser().parse_args(cmd).command == "serve"


def health_command(test: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """Parse a health check's exec form as the CLI would in the container; return its target."""
    assert test[:2] == ["CMD", "xacthuc"], test
    for name in [n for n in os.environ if n.startswith("XACTHUC_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = parser().parse_args(test[2:])  # built now: option defaults may read the environment
    assert args.command == "health"
    target: str = args.target
    return target


def test_the_healthcheck_is_the_cli_asking_the_port_served(
    dockerfile: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    check = one(dockerfile, "HEALTHCHECK")
    test = ["CMD", *json.loads(check.split(" CMD ", 1)[1])]
    env = env_of(dockerfile)
    port = env["XACTHUC_LISTEN"].rpartition(":")[2]
    assert health_command(test, env, monkeypatch) == f"127.0.0.1:{port}"
    assert f"EXPOSE {port}" in " ".join(f"{k} {a}" for k, a in dockerfile)


def test_every_xacthuc_name_in_the_dockerfile_is_a_setting(
    dockerfile: list[tuple[str, str]],
) -> None:
    named = set(re.findall(r"XACTHUC_[A-Z0-9_]*[A-Z0-9]", (ROOT / "Dockerfile").read_text()))
    # XACTHUC_HEALTH_* are `xacthuc health`'s own options, not the server's settings.
    assert {n for n in named if not n.startswith("XACTHUC_HEALTH_")} <= SETTINGS
    assert set(env_of(dockerfile)) - {"PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"} <= (
        SETTINGS
    )


def test_the_stack_is_xacthuc_redis_and_postgres_each_with_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"xacthuc", "migrate", "redis", "postgres"}
    assert all(
        s["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
        for name, s in services.items()
        if name != "migrate"  # a one-shot job
    )
    xacthuc = services["xacthuc"]
    assert xacthuc["build"]["context"] == "."
    assert substituted(xacthuc["build"]["args"]["BASE_IMAGE"]) == "python:3.11-slim"
    assert xacthuc["depends_on"]["redis"]["condition"] == "service_healthy"
    # The schema is migrated, by the same image, before xacthuc starts (it refuses another).
    migrate = services["migrate"]
    assert xacthuc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (migrate["image"], migrate["build"]) == (xacthuc["image"], xacthuc["build"])
    assert ["db", "migrate"] == migrate["command"]
    database = xacthuc["environment"]["XACTHUC_DATABASE_URL"]
    assert database == migrate["environment"]["XACTHUC_DATABASE_URL"]
    assert database.startswith("postgresql://xacthuc@postgres:5432/")
    # Only loopback: nothing of the dev stack is reachable from the network.
    assert all(
        str(p).startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", [])
    )
    # Redis without persistence (no RDB snapshot, no append-only file).
    command = services["redis"]["command"]
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    # PostgreSQL keeps its data in a named volume.
    volume = services["postgres"]["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_the_compose_healthcheck_asks_the_port_xacthuc_serves(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    xacthuc = compose["services"]["xacthuc"]
    env = {k: substituted(str(v)) for k, v in xacthuc["environment"].items()}
    port = env["XACTHUC_LISTEN"].rpartition(":")[2]
    assert health_command(xacthuc["healthcheck"]["test"], env, monkeypatch) == f"127.0.0.1:{port}"


def test_every_xacthuc_name_in_compose_is_a_setting_and_the_stack_loads(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    named = set(re.findall(r"XACTHUC_[A-Z0-9_]*[A-Z0-9]", (ROOT / "compose.yaml").read_text()))
    assert named <= SETTINGS, named - SETTINGS
    environment = compose["services"]["xacthuc"]["environment"]
    assert set(environment) <= SETTINGS
    # No secret committed: no setting that holds one has a value here.
    secret = {
        f"XACTHUC_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    }
    assert secret
    # The database URL may carry a password; here it carries none (trust on the stack's own
    # network).
    assert not (secret - {"XACTHUC_DATABASE_URL"}) & set(environment)
    assert None is urlsplit(environment["XACTHUC_DATABASE_URL"]).password
    for name in [n for n in os.environ if n.startswith("XACTHUC_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, substituted(str(value)))
    settings = Settings.load()  # the stack starts with one command: its settings are valid
    assert settings.mode.value == "dev"
    assert settings.store_url == "redis://redis:6379/0"
    assert not settings.store_url.startswith("memory")
    assert settings.database_url is not None


@pytest.mark.parametrize(
    "script", ["scripts/container/base-image.sh", "scripts/container/check.sh"]
)
def test_the_container_scripts_are_executable(script: str) -> None:
    assert os.access(ROOT / script, os.X_OK)
