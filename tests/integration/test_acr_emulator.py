"""The registry emulator answers like Azure Container Registry's data plane (API 2021-07-01)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from azure.containerregistry import ArtifactTagOrder
from azure.containerregistry.aio import ContainerRegistryClient
from azure.core.exceptions import HttpResponseError
from azure.identity.aio import ManagedIdentityCredential
from referencing import Registry, Resource

from emulators import Emulators
from emulators.acr import LOCKED_ERROR, LOCKED_STATUS, Budget, bulk_seed, iter_bulk_images
from emulators.entra import ACR_RESOURCE, DEVOPS_RESOURCE
from emulators.harness import FaultRule
from emulators.scenario import ScenarioBuilder

pytestmark = pytest.mark.integration

SPEC_PATH = Path(__file__).resolve().parents[2] / "specs" / "acr-data-plane-2021-07-01.json"
SPEC: dict[str, Any] = json.loads(SPEC_PATH.read_text())
_REGISTRY: Registry[Any] = Registry().with_resource("spec", Resource.opaque(SPEC))
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")
WILDCARD = "registry:catalog:* repository:*:*"


def schema_for(path: str, method: str, status: str) -> dict[str, Any]:
    responses = SPEC["paths"][path][method]["responses"]
    return dict(responses.get(status, responses["default"])["schema"])


def validate(body: Any, schema: dict[str, Any]) -> None:
    """Validate against a spec schema, resolving its `#/definitions/...` references."""
    wrapped = {"$ref": "spec" + schema["$ref"]} if "$ref" in schema else schema
    jsonschema.Draft4Validator(wrapped, registry=_REGISTRY).validate(body)


def errors_of(response: httpx.Response) -> list[dict[str, Any]]:
    validate(response.json(), {"$ref": "#/definitions/AcrErrors"})
    errors: list[dict[str, Any]] = response.json()["errors"]
    return errors


class Acr:
    """Raw HTTP against the registry emulator, with the token dance done by hand."""

    def __init__(self, emu: Emulators) -> None:
        self.emu = emu
        self.http = httpx.Client(base_url=emu.acr.url, verify=emu.ca.client_context())
        self.service = emu.acr.url.removeprefix("https://")

    def refresh_token(self) -> str:
        entra, _ = self.emu.issuer.issue(ACR_RESOURCE)
        response = self.http.post(
            "/oauth2/exchange",
            data={"grant_type": "access_token", "service": self.service, "access_token": entra},
        )
        assert response.status_code == 200, response.text
        validate(response.json(), schema_for("/oauth2/exchange", "post", "200"))
        token: str = response.json()["refresh_token"]
        return token

    def access_token(self, scope: str) -> str:
        response = self.http.post(
            "/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "service": self.service,
                "scope": scope,
                "refresh_token": self.refresh_token(),
            },
        )
        assert response.status_code == 200, response.text
        validate(response.json(), schema_for("/oauth2/token", "post", "200"))
        token: str = response.json()["access_token"]
        return token

    def get(self, path: str, scope: str = WILDCARD, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.access_token(scope)}"}
        return self.http.get(path, headers=headers, **kwargs)

    def delete(self, path: str, scope: str = WILDCARD) -> httpx.Response:
        return self.http.delete(
            path, headers={"Authorization": f"Bearer {self.access_token(scope)}"}
        )


@pytest.fixture
def demo(start_emulators: Any) -> Emulators:
    builder = ScenarioBuilder()
    builder.image("team/api", "v1.4.2", "latest", age_days=10)
    builder.image("team/api", "PR1234", platforms=("linux/amd64", "linux/arm64"), age_days=5)
    builder.image("team/api", subject="PR1234", age_days=5)
    builder.image("team/api", "pr-1240", locked_tags=("pr-1240",), age_days=3)
    builder.image("team/api", "locked-image", locked=True, age_days=2)
    builder.image("web", "latest")
    emu: Emulators = start_emulators(builder.build())
    return emu


@pytest.fixture
def acr(demo: Emulators) -> Iterator[Acr]:
    client = Acr(demo)
    yield client
    client.http.close()


def enc(name: str) -> str:
    return quote(name, safe="")


# --- contract: answers validate against the official spec ------------------------------------


def test_catalog_validates_against_the_spec(acr: Acr) -> None:
    """GET /acr/v1/_catalog answers a Repositories body."""
    response = acr.get("/acr/v1/_catalog", "registry:catalog:*")
    assert response.status_code == 200
    validate(response.json(), schema_for("/acr/v1/_catalog", "get", "200"))
    assert response.json()["repositories"] == ["team/api", "web"]


def test_tag_list_validates_and_carries_changeable_attributes(acr: Acr) -> None:
    """GET _tags answers a TagList whose items carry changeableAttributes and 7-digit times."""
    response = acr.get(f"/acr/v1/{enc('team/api')}/_tags")
    validate(response.json(), schema_for("/acr/v1/{name}/_tags", "get", "200"))
    tags = {t["name"]: t for t in response.json()["tags"]}
    assert tags["pr-1240"]["changeableAttributes"]["deleteEnabled"] is False
    assert tags["latest"]["changeableAttributes"] == {
        "deleteEnabled": True,
        "writeEnabled": True,
        "readEnabled": True,
        "listEnabled": True,
    }
    assert all(
        TIME.match(t["createdTime"]) and TIME.match(t["lastUpdateTime"]) for t in tags.values()
    )


def test_tag_properties_validate(acr: Acr) -> None:
    """GET _tags/{tag} answers TagAttributes."""
    response = acr.get(
        f"/acr/v1/{enc('team/api')}/_tags/latest", params={"api-version": "2021-07-01"}
    )
    validate(response.json(), schema_for("/acr/v1/{name}/_tags/{reference}", "get", "200"))
    assert response.json()["tag"]["name"] == "latest"


def test_manifest_list_validates_with_references_and_media_types(acr: Acr, demo: Emulators) -> None:
    """GET _manifests answers AcrManifests; an index lists its children under `references`."""
    response = acr.get(f"/acr/v1/{enc('team/api')}/_manifests")
    validate(response.json(), schema_for("/acr/v1/{name}/_manifests", "get", "200"))
    items = response.json()["manifests"]
    index = next(m for m in items if "PR1234" in m.get("tags", []))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    children = {r["digest"] for r in index["references"]}
    assert len(children) == 2
    assert children <= {m["digest"] for m in items}
    assert all(isinstance(m["imageSize"], int) for m in items)


def test_manifest_properties_validate(acr: Acr, demo: Emulators) -> None:
    """GET _manifests/{digest} answers ManifestAttributes."""
    digest = demo.acr.state.resolve("team/api", "latest")
    response = acr.get(
        f"/acr/v1/{enc('team/api')}/_manifests/{digest}", params={"api-version": "2021-07-01"}
    )
    validate(response.json(), schema_for("/acr/v1/{name}/_manifests/{digest}", "get", "200"))
    assert response.json()["manifest"]["tags"] == ["latest", "v1.4.2"]


def test_repository_properties_validate(acr: Acr) -> None:
    """GET /acr/v1/{name} answers RepositoryAttributes."""
    response = acr.get(f"/acr/v1/{enc('team/api')}")
    validate(response.json(), schema_for("/acr/v1/{name}", "get", "200"))


@pytest.mark.parametrize("reference", ["latest", "PR1234"])
def test_manifest_body_validates_and_hashes_to_its_digest(acr: Acr, reference: str) -> None:
    """GET /v2/{name}/manifests/{ref} answers the body, its media type and its sha256 digest."""
    response = acr.get(f"/v2/{enc('team/api')}/manifests/{reference}", "repository:team/api:pull")
    assert response.status_code == 200
    validate(response.json(), schema_for("/v2/{name}/manifests/{reference}", "get", "200"))
    digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["Content-Type"] == response.json()["mediaType"]


def test_referrer_body_names_its_subject(acr: Acr, demo: Emulators) -> None:
    """A referrer's body carries `subject` with the digest of the manifest it is attached to."""
    subject = demo.acr.state.resolve("team/api", "PR1234")
    referrer = next(
        d
        for d in demo.acr.state.digests("team/api")
        if demo.acr.state.manifest("team/api", d).subject
    )
    response = acr.get(f"/v2/team/api/manifests/{referrer}", "repository:team/api:pull")
    assert response.json()["subject"]["digest"] == subject
    assert response.json()["mediaType"] == "application/vnd.oci.image.manifest.v1+json"


