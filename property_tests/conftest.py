"""Property tests share the real-database fixtures of tests/, and choose a Hypothesis profile:
PGFLOW_PROPERTY_PROFILE=fast (default, what CI runs: a few minutes), thorough (for local runs), or quick-fail
(fast without shrinking: a failure is reported at once, unminimised)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings
from tests.conftest import core_tarball, dsn, embedded_data_dir, empty_dsn, server_dsn, template_db

settings.register_profile(
    "fast",
    max_examples=10,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
settings.register_profile(
    "quick-fail",
    parent=settings.get_profile("fast"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("PGFLOW_PROPERTY_PROFILE", "fast"))

__all__ = ["core_tarball", "dsn", "embedded_data_dir", "empty_dsn", "server_dsn", "template_db"]
