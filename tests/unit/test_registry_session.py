"""The registry adapter's HTTP session reads proxy settings from the environment only when set."""

from __future__ import annotations

import pytest
from azure.core.credentials import AccessToken

from cleanup.registry import AcrRegistry


class UnusedCredential:
    """Opening the adapter asks for no token."""

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        raise AssertionError("no token is needed to open the adapter")

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(("proxy", "trusted"), [(None, False), ("http://proxy.test:3128", True)])
async def test_session_trusts_the_environment_only_behind_a_proxy(monkeypatch, proxy, trusted):
    """Without HTTPS_PROXY the session skips aiohttp's per-request netrc and proxy lookups."""
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxy is not None:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    registry = AcrRegistry("https://contoso.azurecr.io", UnusedCredential())  # type: ignore[arg-type]
    await registry.open()
    try:
        assert registry._session is not None
        assert registry._session.trust_env is trusted
    finally:
        await registry.close()
