"""The stand-ins themselves speak the contracts the integration tests rely on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.standins import Call, JupyterHubStandin, RegistrationApp

WORKSHOPS = [
    {
        "id": 1,
        "name": "Ansible 101",
        "notebook": "WKSHP-Ansible101",
        "reset": False,
        "ldap": False,
        "varpass": True,
        "range": [1, 20],
        "capacity": 20,
        "active": True,
    },
    {
        "id": 2,
        "name": "Old one",
        "notebook": "WKSHP-Old",
        "reset": True,
        "ldap": True,
        "varpass": False,
        "range": [21, 30],
        "capacity": 10,
        "active": False,
    },
]


@pytest.fixture
def app() -> Iterator[RegistrationApp]:
    with RegistrationApp(workshops=WORKSHOPS) as running_app:
        yield running_app


@pytest.fixture
def hub() -> Iterator[JupyterHubStandin]:
    with JupyterHubStandin(users=["student1", "student2"]) as running_hub:
        yield running_hub


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http_client:
        yield http_client


def login(client: httpx.Client, app: RegistrationApp) -> str:
    response = client.post(f"{app.url}/login", json={"username": app.username, "password": app.password})
    assert response.status_code == 200
    token = response.json()["accessToken"]
    assert isinstance(token, str) and token
    return token


def hub_headers(hub: JupyterHubStandin) -> dict[str, str]:
    return {"Authorization": f"token {hub.token}"}


# -- registration app ---------------------------------------------------------


def test_app_url_carries_the_api_prefix(app: RegistrationApp) -> None:
    assert app.url.startswith("http://127.0.0.1:")
    assert app.url.endswith("/api")


def test_login_issues_a_fresh_token_and_refuses_wrong_credentials(app: RegistrationApp, client: httpx.Client) -> None:
    first, second = login(client, app), login(client, app)
    assert first != second
    wrong = client.post(f"{app.url}/login", json={"username": "wod", "password": "nope"})
    assert wrong.status_code == 401
    assert "message" in wrong.json()
    assert app.logins == 2
    assert [call.status for call in app.calls] == [200, 200, 401]
    assert app.calls[0] == Call(
        "POST",
        "/login",
        {"username": "wod", "password": "secret-api-pw"},
        None,
        200,
        app.calls[0].at,
    )


def test_puts_need_a_valid_token_and_refusals_change_nothing(app: RegistrationApp, client: httpx.Client) -> None:
    missing = client.put(f"{app.url}/student/12", json={"assigned": "true"})
    unknown = client.put(f"{app.url}/student/12", json={"assigned": "true"}, headers={"x-access-token": "forged"})
    assert (missing.status_code, unknown.status_code) == (401, 401)
    assert [(call.token, call.status) for call in app.calls] == [(None, 401), ("forged", 401)]
    assert app.puts() == []
    assert app.state()["student"] == {}


def test_accepted_puts_merge_into_the_state_in_order(app: RegistrationApp, client: httpx.Client) -> None:
    headers = {"x-access-token": login(client, app)}
    sent = [
        ("/student/12", {"password": "pw-1"}),
        ("/customer/7", {"active": "true"}),
        ("/student/12", {"assigned": "true"}),
        ("/student/12", {"password": "pw-2"}),
        ("/customer/7", {"completionPercentage": "42"}),
        ("/customer/7", {"cleaned": "true"}),
        ("/workshop/1", {"capacity": "5"}),
    ]
    for path, body in sent:
        response = client.put(f"{app.url}{path}", json=body, headers=headers)
        assert response.status_code == 200
        assert response.json()["id"] == int(path.rsplit("/", 1)[1])

    assert app.state() == {
        "student": {"12": {"password": "pw-2", "assigned": "true"}},
        "customer": {"7": {"active": "true", "completionPercentage": "42", "cleaned": "true"}},
        "workshop": {"1": {"capacity": "5"}},
    }
    assert [(call.path, call.body) for call in app.puts()] == sent
    assert [call.body for call in app.puts("/customer")] == [
        {"active": "true"},
        {"completionPercentage": "42"},
        {"cleaned": "true"},
    ]
    assert all(call.token == headers["x-access-token"] for call in app.puts())


def test_workshops_list_is_configurable_filterable_and_reflects_updates(
    app: RegistrationApp, client: httpx.Client
) -> None:
    headers = {"x-access-token": login(client, app)}
    assert client.get(f"{app.url}/workshops").status_code == 401
    listed = client.get(f"{app.url}/workshops", headers=headers).json()
    assert [workshop["notebook"] for workshop in listed] == ["WKSHP-Ansible101", "WKSHP-Old"]
    assert listed[0]["range"] == [1, 20]
    client.put(f"{app.url}/workshop/2", json={"capacity": "3"}, headers=headers)
    updated = client.get(f"{app.url}/workshops", headers=headers).json()
    assert updated[1]["capacity"] == "3"
    active = client.get(f"{app.url}/workshops", params={"active": "true"}, headers=headers)
    assert [workshop["id"] for workshop in active.json()] == [1]
    assert app.calls[-1].query == "active=true"


def test_expired_tokens_get_401_until_a_new_login(app: RegistrationApp, client: httpx.Client) -> None:
    old = login(client, app)
    app.expire_tokens()
    stale = client.put(f"{app.url}/customer/7", json={"active": "true"}, headers={"x-access-token": old})
    assert stale.status_code == 401
    assert app.state()["customer"] == {}
    fresh = client.put(
        f"{app.url}/customer/7",
        json={"active": "true"},
        headers={"x-access-token": login(client, app)},
    )
    assert fresh.status_code == 200
    assert app.logins == 2
    assert app.state()["customer"] == {"7": {"active": "true"}}


def test_fail_next_answers_the_matching_requests_without_state_change(
    app: RegistrationApp, client: httpx.Client
) -> None:
    headers = {"x-access-token": login(client, app)}
    app.fail_next(2, status=502, path_prefix="/customer")
    statuses = [
        client.put(f"{app.url}/customer/7", json={"active": "true"}, headers=headers).status_code,
        client.put(f"{app.url}/student/12", json={"password": "p"}, headers=headers).status_code,
        client.put(f"{app.url}/customer/7", json={"active": "false"}, headers=headers).status_code,
        client.put(f"{app.url}/customer/7", json={"cleaned": "true"}, headers=headers).status_code,
    ]
    assert statuses == [502, 200, 502, 200]
    assert app.state()["customer"] == {"7": {"cleaned": "true"}}
    assert [call.path for call in app.puts()] == ["/student/12", "/customer/7"]

    app.fail_next(1)  # any path, login included
    assert client.post(f"{app.url}/login", json={}).status_code == 500


def test_down_answers_503_then_recovers(app: RegistrationApp, client: httpx.Client) -> None:
    token = login(client, app)
    app.set_down(True)
    assert client.post(f"{app.url}/login", json={"username": "wod"}).status_code == 503
    down = client.put(f"{app.url}/student/1", json={"assigned": "true"}, headers={"x-access-token": token})
    assert down.status_code == 503
    app.set_down(False)
    up = client.put(f"{app.url}/student/1", json={"assigned": "true"}, headers={"x-access-token": token})
    assert up.status_code == 200
    assert app.state()["student"] == {"1": {"assigned": "true"}}


def test_delay_slows_every_answer(app: RegistrationApp, client: httpx.Client) -> None:
    app.set_delay(0.2)
    started = time.monotonic()
    assert client.post(f"{app.url}/login", json={}).status_code == 401
    assert time.monotonic() - started >= 0.2
    app.set_delay(0)
    started = time.monotonic()
    login(client, app)
    assert time.monotonic() - started < 0.2


def test_bad_requests_are_refused(app: RegistrationApp, client: httpx.Client) -> None:
    headers = {"x-access-token": login(client, app)}
    assert client.put(f"{app.url}/students/1", json={"a": "b"}, headers=headers).status_code == 404
    assert client.get(f"{app.url}/student/1", headers=headers).status_code == 404
    outside = app.url.removesuffix("/api") + "/student/1"
    assert client.put(outside, json={"a": "b"}, headers=headers).status_code == 404
    not_json = client.put(f"{app.url}/student/1", content=b"{oops", headers=headers)
    assert not_json.status_code == 400
    assert client.put(f"{app.url}/student/1", json=["a"], headers=headers).status_code == 400
    assert app.state()["student"] == {}
    assert client.put(f"{app.url}/customer/c5", json={"a": "b"}, headers=headers).json() == {
        "id": "c5",
        "a": "b",
    }
    assert app.state()["customer"] == {"c5": {"a": "b"}}  # ids are kept as sent
    assert app.errors == []


def test_connections_are_kept_alive(app: RegistrationApp, client: httpx.Client) -> None:
    headers = {"x-access-token": login(client, app)}
    for stdid in range(20):
        client.put(f"{app.url}/student/{stdid}", json={"assigned": "false"}, headers=headers)
    assert app.connections_accepted == 1
    assert len(app.puts()) == 20


def test_stop_is_an_outage_and_start_comes_back_on_the_same_url(app: RegistrationApp, client: httpx.Client) -> None:
    url = app.url
    token = login(client, app)
    app.stop()
    with pytest.raises(httpx.TransportError):
        client.put(f"{url}/student/1", json={"assigned": "true"}, headers={"x-access-token": token})
    app.start()
    assert app.url == url
    ok = client.put(f"{url}/student/1", json={"assigned": "true"}, headers={"x-access-token": token})
    assert ok.status_code == 200  # tokens survive a restart, as a JWT would


def test_wait_for_polls_until_the_predicate_holds(app: RegistrationApp, client: httpx.Client) -> None:
    token = login(client, app)

    def later() -> None:
        time.sleep(0.1)
        with httpx.Client() as other:
            other.put(f"{app.url}/customer/3", json={"cleaned": "true"}, headers={"x-access-token": token})

    thread = threading.Thread(target=later)
    thread.start()
    assert app.wait_for(lambda a: "3" in a.state()["customer"], timeout=5)
    thread.join()
    assert not app.wait_for(lambda a: len(a.puts()) > 1, timeout=0.05)


async def test_serves_concurrent_async_clients(app: RegistrationApp) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        login_answer = await client.post(f"{app.url}/login", json={"username": app.username, "password": app.password})
        headers = {"x-access-token": login_answer.json()["accessToken"]}
        app.set_delay(0.05)
        started = time.monotonic()
        answers = await asyncio.gather(
            *(client.put(f"{app.url}/student/{n}", json={"password": f"pw{n}"}, headers=headers) for n in range(30))
        )
        elapsed = time.monotonic() - started
    assert {answer.status_code for answer in answers} == {200}
    assert elapsed < 30 * 0.05  # answered in parallel
    assert app.state()["student"] == {str(n): {"password": f"pw{n}"} for n in range(30)}
    arrivals = [call.at for call in app.calls]
    assert arrivals == sorted(arrivals)


# -- JupyterHub ---------------------------------------------------------------


def test_hub_refuses_missing_or_wrong_token(hub: JupyterHubStandin, client: httpx.Client) -> None:
    server = f"{hub.url}/hub/api/users/student1/server"
    assert client.post(server).status_code == 403
    assert client.post(server, headers={"Authorization": "token nope"}).status_code == 403
    assert not hub.running("student1")
    assert [(call.token, call.status) for call in hub.calls] == [(None, 403), ("nope", 403)]
    assert client.post(server, headers={"Authorization": f"Bearer {hub.token}"}).status_code == 201


def test_hub_start_stop_and_the_not_really_errors(hub: JupyterHubStandin, client: httpx.Client) -> None:
    server = f"{hub.url}/hub/api/users/student1/server"
    headers = hub_headers(hub)

    started = client.post(server, headers=headers)
    assert started.status_code == 201
    assert hub.running("student1") and not hub.running("student2")
    again = client.post(server, headers=headers)
    assert again.status_code == 400
    assert again.json() == {"status": 400, "message": "student1 is already running"}

    model = client.get(f"{hub.url}/hub/api/users/student1", headers=headers).json()
    assert model["name"] == "student1"
    assert model["server"] == "/user/student1/"
    assert model["pending"] is None
    assert model["servers"][""]["ready"] is True
    assert model["servers"][""]["pending"] is None

    stopped = client.delete(server, headers=headers)
    assert stopped.status_code == 204
    assert stopped.content == b""
    assert not hub.running("student1")
    not_running = client.delete(server, headers=headers)
    assert not_running.status_code == 400
    assert "is not running" in not_running.json()["message"]

    model = client.get(f"{hub.url}/hub/api/users/student1", headers=headers).json()
    assert (model["server"], model["pending"], model["servers"]) == (None, None, {})

    hub.stop_not_running_status = 204
    assert client.delete(server, headers=headers).status_code == 204
    assert hub.calls[0].path == "/hub/api/users/student1/server"


def test_hub_pending_spawn_then_ready(hub: JupyterHubStandin, client: httpx.Client) -> None:
    hub.spawn_delay = 0.2
    server = f"{hub.url}/hub/api/users/student2/server"
    headers = hub_headers(hub)
    assert client.post(server, headers=headers).status_code == 202
    assert hub.phase("student2") == "spawning" and not hub.running("student2")
    model = client.get(f"{hub.url}/hub/api/users/student2", headers=headers).json()
    assert model["pending"] == "spawn"
    assert model["server"] is None
    assert model["servers"][""]["ready"] is False
    assert model["servers"][""]["pending"] == "spawn"
    assert client.post(server, headers=headers).status_code == 202  # still pending
    busy = client.delete(server, headers=headers)
    assert busy.status_code == 400 and "pending spawn" in busy.json()["message"]

    assert hub.wait_for(lambda h: h.running("student2"), timeout=2)
    model = client.get(f"{hub.url}/hub/api/users/student2", headers=headers).json()
    assert (model["pending"], model["server"]) == (None, "/user/student2/")
    assert model["servers"][""]["ready"] is True


def test_hub_pending_stop(hub: JupyterHubStandin, client: httpx.Client) -> None:
    hub.stop_delay = 0.2
    server = f"{hub.url}/hub/api/users/student1/server"
    headers = hub_headers(hub)
    assert client.post(server, headers=headers).status_code == 201
    assert client.delete(server, headers=headers).status_code == 202
    assert client.delete(server, headers=headers).status_code == 202  # already stopping
    model = client.get(f"{hub.url}/hub/api/users/student1", headers=headers).json()
    assert model["pending"] == "stop" and model["server"] is None
    restart = client.post(server, headers=headers)
    assert restart.status_code == 400 and "pending stop" in restart.json()["message"]
    assert hub.wait_for(lambda h: h.phase("student1") == "stopped", timeout=2)
    assert client.post(server, headers=headers).status_code == 201


def test_hub_throttles_the_next_starts(hub: JupyterHubStandin, client: httpx.Client) -> None:
    hub.throttle_next(2)
    server = f"{hub.url}/hub/api/users/student1/server"
    headers = hub_headers(hub)
    first, second = client.post(server, headers=headers), client.post(server, headers=headers)
    assert (first.status_code, second.status_code) == (429, 429)
    assert first.headers["Retry-After"] == "1"
    assert not hub.running("student1")
    assert client.post(server, headers=headers).status_code == 201


def test_hub_missing_users_and_user_creation(hub: JupyterHubStandin, client: httpx.Client) -> None:
    headers = hub_headers(hub)
    server = f"{hub.url}/hub/api/users/student9/server"
    assert client.post(server, headers=headers).status_code == 404
    assert client.delete(server, headers=headers).status_code == 404
    assert client.get(f"{hub.url}/hub/api/users/student9", headers=headers).status_code == 404
    assert hub.phase("student9") is None

    created = client.post(f"{hub.url}/hub/api/users/student9", headers=headers)
    assert created.status_code == 201
    assert created.json()["name"] == "student9"
    assert client.post(f"{hub.url}/hub/api/users/student9", headers=headers).status_code == 409
    assert client.post(server, headers=headers).status_code == 201
    hub.add_users("student10")
    assert "student10" in hub.users


def test_hub_auto_creates_users_when_asked(client: httpx.Client) -> None:
    with JupyterHubStandin(token="t", auto_create_users=True) as hub:
        answer = client.post(f"{hub.url}/hub/api/users/student5/server", headers={"Authorization": "token t"})
        assert answer.status_code == 201
        assert hub.running("student5")


def test_hub_fail_next_and_down(hub: JupyterHubStandin, client: httpx.Client) -> None:
    headers = hub_headers(hub)
    server = f"{hub.url}/hub/api/users/student1/server"
    hub.fail_next(1, status=500, path_prefix="/hub/api/users/student1/server")
    failed = client.post(server, headers=headers)
    assert failed.status_code == 500 and failed.json()["status"] == 500
    assert not hub.running("student1")
    hub.set_down(True)
    assert client.post(server, headers=headers).status_code == 503
    hub.set_down(False)
    assert client.post(server, headers=headers).status_code == 201
    assert [call.status for call in hub.calls] == [500, 503, 201]
    assert hub.errors == []
