"""Fault injection: per request (`X-Sandbox-Fault` header or `[fault:<name>]` in the prompt) or by config."""

from __future__ import annotations

import random
import re

from app.sandbox.config import SandboxConfig

FAULT_HEADER = "X-Sandbox-Fault"
FAULT_NAMES = frozenset({"429", "500", "timeout", "fail", "slow", "fewer", "extra", "content_policy"})
# Faults that make sense on a status call; the rest only shape a new task.
QUERY_FAULTS = frozenset({"429", "500", "timeout"})

_MARKER = re.compile(r"\[fault:([A-Za-z0-9_]+)\]")


class UnknownFaultError(ValueError):
    """The fault header names a fault the sandbox does not know."""


def from_header(value: str | None) -> set[str]:
    """Fault names of a comma-separated header; unknown names raise, so a typo in a test fails loudly."""
    names = {part.strip().lower() for part in (value or "").split(",") if part.strip()}
    unknown = names - FAULT_NAMES
    if unknown:
        raise UnknownFaultError(f"Unknown sandbox fault(s): {', '.join(sorted(unknown))}")
    return names


def from_prompt(prompt: str) -> set[str]:
    """Fault names marked in a prompt; unknown markers are ordinary prompt text."""
    return {name.lower() for name in _MARKER.findall(prompt)} & FAULT_NAMES


def draw(config: SandboxConfig, rng: random.Random) -> set[str]:
    """Faults for one create call drawn from the configured rates (a zero rate draws nothing)."""
    rates = {
        "timeout": config.timeout_rate,
        "429": config.rate_limit_rate,
        "500": config.error_rate,
        "fail": config.fail_rate,
        "slow": config.slow_rate,
    }
    return {name for name, rate in rates.items() if rate > 0 and rng.random() < rate}
