"""The Azure DevOps emulator answers like Azure DevOps Services (REST 7.1)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from emulators.devops import DevOpsState, RateLimit, make_app
from emulators.entra import ACR_RESOURCE, DEVOPS_RESOURCE, TokenIssuer
from emulators.harness import Knobs, RequestLog, ServiceThread, TestCA

pytestmark = pytest.mark.integration

PAT = "emulated-pat-0123456789"
SPEC = Path(__file__).resolve().parents[2] / "specs" / "azure-devops-git-7.1.json"
SUPPRESS = {"X-TFS-FedAuthRedirect": "Suppress"}


def basic(pat: str, user: str = "") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{pat}".encode()).decode()
    return {"Authorization": f"Basic {token}", **SUPPRESS}


class Server:
    def __init__(self, tmp: Path) -> None:
        self.ca = TestCA(tmp)
        self.issuer = TokenIssuer()
        self.log = RequestLog()
        self.knobs = Knobs()
        self.state = DevOpsState("contoso", pats=[PAT])
        self.thread = ServiceThread(
            make_app(self.state, self.knobs, self.log, self.issuer),
            ssl_context=self.ca.server_context(),
        )

    @property
    def org_url(self) -> str:
        return f"{self.thread.base_url}/contoso"

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.org_url,
            verify=self.ca.client_context(),
            headers=basic(PAT) if headers is None else headers,
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.thread.start()
    yield srv
    srv.thread.stop()


@pytest.fixture(scope="module")
def pull_request_schema() -> dict[str, Any]:
    spec = json.loads(SPEC.read_text())
    return {"$ref": "#/definitions/GitPullRequest", "definitions": spec["definitions"]}


def get(client: httpx.Client, path: str, **params: Any) -> httpx.Response:
    return client.get(path, params={"api-version": "7.1", **params})


def test_pull_request_by_id_with_project_matches_spec(server, pull_request_schema):
    """A pull request read through its project has the spec's GitPullRequest shape."""
    server.state.add_pull_request(7, status="active", project="Fabrikam", is_draft=True)
    with server.client() as c:
        r = get(c, "/Fabrikam/_apis/git/pullrequests/7")
    assert r.status_code == 200
    body = r.json()
    jsonschema.validate(body, pull_request_schema)
    assert body["pullRequestId"] == 7
    assert body["status"] == "active"
    assert body["isDraft"] is True
    assert body["repository"]["project"]["name"] == "Fabrikam"
    assert "closedDate" not in body
    assert body["url"].startswith(server.org_url)


def test_pull_request_by_id_without_project(server):
    """The organization-wide URL finds a pull request of any project."""
    server.state.add_pull_request(8, status="completed", project="Other")
    with server.client() as c:
        r = get(c, "/_apis/git/pullrequests/8")
    assert r.status_code == 200
    assert r.json()["repository"]["project"]["name"] == "Other"


def test_closed_date_has_seven_fractional_digits(server):
    """closedDate is UTC with 7 fractional digits and a Z."""
    closed = datetime(2026, 11, 30, 12, 0, 1, 123456, tzinfo=UTC)
    server.state.add_pull_request(9, status="abandoned", closed_at=closed)
    with server.client() as c:
        body = get(c, "/_apis/git/pullrequests/9").json()
    assert body["closedDate"] == "2026-11-30T12:00:01.1234560Z"


def test_project_by_id_and_case_insensitive_name(server):
    """The project segment accepts the id or the name in any case."""
    record = server.state.add_pull_request(10, project="Fabrikam")
    with server.client() as c:
        by_name = get(c, "/fabrikam/_apis/git/pullrequests/10")
        by_id = get(c, f"/{record.repository.project.id.upper()}/_apis/git/pullrequests/10")
    assert by_name.status_code == by_id.status_code == 200


def test_missing_pull_request_is_tf401180(server):
    """An unknown pull request answers 404 TF401180."""
    with server.client() as c:
        r = get(c, "/_apis/git/pullrequests/404")
    assert r.status_code == 404
    assert r.json()["message"] == "TF401180: The requested pull request was not found."
    assert r.json()["typeKey"] == "GitPullRequestNotFoundException"


def test_pull_request_of_another_project_is_tf401180(server):
    """Through a project URL, a pull request of another project answers TF401180."""
    server.state.add_project("Fabrikam")
    server.state.add_pull_request(11, project="Other")
    with server.client() as c:
        r = get(c, "/Fabrikam/_apis/git/pullrequests/11")
    assert r.status_code == 404
    assert r.json()["typeKey"] == "GitPullRequestNotFoundException"


