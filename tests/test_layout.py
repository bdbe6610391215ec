"""Tests mirror features: a folder under tests/ is an app package's name (its in-process tests, database included) or
one of the folders apart (the end-to-end ones and the shared helpers); no folder is called `unit`."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APART = {"e2e", "browser", "fixtures", "support"}


def folders(path: Path) -> set[str]:
    return {p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}


def test_every_folder_under_tests_is_a_feature_or_apart() -> None:
    features = {name for name in folders(ROOT / "app") if (ROOT / "app" / name / "__init__.py").is_file()}
    assert folders(ROOT / "tests") - features - APART == set()


def test_no_folder_is_called_unit() -> None:
    assert [str(p) for p in (ROOT / "tests").rglob("unit") if p.is_dir()] == []
