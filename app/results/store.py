"""The store where result images are kept: a local directory or an S3-compatible bucket, through obstore.

obstore (Python bindings of the Rust `object_store` crate, the one Apache Arrow, DataFusion and Polars use) speaks
S3, GCS, Azure and the local file system behind one API: uploads stream from an async iterator in bounded parts
(a multipart upload whose parts go out as they fill, so memory is `chunk_size` x parts in flight whatever the image
size), URLs are presigned without a round trip, and the bytes move in Rust, off the event loop's thread. Both of
its writes publish whole or not at all: a single PUT or a multipart upload's completion on S3, a staging file
renamed into place on the local file system. A copy cut short leaves nothing at the object's key (on S3 an unfinished
multipart upload, invisible, for the bucket's lifecycle rule; locally a `<key>#<n>` staging file that `clean_partial`
removes).

Credentials for S3 come from where the AWS SDKs look: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
a web identity token (EKS), the ECS container endpoint, the EC2 instance metadata service.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import AsyncIterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, S3Store

from app.core.config import Settings

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

StoreKind = Literal["local", "s3"]
PART_BYTES = 5 * 1024 * 1024  # S3's smallest multipart part: memory per upload is this x (parts in flight + 1)
PARTS_IN_FLIGHT = 2
_PROBE_KEY = ".gateway-probe"
PARTIAL_MAX_AGE_S = 3600.0  # a local staging file older than this belongs to a copy that died


class StoreError(Exception):
    """The store could not do it (unreachable, refused, misconfigured); the message says why, in one line."""


class ResultStore:
    """One store: `put` (streamed, published whole), `delete`, `presign` (S3), `path` (local), `probe`."""

    def __init__(self, store: LocalStore | S3Store, kind: StoreKind, *, root: Path | None = None) -> None:
        self._store = store
        self.kind: StoreKind = kind
        self._root = root

    @property
    def description(self) -> str:
        return f"local directory {self._root}" if self.kind == "local" else "S3 bucket"

    async def put(self, key: str, chunks: AsyncIterable[bytes], content_type: str) -> None:
        """Write the object from `chunks`; it exists at `key` only once every byte is written."""
        try:
            await obstore.put_async(
                self._store,
                key,
                chunks,
                attributes={"Content-Type": content_type} if self.kind == "s3" else None,
                chunk_size=PART_BYTES,
                max_concurrency=PARTS_IN_FLIGHT,
            )
        except BaseError as e:
            raise StoreError(_one_line(e)) from e

    async def delete(self, key: str) -> None:
        """Remove the object; one that is not there is fine (deleted before, or never published)."""
        try:
            await obstore.delete_async(self._store, key)
        except NotFoundError:
            pass
        except (BaseError, FileNotFoundError):
            if self.kind == "local" and not self.path(key).exists():
                return
            raise

    async def size_of(self, key: str) -> int | None:
        """The object's size, or None when it is not there."""
        try:
            meta = await obstore.head_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return None
        except BaseError as e:
            raise StoreError(_one_line(e)) from e
        return int(meta["size"])

    async def presign(self, key: str, expires_in: dt.timedelta) -> str:
        """A URL that GETs the object until `expires_in` from now (S3 only)."""
        assert isinstance(self._store, S3Store)
        try:
            return await obstore.sign_async(self._store, "GET", key, expires_in)
        except BaseError as e:
            raise StoreError(_one_line(e)) from e

    def path(self, key: str) -> Path:
        """Where a local store keeps `key`."""
        assert self._root is not None
        return self._root / key

    async def probe(self) -> None:
        """Raise StoreError unless the store answers (a missing object is an answer)."""
        try:
            await obstore.head_async(self._store, _PROBE_KEY)
        except (NotFoundError, FileNotFoundError):
            return
        except BaseError as e:
            raise StoreError(_one_line(e)) from e
        if self.kind == "local" and self._root is not None and not os.access(self._root, os.W_OK):
            raise StoreError(f"{self._root} is not writable")

    def clean_partial(self, max_age_s: float = PARTIAL_MAX_AGE_S) -> int:
        """Remove the local staging files of copies that died mid-write (`<key>#<n>`); the number removed."""
        if self.kind != "local" or self._root is None or not self._root.is_dir():
            return 0
        removed = 0
        cutoff = time.time() - max_age_s
        for path in self._root.rglob("*#*"):
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed


def build_store(settings: Settings) -> ResultStore | None:
    """The store the settings name; None when results are not kept (GATEWAY_RESULTS_STORE=off)."""
    if settings.results_store == "off":
        return None
    client: ClientConfig = {"connect_timeout": dt.timedelta(seconds=5), "timeout": dt.timedelta(seconds=120)}
    # Few, quick retries: the copier has its own schedule, and a store that is away must fail an attempt fast.
    retry: RetryConfig = {"max_retries": 2, "retry_timeout": dt.timedelta(seconds=10)}
    if settings.results_store == "local":
        root = (settings.results_dir or settings.data_dir / "results").resolve()
        root.mkdir(parents=True, exist_ok=True)
        return ResultStore(LocalStore(root, mkdir=True), "local", root=root)
    if not settings.results_s3_bucket:
        from app.core.errors import SettingsError

        raise SettingsError("GATEWAY_RESULTS_STORE=s3 needs GATEWAY_RESULTS_S3_BUCKET")
    endpoint = settings.results_s3_endpoint
    if endpoint.startswith("http://"):
        client["allow_http"] = True  # an S3-compatible server on a closed network (or a test's, on loopback)
    s3 = S3Store(
        settings.results_s3_bucket,
        prefix=settings.results_s3_prefix.strip("/") or None,
        client_options=client,
        retry_config=retry,
        **({"endpoint": endpoint} if endpoint else {}),  # type: ignore[arg-type]
        **({"region": settings.results_s3_region} if settings.results_s3_region else {}),  # type: ignore[arg-type]
    )
    return ResultStore(s3, "s3")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