@pytest.mark.parametrize("path", ["/Nope/_apis/git/pullrequests/1", "/Nope/_apis/git/pullrequests"])
def test_missing_project_is_tf200016(server, path):
    """A project that does not exist answers 404 TF200016 ProjectDoesNotExistWithNameException."""
    with server.client() as c:
        r = get(c, path)
    assert r.status_code == 404
    assert r.json()["message"].startswith("TF200016: The following project does not exist: Nope.")
    assert r.json()["typeKey"] == "ProjectDoesNotExistWithNameException"


def test_unknown_organization_is_not_json(server):
    """An organization the emulator does not host answers 404 with HTML."""
    with server.client() as c:
        r = c.get(f"{server.thread.base_url}/elsewhere/_apis/git/pullrequests/1?api-version=7.1")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("params", "type_key"),
    [
        ({}, "VssVersionNotSpecifiedException"),
        ({"api-version": "9.0"}, "VssVersionOutOfRangeException"),
        ({"api-version": "seven"}, "VssInvalidApiVersionException"),
    ],
)
def test_api_version_errors(server, params, type_key):
    """A missing, too new or malformed api-version answers 400 with the service's error."""
    server.state.add_pull_request(1)
    with server.client() as c:
        r = c.get("/_apis/git/pullrequests/1", params=params)
    assert r.status_code == 400
    assert r.json()["typeKey"] == type_key


def test_preview_api_version_is_accepted(server):
    """`7.1-preview.1` is a valid version."""
    server.state.add_pull_request(1)
    with server.client() as c:
        r = c.get("/_apis/git/pullrequests/1", params={"api-version": "7.1-preview.1"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/_apis/git/pullrequests/abc", {}),
        ("/_apis/git/pullrequests/99999999999", {}),
        ("/Fabrikam/_apis/git/pullrequests", {"$top": "lots"}),
        ("/Fabrikam/_apis/git/pullrequests", {"$top": "-1"}),
        ("/Fabrikam/_apis/git/pullrequests", {"$skip": "x"}),
        ("/Fabrikam/_apis/git/pullrequests", {"searchCriteria.status": "merged"}),
    ],
)
def test_bad_arguments_answer_400(server, path, params):
    """Bad ids, $top, $skip and statuses answer 400 InvalidArgumentValueException, not 500."""
    server.state.add_project("Fabrikam")
    with server.client() as c:
        r = get(c, path, **params)
    assert r.status_code == 400
    assert r.json()["typeKey"] == "InvalidArgumentValueException"


def seed_list(state: DevOpsState, count: int, status: str = "active") -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(1, count + 1):
        state.add_pull_request(
            i, status=status, project="Fabrikam", created_at=start + timedelta(minutes=i)
        )


def test_list_defaults_to_active_newest_first_top_101(server, pull_request_schema):
    """Without criteria the list holds 101 active pull requests, newest first."""
    seed_list(server.state, 120)
    server.state.add_pull_request(500, status="completed", project="Fabrikam")
    with server.client() as c:
        r = get(c, "/Fabrikam/_apis/git/pullrequests")
    body = r.json()
    assert body["count"] == 101
    ids = [pr["pullRequestId"] for pr in body["value"]]
    assert ids == list(range(120, 19, -1))
    jsonschema.validate(body["value"][0], pull_request_schema)


def test_list_pages_with_top_and_skip(server):
    """$top and $skip page through the listing without overlap."""
    seed_list(server.state, 25)
    with server.client() as c:
        pages = [
            [
                pr["pullRequestId"]
                for pr in get(
                    c, "/Fabrikam/_apis/git/pullrequests", **{"$top": 10, "$skip": s}
                ).json()["value"]
            ]
            for s in (0, 10, 20)
        ]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sorted(i for page in pages for i in page) == list(range(1, 26))


def test_list_top_is_capped_at_1000(server):
    """$top above 1000 answers at most 1000 items."""
    seed_list(server.state, 1005)
    with server.client() as c:
        body = get(c, "/Fabrikam/_apis/git/pullrequests", **{"$top": 5000}).json()
    assert body["count"] == 1000


@pytest.mark.parametrize(
    ("status", "expected"),
    [("active", {1}), ("completed", {2}), ("abandoned", {3}), ("all", {1, 2, 3})],
)
def test_list_by_status(server, status, expected):
    """searchCriteria.status selects active, completed, abandoned or all."""
    for pr_id, st in ((1, "active"), (2, "completed"), (3, "abandoned")):
        server.state.add_pull_request(pr_id, status=st, project="Fabrikam")  # type: ignore[arg-type]
    server.state.add_pull_request(4, status="active", project="Other")
    with server.client() as c:
        body = get(
            c, "/Fabrikam/_apis/git/pullrequests", **{"searchCriteria.status": status}
        ).json()
    assert {pr["pullRequestId"] for pr in body["value"]} == expected


