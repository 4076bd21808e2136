"""Following the registry's `Link` header from one listing page to the next."""

from __future__ import annotations

import pytest
from azure.core.exceptions import DecodeError

from cleanup.registry import _next_page

ENDPOINT = "https://contoso.azurecr.io"


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (None, None),
        ("", None),
        ('</acr/v1/a/_tags?last=x&n=100&orderby=>; rel="prev"', None),
        (
            '</acr/v1/a/_tags?last=x&n=100&orderby=>; rel="next"',
            f"{ENDPOINT}/acr/v1/a/_tags?last=x&n=100&orderby=&api-version=2021-07-01",
        ),
        (
            f'<{ENDPOINT}/acr/v1/_catalog?last=b&n=2&api-version=2021-07-01>; rel="next"',
            f"{ENDPOINT}/acr/v1/_catalog?last=b&n=2&api-version=2021-07-01",
        ),
    ],
)
def test_next_page_from_link(link, expected):
    """A relative or absolute next link becomes the next URL; no next link ends the listing."""
    assert _next_page(link, ENDPOINT) == expected


def test_a_next_page_on_another_host_is_refused():
    """A Link to another host is never followed (the bearer token would go with it)."""
    with pytest.raises(DecodeError):
        _next_page('<https://evil.example/acr/v1/a/_tags?last=x>; rel="next"', ENDPOINT)
