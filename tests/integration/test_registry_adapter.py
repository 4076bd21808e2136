"""The registry adapter through the real SDK and ManagedIdentityCredential, on the emulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.identity.aio import ManagedIdentityCredential

from cleanup.errors import (
    AuthenticationError,
    LockedError,
    RegistryOperationError,
    ServiceUnreachableError,
)
from cleanup.registry import AcrRegistry
from emulators import Emulators
from emulators.acr import Budget
from emulators.entra import DEVOPS_RESOURCE, TokenIssuer
from emulators.harness import FaultRule
from emulators.scenario import ScenarioBuilder

pytestmark = pytest.mark.integration


def scenario() -> ScenarioBuilder:
    builder = ScenarioBuilder()
    builder.image("team/api", "v1.4.2", "latest")
    builder.image("team/api", "PR1234", platforms=("linux/amd64", "linux/arm64"))
    builder.image("team/api", subject="PR1234")
    builder.image("team/api", "pr-1240", locked_tags=("pr-1240",))
    builder.image("team/api", "frozen", locked=True)
    builder.image("team/api", "PR1250")
    builder.image("web", "latest", "PR7")
    return builder


@pytest.fixture
def emu(start_emulators: Any, monkeypatch: pytest.MonkeyPatch) -> Emulators:
    started: Emulators = start_emulators(scenario().build())
    monkeypatch.setenv("IDENTITY_ENDPOINT", started.env["IDENTITY_ENDPOINT"])
    monkeypatch.setenv("IDENTITY_HEADER", started.env["IDENTITY_HEADER"])
    return started


@pytest.fixture
async def registry(emu: Emulators) -> AsyncIterator[AcrRegistry]:
    async with (
        ManagedIdentityCredential() as credential,
        AcrRegistry(emu.acr.url, credential, ca_file=str(emu.ca_file)) as adapter,
    ):
        yield adapter


def acr_requests(emu: Emulators) -> int:
    return emu.log.count(service="acr")


# --- listing ---------------------------------------------------------------------------------


async def test_lists_repository_names_past_one_page(emu: Emulators, registry: AcrRegistry) -> None:
    """list_repository_names follows the catalog's Link header past 100 names."""
    for i in range(150):
        emu.acr.state.add_image(f"svc/{i:03d}", ["latest"])
    names = [n async for n in registry.list_repository_names()]
    assert len(names) == 152
    assert emu.log.count(route="acr.catalog", status=200) == 2


async def test_listing_carries_tags_locks_children_and_subjects(
    emu: Emulators, registry: AcrRegistry
) -> None:
    """Tags with their locks; manifests with tags, index children, referrers' subjects, locks."""
    listing = await registry.list_repository("team/api")
    assert listing.complete
    tags = {t.name: t for t in listing.tags}
    assert set(tags) == {"v1.4.2", "latest", "PR1234", "pr-1240", "frozen", "PR1250"}
    assert tags["pr-1240"].delete_enabled is False
    assert tags["latest"].delete_enabled is True
    assert tags["latest"].last_updated is not None
    manifests = {m.digest: m for m in listing.manifests}
    index = manifests[emu.acr.state.resolve("team/api", "PR1234")]
    assert index.media_type == "application/vnd.oci.image.index.v1+json"
    assert len(index.references) == 2
    assert set(index.references) <= set(manifests)
    referrers = [m for m in listing.manifests if m.subject is not None]
    assert [r.subject for r in referrers] == [index.digest]
    assert manifests[emu.acr.state.resolve("team/api", "frozen")].delete_enabled is False
    # Only the untagged manifest that is no index child needed its body read.
    assert emu.log.count(route="acr.manifest.get") == 1


async def test_tags_past_one_page_are_all_listed(emu: Emulators, registry: AcrRegistry) -> None:
    """Tags and manifests page past 100 in list_repository."""
    for i in range(130):
        emu.acr.state.add_image("big", [f"PR{i}"])
    listing = await registry.list_repository("big")
    assert len(listing.tags) == 130
    assert len(listing.manifests) == 130
    assert emu.log.count(route="acr.tags.list", status=200) == 2


async def test_a_listing_that_breaks_off_is_incomplete(
    emu: Emulators, registry: AcrRegistry
) -> None:
    """A page that cannot be read makes the listing complete=False with the reason."""
    for i in range(130):
        emu.acr.state.add_image("big", [f"PR{i}"])
    emu.acr.knobs.faults.add(FaultRule(route="acr.tags.list", kind="malformed", skip=1))
    listing = await registry.list_repository("big")
    assert not listing.complete
    assert listing.tags == ()
    assert listing.error


async def test_listing_an_unknown_repository_is_incomplete(registry: AcrRegistry) -> None:
    """A repository that vanished answers NAME_UNKNOWN: incomplete, not an empty listing."""
    listing = await registry.list_repository("gone")
    assert not listing.complete
    assert "NAME_UNKNOWN" in (listing.error or "")


