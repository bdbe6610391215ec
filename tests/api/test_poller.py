"""Open tasks that nobody polls are refreshed in the background and settle their quota by themselves."""

from __future__ import annotations

from app.workers.poller import TaskPoller
from tests.fixtures.gateway import Harness

URL = "/v1/images/generations"


async def test_unpolled_tasks_end_and_free_the_in_flight_slot(gw: Harness) -> None:
    key = await gw.new_tenant("acme", max_in_flight=2, daily_images=10)
    auth = {"Authorization": f"Bearer {key}"}
    ok = await gw.client.post(URL, headers=auth, json={"prompt": "a fox", "n": 2})
    failing = await gw.client.post(URL, headers=auth, json={"prompt": "a fox [fault:fail]", "n": 3})
    assert ok.status_code == failing.status_code == 200
    assert (await gw.client.post(URL, headers=auth, json={"prompt": "third"})).status_code == 429
    poller = TaskPoller(gw.state.tasks, interval_s=5)
    gw.clock.advance(11)
    assert await poller.run_once() == 2
    assert gw.sandbox_stats()["status"] == 2
    usage = (await gw.client.get("/v1/usage", headers=auth)).json()
    assert usage["in_flight"]["current"] == 0 and usage["day"]["used"] == 2
    done = (await gw.client.get(f"{URL}/{ok.json()['id']}", headers=auth)).json()
    assert done["status"] == "completed"
    assert gw.sandbox_stats()["status"] == 2  # answered from the ledger
    assert await poller.run_once() == 0


async def test_recently_polled_tasks_are_left_alone(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    auth = {"Authorization": f"Bearer {key}"}
    task = (await gw.client.post(URL, headers=auth, json={"prompt": "a fox"})).json()
    gw.clock.advance(4)
    await gw.client.get(f"{URL}/{task['id']}", headers=auth)
    calls = gw.sandbox_stats()["status"]
    gw.clock.advance(2)
    assert await TaskPoller(gw.state.tasks, interval_s=5).run_once() == 0
    assert gw.sandbox_stats()["status"] == calls
    gw.clock.advance(4)
    assert await TaskPoller(gw.state.tasks, interval_s=5).run_once() == 1
    assert gw.sandbox_stats()["status"] == calls + 1