# --- auth ----------------------------------------------------------------------------------


def test_unauthenticated_request_gets_the_exact_challenge(acr: Acr) -> None:
    """Without a token: 401 with `Bearer realm="https://HOST/oauth2/token",service=,scope=`."""
    response = acr.http.get(f"/acr/v1/{enc('team/api')}/_tags")
    assert response.status_code == 401
    host = acr.service
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer realm="https://{host}/oauth2/token",service="{host}",'
        'scope="repository:team/api:metadata_read"'
    )
    assert errors_of(response)[0]["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/acr/v1/_catalog", "registry:catalog:*"),
        ("DELETE", "/acr/v1/web/_tags/latest", "repository:web:delete"),
        ("GET", "/v2/web/manifests/latest", "repository:web:pull"),
    ],
)
def test_challenge_names_the_scope_the_route_needs(
    acr: Acr, method: str, path: str, scope: str
) -> None:
    """The challenge's scope is what the route needs: catalog, delete, pull."""
    response = acr.http.request(method, path)
    assert response.headers["WWW-Authenticate"].endswith(f',scope="{scope}"')


def test_refresh_token_decodes_with_plain_base64_like_the_sdk(acr: Acr) -> None:
    """The SDK's _parse_exp_time (plain b64decode) reads the refresh token's expiry."""
    from azure.containerregistry._helpers import _parse_exp_time

    token = acr.refresh_token()
    payload = token.split(".")[1]
    claims = json.loads(base64.b64decode(payload + "=" * (len(payload) % 4)))
    assert _parse_exp_time(token) == claims["exp"]


