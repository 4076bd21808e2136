"""The registry adapter's token cache: one refresh token, access tokens per scope, renewals."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from cleanup.registry import (
    CATALOG,
    REPOSITORIES_PER_TOKEN,
    WILDCARD_SCOPE,
    AcrTokenCache,
    RefreshTokenRejectedError,
    grants_repository_wildcard,
    jwt_claims,
    resource_of,
)


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.sig"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeRegistry:
    """A TokenSource that counts requests; wildcard grants are a switch (ABAC mode)."""

    def __init__(self, clock: Clock, *, lifetime_s: float = 3600, abac: bool = False) -> None:
        self.clock = clock
        self.lifetime_s = lifetime_s
        self.abac = abac
        self.exchanges = 0
        self.scopes: list[str] = []
        self.valid_refresh: set[str] = set()

    async def exchange(self) -> str:
        self.exchanges += 1
        token = jwt({"exp": self.clock.now + 3 * self.lifetime_s, "n": self.exchanges})
        self.valid_refresh.add(token)
        return token

    async def access(self, refresh_token: str, scope: str) -> str:
        if refresh_token not in self.valid_refresh:
            raise RefreshTokenRejectedError("refused")
        self.scopes.append(scope)
        access = []
        for item in scope.split():
            kind, _, rest = item.partition(":")
            name = rest.rpartition(":")[0]
            if not (self.abac and kind == "repository" and name == "*"):
                access.append({"type": kind, "name": name, "actions": ["*"]})
        return jwt(
            {"exp": self.clock.now + self.lifetime_s, "access": access, "n": len(self.scopes)}
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> AcrTokenCache:
    return AcrTokenCache(clock=clock, margin_s=60)


async def test_one_wildcard_token_serves_every_repository(
    cache: AcrTokenCache, clock: Clock
) -> None:
    """One exchange and one wildcard token serve the catalog and every repository."""
    source = FakeRegistry(clock)
    grants = [await cache.token_for(r, source) for r in (CATALOG, "a", "team/b", "a")]
    assert len({g.value for g in grants}) == 1
    assert source.exchanges == 1
    assert source.scopes == [WILDCARD_SCOPE]
    assert [g.fresh for g in grants] == [True, False, False, False]


async def test_tokens_are_renewed_before_they_expire(cache: AcrTokenCache, clock: Clock) -> None:
    """An access token is renewed within the margin before its expiry, not after."""
    source = FakeRegistry(clock, lifetime_s=3600)
    first = await cache.token_for("a", source)
    clock.now += 3600 - 61
    assert (await cache.token_for("a", source)).value == first.value
    clock.now += 2
    assert (await cache.token_for("a", source)).value != first.value
    assert len(source.scopes) == 2


async def test_short_lived_tokens_are_renewed_at_80_percent(
    cache: AcrTokenCache, clock: Clock
) -> None:
    """With lifetimes shorter than the margin, renewal comes at 80% of the lifetime."""
    source = FakeRegistry(clock, lifetime_s=10)
    first = await cache.token_for("a", source)
    clock.now += 7.9
    assert (await cache.token_for("a", source)).value == first.value
    clock.now += 0.2
    assert (await cache.token_for("a", source)).value != first.value


async def test_abac_registry_falls_back_to_per_repository_tokens(
    cache: AcrTokenCache, clock: Clock
) -> None:
    """A wildcard token without repository access switches the cache to per-repository scopes."""
    source = FakeRegistry(clock, abac=True)
    catalog = await cache.token_for(CATALOG, source)
    repo = await cache.token_for("team/api", source)
    assert cache.wildcard_refused
    assert catalog.value != repo.value
    assert source.scopes == [
        WILDCARD_SCOPE,
        "registry:catalog:*",
        "repository:team/api:pull,delete,metadata_read,metadata_write",
    ]


async def test_abac_tokens_are_batched_over_hinted_repositories(
    cache: AcrTokenCache, clock: Clock
) -> None:
    """Per-repository tokens cover the next hinted repositories, ten per token."""
    source = FakeRegistry(clock, abac=True)
    cache.refuse_wildcard()
    names = [f"r{i:02d}" for i in range(25)]
    for name in names:
        cache.hint(name)
    values = {name: (await cache.token_for(name, source)).value for name in names}
    assert len(source.scopes) == 3
    assert len(set(values.values())) == 3
    assert source.scopes[0].count("repository:") == REPOSITORIES_PER_TOKEN


async def test_invalidated_token_is_fetched_anew(cache: AcrTokenCache, clock: Clock) -> None:
    """After a 401 the policy invalidates the token; the next call fetches a fresh one."""
    source = FakeRegistry(clock)
    first = await cache.token_for("a", source)
    cache.invalidate(first)
    second = await cache.token_for("a", source)
    assert second.fresh
    assert second.value != first.value
    assert source.exchanges == 1


async def test_rejected_refresh_token_leads_to_one_new_exchange(
    cache: AcrTokenCache, clock: Clock
) -> None:
    """A refresh token refused before its expiry is replaced by a new exchange."""
    source = FakeRegistry(clock)
    first = await cache.token_for("a", source)
    cache.invalidate(first)
    source.valid_refresh.clear()  # revoked
    assert (await cache.token_for("a", source)).fresh
    assert source.exchanges == 2


async def test_a_refresh_token_refused_when_fresh_is_an_error(
    cache: AcrTokenCache, clock: Clock
) -> None:
    """When even a fresh refresh token is refused for per-repository scopes, the error surfaces."""

    class Refusing(FakeRegistry):
        async def access(self, refresh_token: str, scope: str) -> str:
            raise RefreshTokenRejectedError("no")

    cache.refuse_wildcard()
    with pytest.raises(RefreshTokenRejectedError):
        await cache.token_for("a", Refusing(clock))


async def test_concurrent_requests_share_one_fetch(cache: AcrTokenCache, clock: Clock) -> None:
    """Many tasks asking at once cause one exchange and one token request."""

    class Slow(FakeRegistry):
        async def access(self, refresh_token: str, scope: str) -> str:
            await asyncio.sleep(0)
            return await super().access(refresh_token, scope)

    source = Slow(clock)
    grants = await asyncio.gather(*(cache.token_for(f"r{i}", source) for i in range(20)))
    assert len({g.value for g in grants}) == 1
    assert source.exchanges == 1
    assert len(source.scopes) == 1


@pytest.mark.parametrize(
    ("url", "resource"),
    [
        ("https://r.azurecr.io/acr/v1/_catalog?n=100", CATALOG),
        ("https://r.azurecr.io/acr/v1/team%2Fapi/_tags?last=x", "team/api"),
        ("https://r.azurecr.io/acr/v1/team/api/_tags/PR1", "team/api"),
        ("https://r.azurecr.io/acr/v1/web/_manifests/sha256:ab", "web"),
        ("https://r.azurecr.io/acr/v1/team%2Fapi", "team/api"),
        ("https://r.azurecr.io/v2/team%2Fapi/manifests/sha256:ab", "team/api"),
        ("https://r.azurecr.io/v2/a/b/c/manifests/latest", "a/b/c"),
        ("https://r.azurecr.io/v2/", CATALOG),
        ("https://r.azurecr.io/oauth2/token", None),
        ("https://r.azurecr.io/oauth2/exchange", None),
        ("https://r.azurecr.io/elsewhere", None),
    ],
)
def test_resource_of_reads_the_repository_from_the_url(url: str, resource: str | None) -> None:
    """Which token a URL needs: the repository (decoded), the catalog, or none."""
    assert resource_of(url) == resource


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (jwt({"access": [{"type": "repository", "name": "*", "actions": ["*"]}]}), True),
        (jwt({"access": [{"type": "registry", "name": "catalog", "actions": ["*"]}]}), False),
        (jwt({"exp": 1}), None),
        ("opaque-token", None),
    ],
)
def test_grants_repository_wildcard_reads_the_access_claim(
    token: str, expected: bool | None
) -> None:
    """Whether a token holds `repository:*`, read from its `access` claim when it has one."""
    assert grants_repository_wildcard(token) is expected


def test_jwt_claims_of_garbage_is_none() -> None:
    """Tokens that are not JWTs have no claims (the cache then assumes a default lifetime)."""
    assert jwt_claims("a.b.c") is None
    assert jwt_claims("") is None
