"""Refused requests are not counted in the per-minute windows: a submit counted, then refused by the quota (402) or
the tasks-in-flight cap (429), gives its slot back (a 402 used to use one up)."""

from __future__ import annotations

from tests.fixtures.gateway import ADMIN_TOKEN, Harness

URL = "/v1/images/generations"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_a_submit_refused_for_the_quota_keeps_no_slot(gw: Harness) -> None:
    key = await gw.new_tenant("acme", daily_images=1, submit_rpm=2)
    headers = {"Authorization": f"Bearer {key}"}
    first = await gw.client.post(URL, headers=headers, json={"prompt": "one"})
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining"] == "1", first.text
    for _ in range(3):  # each counted, then refused: given back
        refused = await gw.client.post(URL, headers=headers, json={"prompt": "more"})
        assert refused.status_code == 402, refused.text
    r = await gw.client.put("/admin/v1/tenants/acme/limits", headers=ADMIN, json={"daily_images": 10})
    assert r.status_code == 200, r.text
    second = await gw.client.post(URL, headers=headers, json={"prompt": "two"})
    assert second.status_code == 200, second.text  # the minute's second slot was still there
    assert second.headers["x-ratelimit-remaining"] == "0"
    third = await gw.client.post(URL, headers=headers, json={"prompt": "three"})
    assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"


async def test_a_submit_refused_for_the_tasks_in_flight_keeps_no_slot(gw: Harness) -> None:
    key = await gw.new_tenant("globex", max_in_flight=1, submit_rpm=2)
    headers = {"Authorization": f"Bearer {key}"}
    assert (await gw.client.post(URL, headers=headers, json={"prompt": "one"})).status_code == 200
    for _ in range(2):
        refused = await gw.client.post(URL, headers=headers, json={"prompt": "busy"})
        assert refused.status_code == 429 and "in flight" in refused.json()["error"]["message"], refused.text
    gw.clock.advance(11)  # the first task ends: its slot in flight is free
    task_id = (await gw.client.get("/admin/v1/tasks", headers=ADMIN, params={"tenant_id": "globex"})).json()
    await gw.client.get(f"{URL}/{task_id['data'][0]['id']}", headers=headers)
    again = await gw.client.post(URL, headers=headers, json={"prompt": "two"})
    assert again.status_code == 200, again.text
