"""Ops API: the audit log (GET /admin/v1/audit)."""

from __future__ import annotations

from fastapi import APIRouter

from app.contract import ErrorEnvelope
from app.deps import AdminDep

router = APIRouter(
    prefix="/admin/v1", tags=["admin"], dependencies=[AdminDep], responses={401: {"model": ErrorEnvelope}}
)
