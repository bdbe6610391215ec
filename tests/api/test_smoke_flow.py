from tests.fixtures.gateway import Harness


async def test_submit_and_poll_to_completion(gw: Harness) -> None:
    key = await gw.new_tenant("acme")
    auth = {"Authorization": f"Bearer {key}"}
    r = await gw.client.post("/v1/images/generations", headers=auth, json={"prompt": "a fox", "n": 2})
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "queued" and task["object"] == "generation.task"
    gw.clock.advance(11)
    r = await gw.client.get(f"/v1/images/generations/{task['id']}", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed"
    assert len(body["result"]["data"]) == 2
