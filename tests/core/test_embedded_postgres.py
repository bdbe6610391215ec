"""The zero-config ledger's bookkeeping (app/core/db/embedded.py). Starting and stopping the real server, `serve` and
the CLI sharing it, are tests/e2e/test_gateway_e2e.py's zero-config test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import app.cli.common
from app.cli.common import with_database
from app.core.config import Settings
from app.core.db import embedded


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_processes_killed_while_using_the_server_are_struck_off_its_users(tmp_path: Path) -> None:
    """Else the last live user would not stop the server: the wheel stops it only when its list holds no one else."""
    handles = tmp_path / ".handle_pids.json"
    handles.write_text(json.dumps([_dead_pid(), os.getpid()]))
    embedded._strike_off_dead(tmp_path)
    assert json.loads(handles.read_text()) == [os.getpid()]


def test_a_data_folder_not_yet_made_gets_no_list(tmp_path: Path) -> None:
    embedded._strike_off_dead(tmp_path)  # initdb needs the folder empty
    assert list(tmp_path.iterdir()) == []


def test_a_configured_database_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def start(*_: object) -> str:
        raise AssertionError("the embedded server was started")

    monkeypatch.setattr(embedded, "start", start)
    monkeypatch.setattr(app.cli.common, "upgrade", start)
    settings = Settings(_env_file=None, database_url="postgresql+asyncpg://gw@db/gw")
    assert with_database(settings) is settings