@pytest.mark.parametrize("resource", [DEVOPS_RESOURCE, "https://management.azure.com"])
def test_exchange_refuses_an_entra_token_for_another_resource(acr: Acr, resource: str) -> None:
    """/oauth2/exchange accepts only Entra tokens issued for the registry's resource."""
    entra, _ = acr.emu.issuer.issue(resource)
    response = acr.http.post(
        "/oauth2/exchange",
        data={"grant_type": "access_token", "service": acr.service, "access_token": entra},
    )
    assert response.status_code == 401
    assert errors_of(response)[0]["code"] == "UNAUTHORIZED"


def test_exchange_refuses_an_expired_entra_token(acr: Acr) -> None:
    """An expired Entra token is refused."""
    entra, _ = acr.emu.issuer.issue(ACR_RESOURCE, lifetime_s=-1)
    response = acr.http.post(
        "/oauth2/exchange",
        data={"grant_type": "access_token", "service": acr.service, "access_token": entra},
    )
    assert response.status_code == 401


def test_a_token_to_read_one_repository_cannot_delete_in_another(acr: Acr, demo: Emulators) -> None:
    """Access tokens are bound to their scopes: reading team/api grants nothing on web."""
    token = acr.access_token("repository:team/api:metadata_read,delete")
    response = acr.http.delete(
        "/acr/v1/web/_tags/latest", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert 'scope="repository:web:delete"' in response.headers["WWW-Authenticate"]
    assert demo.acr.state.has_tag("web", "latest")


def test_a_read_token_cannot_delete(acr: Acr) -> None:
    """metadata_read does not grant delete in the same repository."""
    token = acr.access_token("repository:web:metadata_read")
    response = acr.http.delete(
        "/acr/v1/web/_tags/latest", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


def test_wildcard_scope_works_in_normal_mode(acr: Acr) -> None:
    """`registry:catalog:* repository:*:*` reads and deletes anywhere on a normal registry."""
    assert acr.get("/acr/v1/web/_tags").status_code == 200
    assert acr.delete("/acr/v1/web/_tags/latest").status_code == 202


def test_abac_mode_drops_the_repository_wildcard(acr: Acr, demo: Emulators) -> None:
    """In ABAC mode a wildcard token lists the catalog but is refused on repositories."""
    demo.acr.knobs.mode = "abac"
    token = acr.access_token(WILDCARD)
    headers = {"Authorization": f"Bearer {token}"}
    assert acr.http.get("/acr/v1/_catalog", headers=headers).status_code == 200
    assert acr.http.get("/acr/v1/web/_tags", headers=headers).status_code == 401
    scoped = acr.access_token("repository:web:pull,delete,metadata_read,metadata_write")
    assert (
        acr.http.get("/acr/v1/web/_tags", headers={"Authorization": f"Bearer {scoped}"}).status_code
        == 200
    )


def test_revoked_tokens_are_refused(acr: Acr, demo: Emulators) -> None:
    """After revoke_tokens() (a forced expiry) earlier tokens get the challenge again,
    a token already accepted (its signature checked once) included."""
    token = acr.access_token(WILDCARD)
    headers = {"Authorization": f"Bearer {token}"}
    assert acr.http.get("/acr/v1/web/_tags", headers=headers).status_code == 200
    demo.acr.knobs.revoke_tokens()
    response = acr.http.get("/acr/v1/web/_tags", headers=headers)
    assert response.status_code == 401


def test_a_refresh_token_is_no_access_token(acr: Acr) -> None:
    """A refresh token, even one just accepted at /oauth2/token, opens no repository."""
    refresh = acr.refresh_token()
    form = {
        "grant_type": "refresh_token",
        "service": acr.service,
        "scope": WILDCARD,
        "refresh_token": refresh,
    }
    assert acr.http.post("/oauth2/token", data=form).status_code == 200
    response = acr.http.get("/acr/v1/web/_tags", headers={"Authorization": f"Bearer {refresh}"})
    assert response.status_code == 401


def test_latency_includes_the_handlers_own_time(acr: Acr, demo: Emulators) -> None:
    """With a latency of L every answer comes L after the request arrived, not later."""
    token = acr.access_token(WILDCARD)
    demo.acr.knobs.latency_ms = 60
    demo.log.clear()
    response = acr.http.get("/acr/v1/web/_tags", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    (entry,) = demo.log.entries()
    assert entry.received <= entry.at
    assert 0.06 <= entry.at - entry.received < 0.5
    assert response.elapsed.total_seconds() >= 0.06


def test_latency_holds_back_errors_and_dropped_connections(acr: Acr, demo: Emulators) -> None:
    """An unknown route's 404 and an injected drop come the latency after the request too."""
    demo.acr.knobs.latency_ms = 60
    missing = acr.http.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.elapsed.total_seconds() >= 0.06
    token = acr.access_token(WILDCARD)
    demo.acr.knobs.faults.add(FaultRule(route="acr.tags.list", kind="drop"))
    demo.log.clear()
    with pytest.raises(httpx.TransportError):
        acr.http.get("/acr/v1/web/_tags", headers={"Authorization": f"Bearer {token}"})
    (entry,) = demo.log.entries()
    assert entry.status == 0
    assert entry.at - entry.received >= 0.06


def test_access_token_lifetime_is_a_knob(acr: Acr, demo: Emulators) -> None:
    """Access tokens expire after `access_token_lifetime_s` (here: already expired)."""
    demo.acr.knobs.access_token_lifetime_s = -1
    token = acr.access_token(WILDCARD)
    response = acr.http.get("/acr/v1/web/_tags", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


# --- paging ----------------------------------------------------------------------------------


@pytest.fixture
def big(start_emulators: Any) -> Iterator[Acr]:
    builder = ScenarioBuilder()
    for i in range(105):
        builder.image(f"repo-{i:03d}", "latest")
    for i in range(230):
        builder.image("team/big", f"t{i:03d}", age_days=(i * 7919) % 230)
    client = Acr(start_emulators(builder.build()))
    yield client
    client.http.close()


def _follow(acr: Acr, path: str, key: str, scope: str = WILDCARD) -> tuple[list[Any], list[str]]:
    items: list[Any] = []
    links: list[str] = []
    url: str | None = path
    while url:
        response = acr.get(url, scope)
        assert response.status_code == 200
        items.extend(response.json()[key])
        link = response.headers.get("Link")
        url = None
        if link:
            links.append(link)
            match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert match, link
            url = match[1]
    return items, links


def test_catalog_pages_by_100_with_a_link_header(big: Acr) -> None:
    """The default page is 100; `Link` points past the last name; no Link on the last page."""
    names, links = _follow(big, "/acr/v1/_catalog", "repositories", "registry:catalog:*")
    assert len(names) == 106
    assert names == sorted(names)
    assert links == ['</acr/v1/_catalog?last=repo-099&n=100&orderby=>; rel="next"']


def test_last_means_after_this_value_lexically(big: Acr) -> None:
    """`last` need not exist: the page starts after it in lexical order; `n` sizes the page."""
    response = big.get("/acr/v1/_catalog?last=repo-0505&n=3", "registry:catalog:*")
    assert response.json()["repositories"] == ["repo-051", "repo-052", "repo-053"]


@pytest.mark.parametrize("order", ["timedesc", "timeasc"])
def test_tags_page_in_time_order(big: Acr, order: str) -> None:
    """orderby=timedesc|timeasc orders by lastUpdateTime across pages."""
    tags, links = _follow(big, f"/acr/v1/{enc('team/big')}/_tags?n=50&orderby={order}", "tags")
    assert len(tags) == 230
    assert len(links) == 4
    assert all(f"orderby={order}" in link for link in links)
    times = [t["lastUpdateTime"] for t in tags]
    assert times == sorted(times, reverse=order == "timedesc")


def test_tags_page_lexically_without_orderby(big: Acr) -> None:
    """Without orderby, tags come in lexical order, paged past 100."""
    tags, links = _follow(big, f"/acr/v1/{enc('team/big')}/_tags", "tags")
    names = [t["name"] for t in tags]
    assert names == sorted(names)
    assert len(names) == 230
    assert links[0].startswith(f"</acr/v1/{enc('team/big')}/_tags?last=t099&n=100")


def test_manifests_page_too(big: Acr) -> None:
    """Manifests page like tags (Link, n)."""
    items, links = _follow(big, "/acr/v1/team/big/_manifests?n=100", "manifests")
    assert len(items) == 230
    assert len(links) == 2


def test_paging_in_time_order_survives_deletions_between_pages(big: Acr) -> None:
    """A tag deleted after it ended a page still anchors the next page."""
    first = big.get(f"/acr/v1/{enc('team/big')}/_tags?n=10&orderby=timedesc")
    last = first.json()["tags"][-1]["name"]
    assert big.delete(f"/acr/v1/{enc('team/big')}/_tags/{last}").status_code == 202
    url = re.fullmatch(r'<([^>]+)>; rel="next"', first.headers["Link"])
    assert url
    second = big.get(url[1])
    assert second.json()["tags"][0]["lastUpdateTime"] <= last
    assert len(second.json()["tags"]) == 10


# --- deletions and locks ------------------------------------------------------------------


def test_delete_tag_answers_202_then_404_tag_unknown(acr: Acr, demo: Emulators) -> None:
    """Deleting a tag answers 202; again, 404 TAG_UNKNOWN; the manifest stays."""
    digest = demo.acr.state.resolve("team/api", "latest")
    assert acr.delete(f"/acr/v1/{enc('team/api')}/_tags/latest").status_code == 202
    again = acr.delete(f"/acr/v1/{enc('team/api')}/_tags/latest")
    assert again.status_code == 404
    assert errors_of(again)[0]["code"] == "TAG_UNKNOWN"
    assert errors_of(again)[0]["message"] == "the specified tag does not exist"
    assert demo.acr.state.has_manifest("team/api", digest)


def test_delete_manifest_removes_its_tags(acr: Acr, demo: Emulators) -> None:
    """DELETE /v2/{name}/manifests/{digest} answers 202 and takes its tags with it."""
    digest = demo.acr.state.resolve("team/api", "latest")
    assert acr.delete(f"/v2/{enc('team/api')}/manifests/{digest}").status_code == 202
    assert not demo.acr.state.has_manifest("team/api", digest)
    assert not demo.acr.state.has_tag("team/api", "latest")
    assert not demo.acr.state.has_tag("team/api", "v1.4.2")
    assert acr.delete(f"/v2/{enc('team/api')}/manifests/{digest}").status_code == 404


@pytest.mark.parametrize(
    "path", ["/acr/v1/team%2Fapi/_tags/pr-1240", "/v2/team%2Fapi/manifests/{locked}"]
)
def test_locked_items_refuse_deletion(acr: Acr, demo: Emulators, path: str) -> None:
    """A locked tag or manifest (deleteEnabled false) refuses deletion with LOCKED_ERROR."""
    path = path.format(locked=demo.acr.state.resolve("team/api", "locked-image"))
    response = acr.delete(path)
    assert response.status_code == LOCKED_STATUS
    assert errors_of(response)[0] == LOCKED_ERROR


def test_locks_can_be_changed_with_patch(acr: Acr, demo: Emulators) -> None:
    """PATCH _tags/{tag} with deleteEnabled=false locks it (the SDK's update_tag_properties)."""
    token = acr.access_token("repository:web:metadata_write,delete")
    headers = {"Authorization": f"Bearer {token}"}
    patched = acr.http.patch(
        "/acr/v1/web/_tags/latest", json={"deleteEnabled": False}, headers=headers
    )
    validate(patched.json(), schema_for("/acr/v1/{name}/_tags/{reference}", "patch", "200"))
    assert acr.http.delete("/acr/v1/web/_tags/latest", headers=headers).status_code == LOCKED_STATUS


def test_manifest_locks_can_be_changed_with_patch(acr: Acr, demo: Emulators) -> None:
    """PATCH _manifests/{digest} answers ManifestAttributes and locks the manifest."""
    digest = demo.acr.state.resolve("web", "latest")
    token = acr.access_token("repository:web:metadata_write,delete")
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/acr/v1/web/_manifests/{digest}"
    patched = acr.http.patch(path, json={"deleteEnabled": False}, headers=headers)
    validate(patched.json(), schema_for("/acr/v1/{name}/_manifests/{digest}", "patch", "200"))
    deleted = acr.http.delete(f"/v2/web/manifests/{digest}", headers=headers)
    assert deleted.status_code == LOCKED_STATUS


# --- bad requests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/acr/v1/_catalog?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
        ("/acr/v1/web/_tags?n=0", 400, "PAGINATION_NUMBER_INVALID"),
        ("/acr/v1/web/_tags?orderby=sideways", 400, "UNSUPPORTED"),
        ("/acr/v1/nope/_tags", 404, "NAME_UNKNOWN"),
        ("/acr/v1/web/_tags/nope", 404, "TAG_UNKNOWN"),
        ("/acr/v1/web/_manifests/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/acr/v1/web/_manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
        ("/v2/web/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("/v2/nope/manifests/latest", 404, "NAME_UNKNOWN"),
    ],
)
def test_bad_requests_get_registry_errors(acr: Acr, path: str, status: int, code: str) -> None:
    """Bad `n`, orderby, digests, unknown repositories and tags get ACR's error bodies."""
    response = acr.get(path)
    assert response.status_code == status
    assert errors_of(response)[0]["code"] == code


def test_deleting_a_manifest_by_tag_is_refused(acr: Acr) -> None:
    """Manifests are deleted by digest only: a tag reference answers 400 DIGEST_INVALID."""
    response = acr.delete("/v2/web/manifests/latest")
    assert response.status_code == 400
    assert errors_of(response)[0]["code"] == "DIGEST_INVALID"


@pytest.mark.parametrize("path", ["/nothing/here", "/acr/v2/_catalog", "/v2/web/what/latest"])
def test_unknown_paths_answer_text_404(acr: Acr, path: str) -> None:
    """Unknown paths answer `404 page not found` as text/plain, like the real service."""
    response = acr.http.get(path)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.strip() == "404 page not found"


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"grant_type": "password"}, 400),
        ({"grant_type": "refresh_token", "refresh_token": "not-a-token", "scope": WILDCARD}, 401),
        ({"grant_type": "refresh_token", "scope": "nonsense"}, 400),
    ],
)
def test_bad_token_requests_get_errors(acr: Acr, form: dict[str, str], status: int) -> None:
    """The token endpoint answers bad grant types, refresh tokens and scopes with errors."""
    form = {"service": acr.service, **form}
    if "refresh_token" not in form:
        form["refresh_token"] = acr.refresh_token()
    response = acr.http.post("/oauth2/token", data=form)
    assert response.status_code == status
    errors_of(response)