# --- deleting --------------------------------------------------------------------------------


async def test_deletes_tags_and_manifests(emu: Emulators, registry: AcrRegistry) -> None:
    """delete_tag removes a tag; delete_manifest removes a manifest and its tags."""
    digest = emu.acr.state.resolve("web", "latest")
    await registry.delete_tag("team/api", "PR1250")
    await registry.delete_manifest("web", digest)
    assert not emu.acr.state.has_tag("team/api", "PR1250")
    assert not emu.acr.state.has_manifest("web", digest)
    assert not emu.acr.state.has_tag("web", "PR7")


async def test_deleting_what_is_gone_counts_as_done(emu: Emulators, registry: AcrRegistry) -> None:
    """404 on delete (tag or manifest already gone) is not an error."""
    await registry.delete_tag("team/api", "no-such-tag")
    await registry.delete_manifest("team/api", "sha256:" + "0" * 64)


async def test_a_locked_tag_raises_locked_error(emu: Emulators, registry: AcrRegistry) -> None:
    """A locked tag raises LockedError and stays."""
    with pytest.raises(LockedError):
        await registry.delete_tag("team/api", "pr-1240")
    assert emu.acr.state.has_tag("team/api", "pr-1240")


async def test_a_locked_manifest_raises_locked_error(emu: Emulators, registry: AcrRegistry) -> None:
    """A locked manifest raises LockedError and stays, with its tag."""
    digest = emu.acr.state.resolve("team/api", "frozen")
    with pytest.raises(LockedError):
        await registry.delete_manifest("team/api", digest)
    assert emu.acr.state.has_tag("team/api", "frozen")


async def test_server_errors_are_retried(emu: Emulators, registry: AcrRegistry) -> None:
    """Two 503s on a deletion are retried by azure-core; the deletion succeeds."""
    emu.acr.knobs.faults.add(FaultRule(route="acr.tag.delete", status=503, retry_after=0, times=2))
    await registry.delete_tag("team/api", "PR1250")
    assert not emu.acr.state.has_tag("team/api", "PR1250")
    assert emu.log.count(route="acr.tag.delete", status=503) == 2


async def test_unretryable_failures_raise_registry_operation_error(
    emu: Emulators, registry: AcrRegistry
) -> None:
    """A 400 on a deletion raises RegistryOperationError (the run goes on without it)."""
    emu.acr.knobs.faults.add(FaultRule(route="acr.tag.delete", status=400))
    with pytest.raises(RegistryOperationError):
        await registry.delete_tag("team/api", "PR1250")


async def test_throttled_deletions_wait_for_the_next_window(emu: Emulators) -> None:
    """Over the write budget every deletion eventually succeeds, honouring Retry-After."""
    for i in range(12):
        emu.acr.state.add_image("burst", [f"PR{i}"])
    emu.acr.knobs.write_budget = Budget(5, window_s=1.0)
    async with (
        ManagedIdentityCredential() as credential,
        AcrRegistry(emu.acr.url, credential, ca_file=str(emu.ca_file), concurrency=12) as adapter,
    ):
        await asyncio.gather(*(adapter.delete_tag("burst", f"PR{i}") for i in range(12)))
    assert emu.acr.state.tag_names("burst") == []
    assert emu.log.count(route="acr.tag.delete", status=429) > 0
    assert emu.log.count(route="acr.tag.delete", status=202) == 12


# --- auth ----------------------------------------------------------------------------------


async def test_requests_per_operation_stay_close_to_one(
    emu: Emulators, registry: AcrRegistry
) -> None:
    """Over a few hundred operations the token cache keeps ACR requests per operation ≤ 1.2."""
    for r in range(40):
        emu.acr.state.add_image(f"team/svc-{r:02d}", ["latest"])
        for t in range(6):
            emu.acr.state.add_image(f"team/svc-{r:02d}", [f"PR{r * 10 + t}"])
    emu.log.clear()
    operations = 0
    names = [n async for n in registry.list_repository_names()]
    operations += 1
    listings = await asyncio.gather(*(registry.list_repository(n) for n in names))
    operations += 2 * len(listings) + emu.log.count(route="acr.manifest.get")
    deletions = [(n.name, t.name) for n in listings for t in n.tags if t.name.startswith("PR")]
    deletions = [(r, t) for r, t in deletions if r.startswith("team/svc")]
    await asyncio.gather(*(registry.delete_tag(r, t) for r, t in deletions))
    operations += len(deletions)
    ratio = acr_requests(emu) / operations
    print(f"ACR requests per operation: {acr_requests(emu)}/{operations} = {ratio:.3f}")  # noqa: T201
    assert operations > 300
    assert ratio <= 1.2, emu.log.by_route("acr")
    assert emu.log.count(service="acr", status=401) == 0


