"""docker-compose.yml is not run in CI (no Docker engine), so check what can be checked without one: every package
its images install exists in the Debian release those images are built on, pg_cron is preloaded and created in the
database it runs jobs in, and its init steps plus the install service's commands succeed on Debian's PostgreSQL 15."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import ROOT, cli, run_sql

COMPOSE = ROOT / "docker-compose.yml"
RELEASE = "bookworm"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _dockerfile(service: dict[str, Any]) -> str:
    build = service.get("build") or {}
    text: str = build.get("dockerfile_inline", "")
    return text


def _base_image(service: dict[str, Any]) -> str:
    from_line = re.search(r"^FROM\s+(\S+)", _dockerfile(service), re.M)
    image: str = from_line.group(1) if from_line else service["image"]
    return image


def _apt_packages(text: str) -> list[str]:
    """Package names given to `apt-get install` anywhere in a Dockerfile or shell command."""
    packages: list[str] = []
    for match in re.finditer(r"apt-get install([^&;>|]*)", text.replace("\\\n", " ")):
        packages += [word for word in match.group(1).split() if not word.startswith("-")]
    return packages


def _service_texts() -> dict[str, str]:
    """Each service's Dockerfile plus its command, where apt-get may run."""
    out = {}
    for name, service in _compose()["services"].items():
        command = service.get("command") or []
        out[name] = _dockerfile(service) + "\n" + (command if isinstance(command, str) else " ".join(command))
    return out


def _host_release() -> str | None:
    os_release = Path("/etc/os-release")
    if not os_release.is_file():
        return None
    found = re.search(r"^VERSION_CODENAME=(\S+)", os_release.read_text(), re.M)
    return found.group(1) if found else None


def test_every_image_is_built_on_the_same_debian_release() -> None:
    for name, service in _compose()["services"].items():
        image = _base_image(service)
        assert image.endswith(f"-{RELEASE}"), f"service {name}: base image {image} is not pinned to {RELEASE}"


def test_postgresql_packages_match_the_server_major_version() -> None:
    postgres = _compose()["services"]["postgres"]
    major = re.search(r"postgres:(\d+)", _base_image(postgres))
    assert major is not None
    for package in _apt_packages(_dockerfile(postgres)):
        if package.startswith("postgresql-"):
            assert package.startswith(f"postgresql-{major.group(1)}-"), package


def test_every_package_installed_exists_in_that_debian_release() -> None:
    if _host_release() != RELEASE or shutil.which("apt-cache") is None:
        pytest.skip(f"needs a Debian {RELEASE} host to ask apt")
    if not any(Path("/var/lib/apt/lists").glob("*_Packages*")):
        pytest.skip("apt has no package lists here (run apt-get update)")
    packages = sorted({p for text in _service_texts().values() for p in _apt_packages(text)})
    assert packages, "no apt packages found: the parser no longer understands docker-compose.yml"
    for package in packages:
        policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False)
        assert re.search(r"Candidate: (?!\(none\))\S+", policy.stdout), f"{package} is not in Debian {RELEASE}"


def test_pg_cron_is_preloaded_and_created_where_it_runs_jobs() -> None:
    postgres = _compose()["services"]["postgres"]
    command = " ".join(postgres["command"])
    assert "shared_preload_libraries=pg_cron" in command
    database = re.search(r"cron\.database_name=(\w+)", command)
    assert database is not None and database.group(1) == postgres["environment"]["POSTGRES_DB"]
    assert "CREATE EXTENSION IF NOT EXISTS pg_cron" in _dockerfile(postgres)


def _init_sql() -> list[str]:
    """The SQL the image writes into /docker-entrypoint-initdb.d (run there on the first start)."""
    text = _dockerfile(_compose()["services"]["postgres"])
    return re.findall(r'echo "([^"]+)" > /docker-entrypoint-initdb\.d/\S+\.sql', text)


def test_init_steps_and_install_commands_work_on_debian_postgresql_15(
    cron_dsn: str, cron_empty_dsn: str, core_tarball: Path
) -> None:
    statements = _init_sql()
    assert statements, "the postgres image runs no init SQL"
    for statement in statements:  # in the cron database, as the image's first start does
        run_sql(cron_dsn, statement)
    install = _compose()["services"]["install"]["command"][-1]
    steps = re.findall(r"python -m pgflow_trio ([a-z ]+?)(?= &&|$)", install)
    assert steps == ["db install", "db check"], install
    env = {"PGFLOW_CORE_TARBALL": str(core_tarball), "PGFLOW_DSN": cron_empty_dsn}
    for step in steps:
        result = cli(*step.split(), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    assert run_sql(cron_empty_dsn, "SELECT count(*) FROM pgmq.meta") == [(0,)]
