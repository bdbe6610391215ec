"""scripts/bootstrap.sh (what `./scripts/serve` runs first) says what it does while it installs, with a stand-in
Python whose pip prints as a real one does (nothing under --quiet)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAKE_PIP = """#!/usr/bin/env bash
# a stand-in .venv/bin/python: `-m pip install ...` prints what pip prints, unless --quiet
for arg in "$@"; do [ "$arg" = "--quiet" ] && exit 0; done
printf 'Obtaining file:///x\\nCollecting fastapi>=0.115 (from seedream-gateway==0.1.0)\\n  Downloading fastapi.whl\\n'
printf 'Collecting httpx>=0.27\\nInstalling collected packages: fastapi, httpx\\n'
"""
FAKE_PYTHON = f"""#!/usr/bin/env bash
# a stand-in python3: `-c` checks pass, `-m venv DIR` makes DIR/bin/python the stand-in above
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cat > "$3/bin/python" <<'PIP'
{FAKE_PIP}PIP
  chmod +x "$3/bin/python"
fi
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_a_first_install_says_what_it_does(tmp_path: Path) -> None:
    """The first `./scripts/serve` installed for about 15 s with pip quiet: one could not tell it from a hang."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "bootstrap.sh", tmp_path / "scripts" / "bootstrap.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = _executable(tmp_path / "python3", FAKE_PYTHON)
    env = {**os.environ, "PYTHON": str(python)}

    first = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert first.returncode == 0, first.stderr
    lines = first.stderr.splitlines()
    assert lines[0].startswith("bootstrap: installing seedream-gateway into .venv")
    assert "bootstrap:   fastapi>=0.115" in lines and "bootstrap:   httpx>=0.27" in lines
    assert lines[-1].startswith("bootstrap: done in ")
    again = subprocess.run(
        ["bash", "scripts/bootstrap.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and again.stderr == ""  # installed: nothing to say