async def test_abac_registry_works_with_per_repository_tokens(
    emu: Emulators, registry: AcrRegistry
) -> None:
    """In ABAC mode the adapter falls back to per-repository tokens, batched over the catalog."""
    emu.acr.knobs.mode = "abac"
    for i in range(25):
        emu.acr.state.add_image(f"abac/{i:02d}", ["PR1"])
    names = [n async for n in registry.list_repository_names()]
    listings = await asyncio.gather(*(registry.list_repository(n) for n in names))
    assert all(listing.complete for listing in listings)
    await registry.delete_tag("abac/07", "PR1")
    assert not emu.acr.state.has_tag("abac/07", "PR1")
    assert registry.token_cache.wildcard_refused
    assert emu.log.count(route="acr.oauth2.token") <= 2 + len(names) // 10 + 1


async def test_revoked_access_tokens_are_renewed_mid_run(
    emu: Emulators, registry: AcrRegistry
) -> None:
    """Tokens that stop working mid-run (401) are renewed without failing an operation."""
    await registry.list_repository("web")
    emu.acr.knobs.revoke_tokens()
    listing = await registry.list_repository("team/api")
    await registry.delete_tag("web", "PR7")
    assert listing.complete
    assert emu.log.count(route="acr.oauth2.exchange") == 2


async def test_access_token_expiry_mid_run_is_renewed(emu: Emulators) -> None:
    """Short-lived access tokens are renewed before they expire, without a failed operation."""
    emu.acr.knobs.access_token_lifetime_s = 2.0
    async with (
        ManagedIdentityCredential() as credential,
        AcrRegistry(emu.acr.url, credential, ca_file=str(emu.ca_file)) as adapter,
    ):
        await adapter.list_repository("web")
        await asyncio.sleep(2.1)  # past the first token's expiry
        listing = await adapter.list_repository("team/api")
    assert listing.complete
    assert emu.log.count(route="acr.oauth2.token") == 2
    assert emu.log.count(route="acr.oauth2.exchange") == 1


class WrongAudience:
    """An AsyncTokenCredential that hands out Azure DevOps tokens (a misconfiguration)."""

    def __init__(self, issuer: TokenIssuer) -> None:
        self._issuer = issuer

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token, expires = self._issuer.issue(DEVOPS_RESOURCE)
        return AccessToken(token, int(expires))

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> WrongAudience:
        return self

    async def __aexit__(self, *args: object) -> None:
        return None


async def test_refused_credential_raises_authentication_error(emu: Emulators) -> None:
    """When the registry refuses the Entra token, the adapter raises AuthenticationError."""
    credential = WrongAudience(emu.issuer)
    async with AcrRegistry(emu.acr.url, credential, ca_file=str(emu.ca_file)) as adapter:  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError) as refused:
            [n async for n in adapter.list_repository_names()]
        with pytest.raises(AuthenticationError):
            await adapter.list_repository("web")
    # The credential gave a token; the registry refused it: the error names the registry.
    assert refused.value.service == "the registry"


async def test_unreachable_registry_raises_service_unreachable(emu: Emulators) -> None:
    """Connection failures after retries raise ServiceUnreachableError."""
    credential = WrongAudience(emu.issuer)
    async with AcrRegistry(
        "https://127.0.0.1:9",
        credential,
        ca_file=str(emu.ca_file),
        retry_backoff_factor=0.01,  # type: ignore[arg-type]
    ) as adapter:
        with pytest.raises(ServiceUnreachableError):
            await adapter.delete_tag("web", "latest")


async def test_concurrency_bounds_requests_in_flight(emu: Emulators) -> None:
    """With concurrency=1 requests go one at a time: ten 50 ms answers take at least 0.5 s."""
    for i in range(10):
        emu.acr.state.add_image("serial", [f"PR{i}"])
    async with (
        ManagedIdentityCredential() as credential,
        AcrRegistry(emu.acr.url, credential, ca_file=str(emu.ca_file), concurrency=1) as adapter,
    ):
        await adapter.list_repository("web")  # tokens first
        emu.acr.knobs.latency_ms = 50
        started = time.monotonic()
        await asyncio.gather(*(adapter.delete_tag("serial", f"PR{i}") for i in range(10)))
        elapsed = time.monotonic() - started
    assert elapsed >= 0.5
    assert emu.acr.state.tag_names("serial") == []


async def test_trusts_ssl_cert_file_when_no_ca_file_is_given(
    emu: Emulators, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ca_file the adapter trusts what SSL_CERT_FILE names when it opens."""
    monkeypatch.setenv("SSL_CERT_FILE", str(emu.ca_file))
    async with (
        ManagedIdentityCredential() as credential,
        AcrRegistry(emu.acr.url, credential) as adapter,
    ):
        assert (await adapter.list_repository("web")).complete
