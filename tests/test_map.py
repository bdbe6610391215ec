"""DEVELOPERS.md's map names every module under app/: a module added without its line there fails here.

The map is the block under "## The map". An entry starts at a package (`tasks/`, `core/`, ...) or a top-level module
(`main.py`), two spaces in (a feature's under `├─ `); what follows until the next entry is that entry's text. A
module `app/<package>/<name>.py` is named when `<name>` appears as a word in its package's entry (a sub-package's
module, `app/core/db/engine.py`, in the entry of `core/`, where `db/` is described). An entry whose package or
module is gone fails too.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"
ENTRY = re.compile(r"^ {2}(?:├─ )?(?P<name>[a-z_]+(?:/|\.py))\s")


def map_entries() -> dict[str, str]:
    """Entry name (`tasks/`, `main.py`) -> its text, from the map's code block."""
    text = (ROOT / "DEVELOPERS.md").read_text()
    block = text.split("## The map", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        found = ENTRY.match(line)
        if found:
            current = found["name"]
            entries[current] = line
        elif current is not None:
            entries[current] += "\n" + line
    return entries


def modules() -> list[Path]:
    return sorted(p for p in APP.rglob("*.py") if p.name != "__init__.py")


def test_the_map_names_every_module_under_app() -> None:
    entries = map_entries()
    missing = []
    for path in modules():
        parts = path.relative_to(APP).parts
        if len(parts) == 1:
            if parts[0] not in entries:
                missing.append(f"app/{parts[0]}")
            continue
        entry = entries.get(parts[0] + "/")
        if entry is None or not re.search(rf"\b{re.escape(path.stem)}\b", entry):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, "DEVELOPERS.md's map does not name: " + ", ".join(missing)


def test_every_entry_of_the_map_exists() -> None:
    entries = map_entries()
    assert "tasks/" in entries and "main.py" in entries, f"the map's entries were not read: {sorted(entries)}"
    gone = [name for name in entries if not (APP / name).exists()]
    assert not gone, "DEVELOPERS.md's map names what app/ no longer has: " + ", ".join(gone)
