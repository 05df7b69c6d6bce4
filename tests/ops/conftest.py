"""The operations layer in process: real settings from a config file, a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from keygate.config import Settings, load_settings
from keygate.ops.audit import Actor
from keygate.store import AuditEntry, SQLiteStore

PEPPER = "ops-tests-pepper-0123456789abcdef0123456789"
MASTER = "q3T8a0m3yJ2cJ0m8d9r9E2fUu0pQ2uK3h3c1vQqZ0nA="
OTHER_MASTER = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
UPSTREAM_KEY = "sk-ops-config-upstream-key-00000000"


@dataclass
class Ops:
    """What an operation needs: settings, the store, and who acts."""

    settings: Settings
    store: SQLiteStore
    actor: Actor
    path: Path

    def audit(self, action: str | None = None) -> list[AuditEntry]:
        """The audit trail, oldest first."""
        return list(reversed(self.store.list_audit(1000, action)))

    def reload(self, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Ops:
        """The same database under other settings."""
        self.store.close()
        return make_ops(self.path, config, env)


def make_ops(path: Path, config: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Ops:
    cfg = path / "keygate.yaml"
    cfg.write_text(yaml.safe_dump({"database_url": "sqlite:///keygate.db", **(config or {})}))
    settings = load_settings(
        cfg,
        {
            "KEYGATE_PEPPER": PEPPER,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "KEYGATE_MASTER_KEY": MASTER,
            **(env or {}),
        },
    )
    store = SQLiteStore(settings.database_path, audit_key=b"t" * 32)
    store.migrate()
    return Ops(settings, store, Actor("adm_ops", "10.0.0.7"), path)


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Ops]:
    made = make_ops(tmp_path)
    yield made
    made.store.close()
