"""Schema installer: pgmq, pgflow core (from the pinned npm tarball), the realtime stand-in, our migrations."""

from pgflow_trio._models import InstallReport, SchemaStatus
from pgflow_trio._store._schema._core import CORE_INTEGRITY, CORE_VERSION, obtain_core_tarball
from pgflow_trio._store._schema._install import INSTALL_COMMAND, check, install, install_script, require_complete

__all__ = [
    "CORE_INTEGRITY",
    "CORE_VERSION",
    "INSTALL_COMMAND",
    "InstallReport",
    "SchemaStatus",
    "check",
    "install",
    "install_script",
    "obtain_core_tarball",
    "require_complete",
]
