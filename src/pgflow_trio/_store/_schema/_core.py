"""pgflow core's SQL, taken from the pinned `@pgflow/core` npm tarball at install time and verified before use."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import attrs

from pgflow_trio._exceptions import IntegrityError, SchemaError
from pgflow_trio._store._dsn import user_cache_dir

CORE_VERSION = "0.8.1"
CORE_PACKAGE = "@pgflow/core"
CORE_INTEGRITY = "sha512-ElLPkKGPjttBsjlLJfn4CcMeiFwtuUhUNuFADwhQjdrg+netkeONY12oxcbPSBMqBWXVAuKriLq+1T1dCPEWPQ=="
CORE_TARBALL_ENV = "PGFLOW_CORE_TARBALL"
_MIGRATIONS_DIR = "package/dist/supabase/migrations/"
_TARBALL_NAME = f"pgflow-core-{CORE_VERSION}.tgz"


@attrs.frozen
class SqlFile:
    """One named SQL script."""

    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def verify_tarball(path: Path) -> None:
    """Raise IntegrityError unless `path` is exactly the pinned `@pgflow/core` tarball."""
    actual = integrity_of(path.read_bytes())
    if actual != CORE_INTEGRITY:
        raise IntegrityError(
            f"{path} is not {CORE_PACKAGE}@{CORE_VERSION}: its integrity is {actual}, expected {CORE_INTEGRITY}. "
            f"Delete it and run the install again to download the package with npm, or pass the genuine tarball "
            f"with --core-tarball"
        )


def _download(destination: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise SchemaError(
            f"pgflow core {CORE_VERSION} is fetched with npm, which is not installed: install Node.js/npm, "
            f"or run `npm pack {CORE_PACKAGE}@{CORE_VERSION}` elsewhere and pass the file with --core-tarball "
            f"(or {CORE_TARBALL_ENV})"
        )
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{CORE_PACKAGE}@{CORE_VERSION}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            check=False,
        )
        produced = Path(tmp) / _TARBALL_NAME
        if proc.returncode != 0 or not produced.exists():
            raise SchemaError(
                f"`npm pack {CORE_PACKAGE}@{CORE_VERSION}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}. Pass a downloaded tarball with --core-tarball instead"
            )
        verify_tarball(produced)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_suffix(".partial")
        shutil.copyfile(produced, partial)
        os.replace(partial, destination)


def obtain_core_tarball(path: Path | None = None) -> Path:
    """The verified tarball: `path`, else `PGFLOW_CORE_TARBALL`, else the per-user cache (filled by `npm pack`)."""
    given = path or (Path(os.environ[CORE_TARBALL_ENV]) if os.environ.get(CORE_TARBALL_ENV) else None)
    if given is not None:
        if given.is_dir():
            raise SchemaError(f"core tarball {given} is a directory: give the @pgflow/core {CORE_VERSION} .tgz file")
        if not given.is_file():
            raise SchemaError(f"core tarball {given} does not exist")
        verify_tarball(given)
        return given
    cached = user_cache_dir() / _TARBALL_NAME
    if cached.is_file():
        try:
            verify_tarball(cached)
            return cached
        except IntegrityError:
            cached.unlink()
    _download(cached)
    return cached


def core_migrations(tarball: Path) -> list[SqlFile]:
    """The core migrations inside a verified tarball, in file-name order."""
    verify_tarball(tarball)
    found: list[SqlFile] = []
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith(_MIGRATIONS_DIR) and member.name.endswith(".sql"):
                handle = archive.extractfile(member)
                assert handle is not None
                name = member.name.removeprefix(_MIGRATIONS_DIR)
                found.append(SqlFile(name, handle.read().decode()))
    found.sort(key=lambda f: f.name)
    if len(found) != 12:
        raise SchemaError(f"{tarball} holds {len(found)} migrations, expected 12 for pgflow core {CORE_VERSION}")
    return found