def test_pat_with_any_user_name(server):
    """A PAT works as Basic with an empty or any user name."""
    server.state.add_pull_request(1)
    with server.client(basic(PAT, user="someone")) as c:
        assert get(c, "/_apis/git/pullrequests/1").status_code == 200


def test_bearer_token_for_devops_is_accepted(server):
    """An Entra token issued for Azure DevOps is accepted as Bearer."""
    server.state.add_pull_request(1)
    token, _ = server.issuer.issue(DEVOPS_RESOURCE + "/.default")
    with server.client({"Authorization": f"Bearer {token}", **SUPPRESS}) as c:
        assert get(c, "/_apis/git/pullrequests/1").status_code == 200


def test_bearer_token_for_the_registry_is_refused(server):
    """A token for the registry's resource does not open Azure DevOps."""
    token, _ = server.issuer.issue(ACR_RESOURCE)
    with server.client({"Authorization": f"Bearer {token}", **SUPPRESS}) as c:
        assert get(c, "/_apis/git/pullrequests/1").status_code == 401


def test_token_of_a_non_member_is_refused(server):
    """With members listed, a valid token of anyone else answers 401 TF400813."""
    server.state.members = {"someone-else"}
    token, _ = server.issuer.issue(DEVOPS_RESOURCE, subject="stranger")
    with server.client({"Authorization": f"Bearer {token}", **SUPPRESS}) as c:
        r = get(c, "/_apis/git/pullrequests/1")
    assert r.status_code == 401
    assert "TF400813" in r.headers["X-TFS-ServiceError"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic " + base64.b64encode(b":wrong").decode()},
        {"Authorization": "Bearer x.y.z"},
    ],
)
def test_bad_credential_gets_sign_in_page(server, headers):
    """Without Suppress, a missing or bad credential answers 203 with an HTML sign-in page."""
    with server.client(headers) as c:
        r = get(c, "/_apis/git/pullrequests/1")
    assert r.status_code == 203
    assert r.headers["content-type"].startswith("text/html")
    assert "Sign In" in r.text


def test_bad_credential_with_suppress_gets_401(server):
    """With X-TFS-FedAuthRedirect: Suppress, a bad credential answers 401 with WWW-Authenticate."""
    with server.client(basic("wrong")) as c:
        r = get(c, "/_apis/git/pullrequests/1")
    assert r.status_code == 401
    challenges = r.headers.get_list("WWW-Authenticate")
    assert any(ch.startswith("Bearer") for ch in challenges)
    assert any(ch.startswith("Basic") for ch in challenges)


def test_rate_limit_delays_then_blocks(server):
    """Past the budget requests are delayed with X-RateLimit-Delay, then blocked with 429."""
    now = [1000.0]
    server.state.clock = lambda: now[0]
    server.state.rate_limit = RateLimit(budget=2, window_s=60, delay_allowance=1, delay_s=0.0)
    server.state.add_pull_request(1)
    with server.client() as c:
        statuses = [get(c, "/_apis/git/pullrequests/1") for _ in range(4)]
        now[0] += 61
        after_window = get(c, "/_apis/git/pullrequests/1")
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    assert "X-RateLimit-Delay" not in statuses[0].headers
    assert "X-RateLimit-Delay" in statuses[2].headers
    blocked = statuses[3]
    assert blocked.headers["Retry-After"] == "60"
    for name in (
        "X-RateLimit-Resource",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    ):
        assert name in blocked.headers
    assert after_window.status_code == 200


def test_request_log_counts_routes(server):
    """Every request is logged under its route name."""
    server.state.add_pull_request(1, project="Fabrikam")
    with server.client() as c:
        get(c, "/_apis/git/pullrequests/1")
        get(c, "/Fabrikam/_apis/git/pullrequests/1")
        get(c, "/Fabrikam/_apis/git/pullrequests")
    assert server.log.by_route("devops") == {
        "devops.pr.get_org": 1,
        "devops.pr.get": 1,
        "devops.pr.list": 1,
    }


def test_scenario_seed_is_served(server):
    """A scenario's PullRequestSeed is served with its status, draft flag and project."""
    from emulators.scenario import PullRequestSeed

    closed = datetime(2026, 10, 1, tzinfo=UTC)
    server.state.add_seed(PullRequestSeed(42, "completed", closed_at=closed, project="Web"))
    with server.client() as c:
        body = get(c, "/Web/_apis/git/pullrequests/42").json()
    assert body["status"] == "completed"
    assert body["closedDate"] == "2026-10-01T00:00:00.0000000Z"
