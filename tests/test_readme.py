"""The README stays the newcomer's manual: every setting documented, its two set-up commands real."""

from __future__ import annotations

import os
from pathlib import Path

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = [f"GATEWAY_{name.upper()}" for name in Settings.model_fields if f"GATEWAY_{name.upper()}" not in README]
    assert not missing, f"settings missing from README.md: {missing}"


def test_the_two_setup_commands_exist_and_ci_runs_the_test_one() -> None:
    for script in ("scripts/serve", "scripts/test"):
        assert f"./{script}" in README, script
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/test" in ci and "CI=true" in ci
