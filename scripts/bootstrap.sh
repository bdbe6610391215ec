#!/usr/bin/env bash
# Creates .venv with the project installed (extras in $1, e.g. "dev"), reinstalling only when pyproject.toml changed.
# The first run takes a while (a venv, then some 60 packages): it says so, and names each package as pip fetches it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
extras=${1:-}
stamp_of() { echo ".venv/.installed-${extras:-base}-$(sha256sum pyproject.toml | cut -c1-16)"; }
if [ -x .venv/bin/python ] && [ -f "$(stamp_of)" ]; then
  exit 0
fi
started=$SECONDS
echo "bootstrap: installing seedream-gateway${extras:+[$extras]} into .venv (once; about 15 s on a first run) ..." >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip >&2
# pip's own lines, less its noise: one line per package it fetches, and its warnings and errors.
.venv/bin/python -m pip install --progress-bar off -e ".${extras:+[$extras]}" 2>&1 \
  | sed -u -n -e 's/^Collecting \([^ ]*\).*/bootstrap:   \1/p' -e '/^\(ERROR\|error\|WARNING\)/p' >&2
touch "$(stamp_of)"
echo "bootstrap: done in $((SECONDS - started)) s" >&2
