"""The audit service as a dependency (stateless: built on the kernel's sessions and clock)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.audit.service import AuditService
from app.core.deps import KernelDep


async def get_audit_service(kernel: KernelDep) -> AuditService:
    return AuditService(kernel.sessions, kernel.clock)


AuditServiceDep = Annotated[AuditService, Depends(get_audit_service)]
