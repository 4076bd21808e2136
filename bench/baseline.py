"""The yardstick: the cleanup a team would write first. Not product code.

Repositories one after another, tags one after another, one pull-request lookup per tag (no
reuse: a pull request named by three tags is asked for three times), one `delete_tag` per stale
tag; the same SDK (`azure-containerregistry` aio, no token cache: 4 HTTP requests per operation)
and httpx the product uses, nothing concurrent.

    python -m bench.baseline     # reads the product's settings from the environment

It reads CLEANUP_REGISTRY, AZURE_DEVOPS_ORG_URL, AZURE_DEVOPS_PROJECT, AZURE_DEVOPS_PAT and the
managed identity's IDENTITY_ENDPOINT / IDENTITY_HEADER (SSL_CERT_FILE for the emulators' CA),
uses the product's default tag pattern and a grace period of 0, and prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys

import httpx
from azure.containerregistry.aio import ContainerRegistryClient
from azure.identity.aio import ManagedIdentityCredential

TAG_PATTERN = re.compile(r"(?i)^pr-?(?P<pr>\d+)$")
AUDIENCE = "https://containerregistry.azure.net"
CLOSED = ("completed", "abandoned")


async def clean(environ: dict[str, str]) -> dict[str, int]:
    registry = environ["CLEANUP_REGISTRY"]
    endpoint = registry if registry.startswith("https://") else f"https://{registry}"
    org = environ["AZURE_DEVOPS_ORG_URL"].rstrip("/")
    project = environ.get("AZURE_DEVOPS_PROJECT", "")
    prefix = f"{org}/{project}" if project else org
    basic = base64.b64encode(f":{environ['AZURE_DEVOPS_PAT']}".encode()).decode()
    headers = {"Authorization": f"Basic {basic}", "X-TFS-FedAuthRedirect": "Suppress"}
    counts = {"repositories": 0, "tagsScanned": 0, "pullRequestTags": 0, "lookups": 0}
    counts |= {"deleted": 0, "kept": 0, "failed": 0}
    async with (
        ManagedIdentityCredential() as credential,
        ContainerRegistryClient(endpoint, credential, audience=AUDIENCE) as acr,
        httpx.AsyncClient(headers=headers) as http,
    ):
        async for repository in acr.list_repository_names():
            counts["repositories"] += 1
            async for tag in acr.list_tag_properties(repository):
                counts["tagsScanned"] += 1
                match = TAG_PATTERN.fullmatch(tag.name)
                if match is None:
                    continue
                counts["pullRequestTags"] += 1
                counts["lookups"] += 1
                response = await http.get(
                    f"{prefix}/_apis/git/pullrequests/{int(match['pr'])}",
                    params={"api-version": "7.1"},
                )
                status = response.json().get("status") if response.status_code == 200 else None
                if status not in CLOSED:
                    counts["kept"] += 1
                    continue
                try:
                    await acr.delete_tag(repository, tag.name)
                except Exception:  # noqa: BLE001 - the yardstick counts failures and goes on
                    counts["failed"] += 1
                else:
                    counts["deleted"] += 1
    return counts


def main() -> int:
    counts = asyncio.run(clean(dict(os.environ)))
    sys.stdout.write(json.dumps({"summary": counts}) + "\n")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
