"""The background prober: keys the upstream refused (401/403) are asked again, and re-enabled once accepted.

One loop per process; a conditional `UPDATE ... SET last_probe_at` claims each probe, so one replica probes a key
per `PoolPolicy.probe_interval_s` however many run. A probe is a status query for a task id that cannot exist: a
404 means the upstream accepts the key (re-enabled on every replica), a 401/403 that it still refuses it; anything
else (5xx, 429, a timeout) says nothing about the key and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from app.core import outage
from app.core.db.errors import describe, is_database_unavailable, redacted_traceback
from app.core.errors import GatewayError, UpstreamCredentialsRefused, UpstreamRejected
from app.upstream.base import UpstreamAdapter
from app.upstream.pool import PoolKey
from app.upstream.service import PoolService

log = logging.getLogger(__name__)

PROBE_TASK_ID = "gateway_key_probe_0000000000000000"
DEFAULT_TICK_S = 5.0


class KeyProber:
    def __init__(
        self,
        pool: PoolService,
        adapter: UpstreamAdapter,
        *,
        tick_s: float = DEFAULT_TICK_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._pool = pool
        self._adapter = adapter
        self._tick_s = tick_s
        self._sleep = sleep

    async def probe_due(self) -> int:
        """Probe every refused key whose probe is due and that this replica claims; the number re-enabled."""
        enabled = 0
        for key in [k for k in self._pool.pool.snapshot() if k.refused_by_upstream]:
            if await self._pool.claim_probe(key.id) and await self._accepted(key):
                enabled += int(await self._pool.reenable(key))
        return enabled

    async def _accepted(self, key: PoolKey) -> bool:
        try:
            await self._adapter.get(key.secret, PROBE_TASK_ID)
        except UpstreamCredentialsRefused:
            log.warning("upstream key %s (%s) still refused by the upstream", key.id, key.name)
            return False
        except UpstreamRejected as e:
            return e.status_code == 404
        except GatewayError as e:
            log.info("probe of upstream key %s inconclusive: %s", key.id, e.message)
            return False
        return True

    async def run_forever(self) -> None:
        while True:
            await self._sleep(self._tick_s)
            try:
                await self.probe_due()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # tried again at the next tick
                if is_database_unavailable(e):
                    outage.tracker(outage.DATABASE).failed(describe(e), source="the upstream key prober")
                    log.debug("upstream key probe failed (%s)", describe(e))
                else:
                    log.error("upstream key probe failed\n%s", redacted_traceback(e))
