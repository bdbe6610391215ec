"""The built-in upstream simulator: speaks the Seedream 4.0 (ToAPIs) contract over real HTTP."""

from app.sandbox.app import create_sandbox_app
from app.sandbox.config import SandboxConfig

__all__ = ["SandboxConfig", "create_sandbox_app"]