def test_write_budget_answers_429_with_retry_after(acr: Acr, demo: Emulators) -> None:
    """Past the write budget of its window, writes get 429 TOOMANYREQUESTS with Retry-After."""
    demo.acr.knobs.write_budget = Budget(1, window_s=3600)
    assert acr.delete("/acr/v1/web/_tags/latest").status_code == 202
    response = acr.delete(f"/acr/v1/{enc('team/api')}/_tags/latest")
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert errors_of(response)[0]["code"] == "TOOMANYREQUESTS"
    assert acr.get("/acr/v1/web/_tags").status_code == 200  # reads have their own budget


def test_every_request_is_logged_under_an_acr_route(acr: Acr) -> None:
    """The request log names every route `acr.<something>`."""
    acr.get("/acr/v1/_catalog", "registry:catalog:*")
    acr.http.get("/nowhere")
    routes = acr.emu.log.by_route("acr")
    assert {"acr.oauth2.exchange", "acr.oauth2.token", "acr.catalog", "acr.unknown"} <= set(routes)
    assert all(route.startswith("acr.") for route in routes)


# --- the real SDK with ManagedIdentityCredential --------------------------------------------


@pytest.fixture
def paged(start_emulators: Any, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    builder = ScenarioBuilder()
    for i in range(120):
        builder.image(f"svc-{i:03d}", "latest")
    for i in range(150):
        builder.image("team/api", f"PR{i}")
    builder.image("team/api", "locked", locked_tags=("locked",))
    emu: Emulators = start_emulators(builder.build())
    monkeypatch.setenv("IDENTITY_ENDPOINT", emu.env["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", emu.env["IDENTITY_HEADER"])
    return emu


def sdk_client(emu: Emulators, credential: ManagedIdentityCredential) -> ContainerRegistryClient:
    return ContainerRegistryClient(
        emu.acr.url,
        credential,
        audience="https://containerregistry.azure.net",
        connection_verify=str(emu.ca_file),
    )


async def test_sdk_lists_reads_and_deletes_with_managed_identity(paged: Emulators) -> None:
    """The real aio client with ManagedIdentityCredential pages, reads and deletes."""
    async with ManagedIdentityCredential() as credential, sdk_client(paged, credential) as client:
        names = [n async for n in client.list_repository_names()]
        assert len(names) == 121
        tags = [
            t
            async for t in client.list_tag_properties(
                "team/api", order_by=ArtifactTagOrder.LAST_UPDATED_ON_DESCENDING
            )
        ]
        assert len(tags) == 151
        props = await client.get_tag_properties("team/api", "PR7")
        manifest = await client.get_manifest("team/api", props.digest)
        assert manifest.digest == props.digest
        await client.delete_tag("team/api", "PR7")
        await client.delete_tag("team/api", "PR7")  # 404: the SDK ignores it
        other = await client.get_manifest_properties("team/api", "PR8")
        await client.delete_manifest("team/api", other.digest)
    assert not paged.acr.state.has_tag("team/api", "PR7")
    assert not paged.acr.state.has_manifest("team/api", other.digest)
    assert paged.log.count(service="identity") >= 1
    assert paged.log.count(route="acr.catalog", status=200) == 2
    assert paged.log.count(route="acr.tags.list", status=200) == 2


async def test_sdk_gets_an_error_for_a_locked_tag(paged: Emulators) -> None:
    """Deleting a locked tag through the SDK raises HttpResponseError with the lock's status."""
    async with ManagedIdentityCredential() as credential, sdk_client(paged, credential) as client:
        with pytest.raises(HttpResponseError) as raised:
            await client.delete_tag("team/api", "locked")
    assert raised.value.status_code == LOCKED_STATUS
    assert paged.acr.state.has_tag("team/api", "locked")


# --- seeding and the command line ----------------------------------------------------------


def test_bulk_seeding_builds_a_large_registry() -> None:
    """iter_bulk_images + bulk_seed push 200 repositories of 50 tags with real digests."""
    from emulators.acr import AcrState, image_body

    state = AcrState()
    assert bulk_seed(state, iter_bulk_images(200, 50)) == 10_000
    assert len(state.repository_names()) == 200
    assert state.tag_count == 10_000 + 200
    name = state.repository_names()[0]
    digest = state.resolve(name, "latest")
    body = state.manifest(name, digest).body
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    assert json.loads(body) == json.loads(image_body(f"{name}:0:49"))


def test_python_m_emulators_prints_export_lines(tmp_path: Path) -> None:
    """`python -m emulators --seed demo` prints the environment as export lines, then serves."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators", "--seed", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(7)]
        exported = dict(line.removeprefix("export ").split("=", 1) for line in lines)
        assert set(exported) == {
            "CLEANUP_REGISTRY",
            "SSL_CERT_FILE",
            "AZURE_DEVOPS_ORG_URL",
            "AZURE_DEVOPS_PROJECT",
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "AZURE_DEVOPS_PAT",
        }
        with httpx.Client(
            verify=ssl.create_default_context(cafile=exported["SSL_CERT_FILE"])
        ) as http:
            response = http.get(exported["CLEANUP_REGISTRY"] + "/v2/")
        assert response.status_code == 401  # serving, with the challenge
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
