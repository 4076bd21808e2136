"""Following the registry's `Link` header from one listing page to the next."""

from __future__ import annotations

import pytest
from azure.core.exceptions import DecodeError
from azure.core.rest import HttpRequest

from cleanup.registry import AcrRegistry, _next_page

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


class _Answer:
    """A listing page as the SDK's send_request returns it."""

    def __init__(self, link: str) -> None:
        self.status_code = 200
        self.headers = {"Link": link}

    def json(self) -> dict[str, object]:
        return {"tags": [{"name": "t", "digest": "sha256:" + "0" * 64}]}


class _Pipeline:
    """The first page links to `last=a`, that one to `last=b`, and `last=b` back to `last=a`."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.next = {"": "last=a", "last=a": "last=b", "last=b": "last=a"}

    async def send_request(self, request: HttpRequest, **_: object) -> _Answer:
        self.urls.append(request.url)
        here = next((k for k in ("last=a", "last=b") if k in request.url), "")
        return _Answer(f'</acr/v1/a/_tags?{self.next[here]}>; rel="next"')


class _Client:
    def __init__(self, pipeline: _Pipeline) -> None:
        self._client = pipeline


async def test_a_next_link_back_to_a_page_already_read_ends_as_an_error():
    """Pages first -> a -> b -> a: the listing stops with an error at the repeat, never loops."""
    pipeline = _Pipeline()
    registry = AcrRegistry(ENDPOINT, credential=None)  # type: ignore[arg-type]
    pages = registry._pages(_Client(pipeline), "/acr/v1/a/_tags", "tags")  # type: ignore[arg-type]
    read = [await anext(pages) for _ in range(3)]
    with pytest.raises(DecodeError, match="already read"):
        await anext(pages)
    assert all(page[0]["name"] == "t" for page in read)
    assert len(pipeline.urls) == len(set(pipeline.urls)) == 3


class _CatalogPage:
    status_code = 200
    headers: dict[str, str] = {}  # noqa: RUF012 - read only

    def json(self) -> dict[str, object]:
        return {"repositories": ["web", {"name": "api"}]}


class _Catalog:
    async def send_request(self, request: HttpRequest, **_: object) -> _CatalogPage:
        return _CatalogPage()


async def test_a_catalog_page_must_list_names():
    """A catalog page whose list holds anything but names is refused, not half read."""
    registry = AcrRegistry(ENDPOINT, credential=None)  # type: ignore[arg-type]
    pages = registry._pages(_Client(_Catalog()), "/acr/v1/_catalog", "repositories", str)  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="list of repositories"):
        await anext(pages)
