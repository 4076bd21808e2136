"""Which Azure credential the settings select, and that it prints without its secret."""

from __future__ import annotations

import pytest
from azure.identity.aio import ClientSecretCredential, ManagedIdentityCredential

from cleanup.credentials import (
    CredentialKind,
    build_credential,
    choose_credential,
    make_credential,
)

SP = CredentialKind.SERVICE_PRINCIPAL
UAMI = CredentialKind.USER_ASSIGNED_MANAGED_IDENTITY
SAMI = CredentialKind.SYSTEM_ASSIGNED_MANAGED_IDENTITY


@pytest.mark.parametrize(
    ("client_id", "tenant_id", "secret", "kind"),
    [
        ("cid", "tid", "sec", SP),
        ("cid", "tid", None, UAMI),
        ("cid", None, "sec", UAMI),
        ("cid", None, None, UAMI),
        (None, "tid", "sec", SAMI),
        (None, None, None, SAMI),
        ("cid", "tid", "  ", UAMI),
        ("  ", None, None, SAMI),
    ],
)
def test_selection(client_id, tenant_id, secret, kind):
    """All three select a service principal; a client id alone a user-assigned identity."""
    assert choose_credential(client_id, tenant_id, secret).kind is kind


def test_managed_identity_keeps_only_the_client_id():
    """A user-assigned identity carries its client id and nothing of a partial principal."""
    choice = choose_credential("cid", "tid", None)
    assert choice.client_id == "cid"
    assert choice.tenant_id is None
    assert choice.client_secret is None


def test_choice_never_prints_the_secret():
    """repr and describe() of a service principal choice leave the secret out."""
    choice = choose_credential("cid", "tid", "s3cr3t-value", "login.microsoftonline.us")
    assert "s3cr3t-value" not in repr(choice)
    assert "s3cr3t-value" not in choice.describe()
    assert "cid" in choice.describe()


async def test_service_principal_credential_uses_authority_host():
    """The service principal is a ClientSecretCredential on AZURE_AUTHORITY_HOST's authority."""
    credential = make_credential("cid", "tid", "sec", "login.microsoftonline.us")
    async with credential:
        assert isinstance(credential, ClientSecretCredential)
        assert credential._client._authority == "https://login.microsoftonline.us"  # type: ignore[attr-defined]


async def test_service_principal_defaults_to_public_cloud(monkeypatch):
    """Without an authority host, azure-identity's default (public cloud) applies."""
    monkeypatch.delenv("AZURE_AUTHORITY_HOST", raising=False)
    async with make_credential("cid", "tid", "sec") as credential:
        assert credential._client._authority == "https://login.microsoftonline.com"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("client_id", "kind"), [("cid", UAMI), (None, SAMI)])
async def test_managed_identity_credential(client_id, kind):
    """Otherwise the credential is a ManagedIdentityCredential."""
    choice = choose_credential(client_id)
    assert choice.kind is kind
    async with build_credential(choice) as credential:
        assert isinstance(credential, ManagedIdentityCredential)
