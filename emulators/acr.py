"""Azure Container Registry's data plane (API 2021-07-01) as an aiohttp application.

Faithful where a client can tell: the challenge flow, scope-bound tokens, paging, bodies, field
names, status codes and error bodies of `specs/acr-data-plane-2021-07-01.json` and
the registry's observed behaviour. Serve it over HTTPS (the SDK refuses bearer tokens over http).

Routes (named for the request log and fault rules), with the scope each needs:

- `acr.v2`                  GET /v2/                               (any valid token)
- `acr.oauth2.exchange`     POST /oauth2/exchange                  (Entra token in the form)
- `acr.oauth2.token`        POST /oauth2/token                     (refresh token in the form)
- `acr.catalog`             GET /acr/v1/_catalog                   registry:catalog:*
- `acr.repository.get`      GET /acr/v1/{name}                     repository:NAME:metadata_read
- `acr.tags.list`           GET /acr/v1/{name}/_tags               repository:NAME:metadata_read
- `acr.tag.get`             GET /acr/v1/{name}/_tags/{tag}         repository:NAME:metadata_read
- `acr.tag.update`          PATCH /acr/v1/{name}/_tags/{tag}       repository:NAME:metadata_write
- `acr.tag.delete`          DELETE /acr/v1/{name}/_tags/{tag}      repository:NAME:delete
- `acr.manifests.list`      GET /acr/v1/{name}/_manifests          repository:NAME:metadata_read
- `acr.manifest.properties` GET /acr/v1/{name}/_manifests/{digest} repository:NAME:metadata_read
- `acr.manifest.update`     PATCH /acr/v1/{name}/_manifests/{dig.} repository:NAME:metadata_write
- `acr.manifest.get`        GET /v2/{name}/manifests/{ref}         repository:NAME:pull
- `acr.manifest.head`       HEAD /v2/{name}/manifests/{ref}        repository:NAME:pull
- `acr.manifest.delete`     DELETE /v2/{name}/manifests/{digest}   repository:NAME:delete
- `acr.unknown`             anything else: text/plain `404 page not found`

Repository names may contain `/`, raw or URL-encoded (`team%2Fapi`) on the wire.

Emulator decisions where the notes leave the real behaviour open (each kept in one place):

- Deleting a locked tag or manifest (`deleteEnabled` false) answers `LOCKED_STATUS` (405) with
  `LOCKED_ERROR` (`UNSUPPORTED`, "The operation is disallowed on this registry, repository or
  image."), what ACR documents for locked images. A manifest one of whose tags is locked is
  refused the same way (conservative: the real rule is unverified).
- In ABAC mode (`AcrKnobs.mode = "abac"`) `/oauth2/token` grants the intersection of what was
  asked and what is allowed, as Docker token servers do: a `repository:*:...` scope is dropped
  from the token (its `access` claim shows what was granted); a request made with it then gets
  the 401 challenge. `registry:catalog:*` is granted in both modes.
- Throttling: fixed windows per budget (`Budget`); reads are authorized GET/HEAD requests,
  writes are DELETE/PATCH; token endpoints and challenged (401) requests cost nothing. Over
  budget: `429` with `Retry-After` (whole seconds until the window ends) and
  `{"errors":[{"code":"TOOMANYREQUESTS","message":"Too many requests"}]}`.
- Deleting a manifest deletes its referrers with it, tagged or not, as ACR does with OCI 1.1
  referrers (`AcrKnobs.cascade_referrers`, on by default; off leaves them behind); its index
  children stay. A repository stays listed when it becomes empty.
- `n` must be a positive integer (else 400 `PAGINATION_NUMBER_INVALID`); there is no upper cap.
  With `orderby=timedesc|timeasc`, `last` names the last item of the previous page (the
  emulator remembers deleted items' times so paging survives deletions in between).
- Refresh and access tokens are JWTs whose payload decodes with plain `base64.b64decode` too
  (the SDK's `_parse_exp_time` does that): the payload is padded to a multiple of 3 bytes and
  holds no character that base64url and base64 encode differently.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from aiohttp import web

from emulators.entra import ACR_RESOURCE, TokenIssuer
from emulators.harness import Handler, Knobs, RequestLog, make_middlewares
from emulators.scenario import ImageSeed, Scenario

SERVICE = "acr"
DEFAULT_PAGE_SIZE = 100
API_VERSION = "2021-07-01"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
NOTARY_SIGNATURE = "application/vnd.cncf.notary.signature"
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# The answer to deleting a locked tag or manifest (unverified against real ACR; see above).
LOCKED_STATUS = 405
LOCKED_ERROR = {
    "code": "UNSUPPORTED",
    "message": "The operation is disallowed on this registry, repository or image.",
}

# Real ACR access tokens live 75 minutes; refresh tokens about 3 hours.
DEFAULT_ACCESS_TOKEN_LIFETIME_S = 75 * 60.0
DEFAULT_REFRESH_TOKEN_LIFETIME_S = 3 * 3600.0

# Microsoft's "minimum estimates" per SKU: (ReadOps/min, WriteOps/min).
SKU_BUDGETS: dict[str, tuple[int, int]] = {
    "basic": (1000, 100),
    "standard": (3000, 500),
    "premium": (10000, 2000),
}

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_REPOSITORY_ACTIONS = frozenset({"pull", "push", "delete", "metadata_read", "metadata_write", "*"})

AcrMode = Literal["normal", "abac"]


# --- knobs ---------------------------------------------------------------------------------


class Budget:
    """At most `limit` operations per fixed window of `window_s` seconds."""

    def __init__(
        self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a budget needs a positive limit and window")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._window_start = clock()
        self._used = 0
        self.refused = 0
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`500` (per 60 s) or `500/10` (per 10 s)."""
        limit, _, window = text.partition("/")
        return cls(int(limit), float(window) if window else 60.0)

    def take(self) -> float | None:
        """None when allowed; otherwise the seconds until the window ends."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self.window_s:
                elapsed_windows = (now - self._window_start) // self.window_s
                self._window_start += elapsed_windows * self.window_s
                self._used = 0
            if self._used < self.limit:
                self._used += 1
                return None
            self.refused += 1
            return self._window_start + self.window_s - now


@dataclass(slots=True)
class AcrKnobs(Knobs):
    """What tests and the benchmark turn on the registry emulator."""

    mode: AcrMode = "normal"
    access_token_lifetime_s: float = DEFAULT_ACCESS_TOKEN_LIFETIME_S
    refresh_token_lifetime_s: float = DEFAULT_REFRESH_TOKEN_LIFETIME_S
    read_budget: Budget | None = None
    write_budget: Budget | None = None
    cascade_referrers: bool = True
    """ACR deletes a manifest's referrers (signatures, SBOMs, tagged or not) with it."""
    token_generation: int = 0
    """Tokens issued before the last `revoke_tokens()` are refused (a forced expiry)."""

    def revoke_tokens(self) -> None:
        """Refuse every refresh and access token issued so far, as if they had expired."""
        self.token_generation += 1

    def set_sku(self, sku: str, window_s: float = 60.0) -> None:
        """Budgets like the SKU's per-minute estimates, squeezed into `window_s` if asked."""
        reads, writes = SKU_BUDGETS[sku.lower()]
        self.read_budget = Budget(reads, window_s)
        self.write_budget = Budget(writes, window_s)


# --- state ---------------------------------------------------------------------------------


def _apply_attributes(record: TagRecord | ManifestRecord, attributes: dict[str, bool]) -> None:
    """PATCH semantics of changeableAttributes: only the attributes given change."""
    for name in ("delete", "write", "read", "list"):
        field_name = f"{name}_enabled"
        setattr(record, field_name, attributes.get(f"{name}Enabled", getattr(record, field_name)))


@functools.lru_cache(maxsize=1 << 16)
def format_time(value: datetime) -> str:
    """ACR's form: 7 fractional digits, `Z` (cached: listings format the same times again)."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}{value.second % 10}Z"


def _attributes(
    delete: bool, write: bool = True, read: bool = True, listed: bool = True
) -> dict[str, bool]:
    return {
        "deleteEnabled": delete,
        "writeEnabled": write,
        "readEnabled": read,
        "listEnabled": listed,
    }


@dataclass(slots=True)
class TagRecord:
    name: str
    digest: str
    created: datetime
    updated: datetime
    delete_enabled: bool = True
    write_enabled: bool = True
    read_enabled: bool = True
    list_enabled: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "createdTime": format_time(self.created),
            "lastUpdateTime": format_time(self.updated),
            "signed": False,
            "changeableAttributes": _attributes(
                self.delete_enabled, self.write_enabled, self.read_enabled, self.list_enabled
            ),
        }


@dataclass(frozen=True, slots=True)
class PlatformRef:
    digest: str
    architecture: str
    os: str


@dataclass(slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    body: bytes
    created: datetime
    updated: datetime
    size: int
    architecture: str | None = None
    os: str | None = None
    config_media_type: str | None = None
    references: tuple[PlatformRef, ...] = ()
    subject: str | None = None
    artifact_type: str | None = None
    delete_enabled: bool = True
    write_enabled: bool = True
    read_enabled: bool = True
    list_enabled: bool = True

    def to_json(self, tags: list[str]) -> dict[str, Any]:
        item: dict[str, Any] = {
            "digest": self.digest,
            "imageSize": self.size,
            "createdTime": format_time(self.created),
            "lastUpdateTime": format_time(self.updated),
            "mediaType": self.media_type,
        }
        if self.architecture is not None:
            item["architecture"] = self.architecture
        if self.os is not None:
            item["os"] = self.os
        if self.config_media_type is not None:
            item["configMediaType"] = self.config_media_type
        if self.references:
            item["references"] = [
                {"digest": r.digest, "architecture": r.architecture, "os": r.os}
                for r in self.references
            ]
        if tags:
            item["tags"] = tags
        item["changeableAttributes"] = _attributes(
            self.delete_enabled, self.write_enabled, self.read_enabled, self.list_enabled
        )
        return item


@dataclass(slots=True)
class RepositoryRecord:
    name: str
    created: datetime
    updated: datetime
    manifests: dict[str, ManifestRecord] = field(default_factory=dict)
    tags: dict[str, TagRecord] = field(default_factory=dict)
    deleted_times: dict[str, datetime] = field(default_factory=dict)
    """Last update time of deleted tags and manifests, so time-ordered paging can go on."""

    def tags_of(self, digest: str) -> list[str]:
        return sorted(t.name for t in self.tags.values() if t.digest == digest)

    def tags_by_digest(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for tag in self.tags.values():
            found.setdefault(tag.digest, []).append(tag.name)
        for names in found.values():
            names.sort()
        return found


class RegistryError(Exception):
    """An ACR error answer: status, code, message, optional detail."""

    def __init__(
        self, status: int, code: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail


def name_unknown(name: str) -> RegistryError:
    return RegistryError(
        404, "NAME_UNKNOWN", "repository name not known to registry", {"name": name}
    )


def manifest_unknown(reference: str) -> RegistryError:
    return RegistryError(
        404, "MANIFEST_UNKNOWN", f"manifest {reference} is not found", {"Tag": reference}
    )


def tag_unknown(tag: str) -> RegistryError:
    return RegistryError(404, "TAG_UNKNOWN", "the specified tag does not exist", {"Tag": tag})


def digest_invalid(digest: str) -> RegistryError:
    return RegistryError(
        400, "DIGEST_INVALID", "provided digest did not match uploaded content", {"digest": digest}
    )


def locked() -> RegistryError:
    return RegistryError(LOCKED_STATUS, LOCKED_ERROR["code"], LOCKED_ERROR["message"])


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _body(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=3).encode()


class AcrState:
    """Repositories, manifests and tags; thread-safe (seed from tests while it serves)."""

    def __init__(self) -> None:
        self.repositories: dict[str, RepositoryRecord] = {}
        self._lock = threading.RLock()

    # --- seeding -------------------------------------------------------------------------

    def _repository(self, name: str, when: datetime) -> RepositoryRecord:
        repo = self.repositories.get(name)
        if repo is None:
            repo = self.repositories[name] = RepositoryRecord(name, when, when)
        return repo

    def add_manifest(
        self,
        repository: str,
        body: bytes,
        media_type: str,
        *,
        tags: Iterable[str] = (),
        created_at: datetime | None = None,
        locked: bool = False,
        locked_tags: Iterable[str] = (),
        platform: str | None = None,
    ) -> str:
        """Store a manifest body as pushed (digest computed from the bytes); returns its digest.

        `platform` (`linux/amd64`) is what ACR would read from the image's config blob.
        """
        document = json.loads(body)
        when = created_at or datetime.now(UTC)
        digest = _sha256(body)
        config = document.get("config") or {}
        layers = document.get("layers") or []
        references: list[PlatformRef] = []
        size = len(body)
        if media_type in INDEX_MEDIA_TYPES:
            for child in document.get("manifests", ()):
                described = child.get("platform") or {}
                references.append(
                    PlatformRef(
                        child["digest"], described.get("architecture", ""), described.get("os", "")
                    )
                )
        else:
            size = int(config.get("size", 0)) + sum(int(layer.get("size", 0)) for layer in layers)
        architecture = os_name = None
        if (
            platform is not None
            and media_type not in INDEX_MEDIA_TYPES
            and "subject" not in document
        ):
            os_name, _, rest = platform.partition("/")
            architecture = rest.partition("/")[0]
        record = ManifestRecord(
            digest=digest,
            media_type=media_type,
            body=body,
            created=when,
            updated=when,
            size=size,
            architecture=architecture,
            os=os_name,
            config_media_type=config.get("mediaType"),
            references=tuple(references),
            subject=(document.get("subject") or {}).get("digest"),
            artifact_type=document.get("artifactType"),
            delete_enabled=not locked,
        )
        with self._lock:
            repo = self._repository(repository, when)
            record = repo.manifests.setdefault(digest, record)
            repo.updated = max(repo.updated, when)
            for tag in tags:
                self._set_tag(repo, tag, digest, when)
            for tag in locked_tags:
                repo.tags[tag].delete_enabled = False
        return digest

    def _set_tag(self, repo: RepositoryRecord, tag: str, digest: str, when: datetime) -> None:
        existing = repo.tags.get(tag)
        created = existing.created if existing is not None else when
        repo.tags[tag] = TagRecord(tag, digest, created, when)
        repo.deleted_times.pop(tag, None)

    def tag(self, repository: str, tag: str, digest: str, when: datetime | None = None) -> None:
        with self._lock:
            repo = self.repositories[repository]
            if digest not in repo.manifests:
                raise KeyError(digest)
            self._set_tag(repo, tag, digest, when or datetime.now(UTC))

    def add_image(
        self,
        repository: str,
        tags: Iterable[str] = (),
        *,
        platforms: Iterable[str] = (),
        subject: str | None = None,
        artifact_type: str | None = None,
        created_at: datetime | None = None,
        locked: bool = False,
        locked_tags: Iterable[str] = (),
        salt: str = "",
    ) -> str:
        """A realistic image (or index with `platforms`, or referrer with `subject`); its digest.

        `subject` is a tag or digest in the same repository.
        """
        when = created_at or datetime.now(UTC)
        tags = tuple(tags)
        salt = salt or secrets.token_hex(8)
        platform_list = tuple(platforms)
        if subject is not None:
            subject_digest = self.resolve(repository, subject)
            subject_record = self.repositories[repository].manifests[subject_digest]
            body = referrer_body(
                subject_record, artifact_type or NOTARY_SIGNATURE, salt=f"{repository}:{salt}"
            )
            media_type = OCI_MANIFEST
        elif platform_list:
            children = []
            for platform in platform_list:
                child_body = image_body(f"{repository}:{salt}:{platform}", platform)
                child = self.add_manifest(
                    repository, child_body, DOCKER_MANIFEST, created_at=when, platform=platform
                )
                children.append((child, len(child_body), platform))
            body = index_body(children)
            media_type = OCI_INDEX
        else:
            body = image_body(f"{repository}:{salt}", "linux/amd64")
            media_type = DOCKER_MANIFEST
        return self.add_manifest(
            repository,
            body,
            media_type,
            platform="linux/amd64",
            tags=tags,
            created_at=when,
            locked=locked,
            locked_tags=locked_tags,
        )

    def seed(self, scenario: Scenario, now: datetime | None = None) -> None:
        """Push every image of a scenario (subjects after the images they refer to)."""
        now = now or datetime.now(UTC)
        pending = [i for i in scenario.images if i.subject is not None]
        for image in scenario.images:
            if image.subject is None:
                self._seed_image(image, now)
        for image in pending:
            self._seed_image(image, now)

    def _seed_image(self, image: ImageSeed, now: datetime) -> str:
        return self.add_image(
            image.repository,
            image.tags,
            platforms=image.platforms,
            subject=image.subject,
            artifact_type=image.artifact_type,
            created_at=image.created_at or now - timedelta(days=image.age_days),
            locked=image.locked,
            locked_tags=image.locked_tags,
            salt=image.salt or f"{image.repository}|{','.join(image.tags)}|{image.age_days}",
        )

    def lock_tag(self, repository: str, tag: str, locked: bool = True) -> None:
        with self._lock:
            self.repositories[repository].tags[tag].delete_enabled = not locked

    def lock_manifest(self, repository: str, reference: str, locked: bool = True) -> None:
        with self._lock:
            digest = self.resolve(repository, reference)
            self.repositories[repository].manifests[digest].delete_enabled = not locked

    # --- queries -------------------------------------------------------------------------

    def resolve(self, repository: str, reference: str) -> str:
        """The digest a tag or digest names in `repository` (KeyError when unknown)."""
        with self._lock:
            repo = self.repositories[repository]
            if reference.startswith("sha256:"):
                if reference not in repo.manifests:
                    raise KeyError(reference)
                return reference
            return repo.tags[reference].digest

    def repository_names(self) -> list[str]:
        with self._lock:
            return sorted(self.repositories)

    def tag_names(self, repository: str) -> list[str]:
        with self._lock:
            repo = self.repositories.get(repository)
            return sorted(repo.tags) if repo is not None else []

    def digests(self, repository: str) -> list[str]:
        with self._lock:
            repo = self.repositories.get(repository)
            return sorted(repo.manifests) if repo is not None else []

    def has_tag(self, repository: str, tag: str) -> bool:
        with self._lock:
            repo = self.repositories.get(repository)
            return repo is not None and tag in repo.tags

    def has_manifest(self, repository: str, digest: str) -> bool:
        with self._lock:
            repo = self.repositories.get(repository)
            return repo is not None and digest in repo.manifests

    def manifest(self, repository: str, reference: str) -> ManifestRecord:
        with self._lock:
            return self.repositories[repository].manifests[self.resolve(repository, reference)]

    @property
    def tag_count(self) -> int:
        with self._lock:
            return sum(len(r.tags) for r in self.repositories.values())

    @property
    def manifest_count(self) -> int:
        with self._lock:
            return sum(len(r.manifests) for r in self.repositories.values())

    # --- operations (the handlers' side) -------------------------------------------------

    def get_repository(self, name: str) -> RepositoryRecord:
        repo = self.repositories.get(name)
        if repo is None:
            raise name_unknown(name)
        return repo

    def delete_tag(self, repository: str, tag: str) -> None:
        with self._lock:
            repo = self.get_repository(repository)
            record = repo.tags.get(tag)
            if record is None:
                raise tag_unknown(tag)
            if not record.delete_enabled:
                raise locked()
            del repo.tags[tag]
            repo.deleted_times[tag] = record.updated

    def delete_manifest(self, repository: str, digest: str, cascade_referrers: bool) -> None:
        with self._lock:
            repo = self.get_repository(repository)
            record = repo.manifests.get(digest)
            if record is None:
                raise manifest_unknown(digest)
            tags = [t for t in repo.tags.values() if t.digest == digest]
            if not record.delete_enabled or any(not t.delete_enabled for t in tags):
                raise locked()
            for tag in tags:
                del repo.tags[tag.name]
                repo.deleted_times[tag.name] = tag.updated
            del repo.manifests[digest]
            repo.deleted_times[digest] = record.updated
            if cascade_referrers:
                for other in [m for m in repo.manifests.values() if m.subject == digest]:
                    self.delete_manifest(repository, other.digest, cascade_referrers)


# --- manifest bodies ---------------------------------------------------------------------


def _blob_digest(seed: str) -> str:
    return _sha256(seed.encode())


def image_body(salt: str, platform: str = "linux/amd64") -> bytes:
    """A Docker v2 image manifest (config + two layers) whose digests derive from `salt`."""
    size = 1469 + len(platform)
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": size, "digest": _blob_digest("c" + salt)},
        "layers": [
            {"mediaType": DOCKER_LAYER, "size": 3401613, "digest": _blob_digest("l1" + salt)},
            {"mediaType": DOCKER_LAYER, "size": 28540, "digest": _blob_digest("l2" + salt)},
        ],
    }
    return _body(document)


def index_body(children: Iterable[tuple[str, int, str]]) -> bytes:
    """An OCI image index over (digest, size, "os/arch[/variant]") children."""
    manifests = []
    for digest, size, platform in children:
        os_name, _, arch = platform.partition("/")
        arch, _, variant = arch.partition("/")
        entry: dict[str, Any] = {
            "mediaType": DOCKER_MANIFEST,
            "size": size,
            "digest": digest,
            "platform": {"architecture": arch, "os": os_name},
        }
        if variant:
            entry["platform"]["variant"] = variant
        manifests.append(entry)
    return _body({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})


def referrer_body(subject: ManifestRecord, artifact_type: str, salt: str) -> bytes:
    """An OCI artifact manifest attached to `subject` (a signature, an SBOM)."""
    return _body(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": OCI_EMPTY,
                "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/jose+json",
                    "digest": _blob_digest("sig" + salt),
                    "size": 2048,
                }
            ],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest,
                "size": len(subject.body),
            },
            "annotations": {"io.cncf.notary.x509chain.thumbprint#S256": "[]"},
        }
    )


# --- tokens --------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decodable_json(claims: dict[str, Any]) -> str:
    """base64url of the JSON, readable by plain `base64.b64decode` as well.

    ASCII JSON without `>`, `?`, `~` never yields the two characters base64url and base64
    disagree on; padding the JSON to a multiple of 3 bytes leaves no `=` to strip.
    """
    text = json.dumps(claims, separators=(",", ":"), ensure_ascii=True)
    if any(c in text for c in "<>?~\x7f"):
        raise ValueError("token claims must not contain <, >, ? or ~")
    text += " " * (-len(text) % 3)
    return base64.urlsafe_b64encode(text.encode("ascii")).decode("ascii")


@dataclass(frozen=True, slots=True)
class Access:
    type: str
    name: str
    actions: frozenset[str]

    def allows(self, type_: str, name: str, action: str) -> bool:
        return (
            self.type == type_
            and self.name in (name, "*")
            and (action in self.actions or "*" in self.actions)
        )

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(scope: str) -> Access:
    """`repository:team/api:pull,delete` or `registry:catalog:*` (ValueError otherwise)."""
    head, sep, actions = scope.rpartition(":")
    type_, sep2, name = head.partition(":")
    if not sep or not sep2 or not type_ or not name or not actions:
        raise ValueError(scope)
    return Access(type_, name, frozenset(a for a in actions.split(",") if a))


class TokenAuthority:
    """Issues and verifies the registry's own refresh and access tokens."""

    def __init__(self, generation: Callable[[], int] = lambda: 0) -> None:
        self._generation = generation
        self._refresh_key = secrets.token_bytes(32)
        self._access_key = secrets.token_bytes(32)
        self.refresh_issued = 0
        self.access_issued = 0
        self._checked: dict[tuple[bytes, str], dict[str, Any]] = {}
        """Claims of tokens whose signature was checked once; expiry is checked every time."""

    def _sign(self, key: bytes, claims: dict[str, Any]) -> str:
        header = _b64decodable_json({"alg": "HS256", "typ": "JWT", "kid": "acr-emulator"})
        payload = _b64decodable_json(claims)
        signature = hmac.new(key, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def _verify(self, key: bytes, token: str, service: str) -> dict[str, Any] | None:
        claims = self._checked.get((key, token))
        if claims is None:
            claims = self._signed_claims(key, token)
            if claims is None:
                return None
            if len(self._checked) > 10_000:
                self._checked.clear()
            self._checked[key, token] = claims
        if claims.get("aud") != service or float(claims.get("exp", 0)) <= time.time():
            return None
        if claims.get("gen", 0) != self._generation():
            return None
        return claims

    def _signed_claims(self, key: bytes, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        header, payload, signature = parts
        expected = hmac.new(key, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_b64url(expected), signature):
                return None
            claims: dict[str, Any] = json.loads(
                base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            )
        except (ValueError, TypeError):
            return None
        return claims if isinstance(claims, dict) else None

    def _base_claims(self, service: str, subject: str, lifetime_s: float) -> dict[str, Any]:
        now = int(time.time())
        return {
            "jti": secrets.token_hex(16),
            "sub": subject,
            "nbf": now - 5,
            "exp": int(now + lifetime_s),
            "iat": now,
            "iss": "Azure Container Registry",
            "aud": service,
            "version": "1.0",
            "grant_type": "refresh_token",
            "gen": self._generation(),
        }

    def refresh_token(self, service: str, subject: str, lifetime_s: float) -> str:
        self.refresh_issued += 1
        return self._sign(self._refresh_key, self._base_claims(service, subject, lifetime_s))

    def verify_refresh(self, token: str, service: str) -> dict[str, Any] | None:
        return self._verify(self._refresh_key, token, service)

    def access_token(
        self, service: str, subject: str, access: Iterable[Access], lifetime_s: float
    ) -> str:
        self.access_issued += 1
        claims = self._base_claims(service, subject, lifetime_s)
        claims["access"] = [a.to_json() for a in access]
        return self._sign(self._access_key, claims)

    def verify_access(self, token: str, service: str) -> list[Access] | None:
        claims = self._verify(self._access_key, token, service)
        if claims is None:
            return None
        return [
            Access(str(a["type"]), str(a["name"]), frozenset(a["actions"]))
            for a in claims.get("access", ())
        ]


def grant(requested: Iterable[Access], mode: AcrMode) -> list[Access]:
    """What the registry puts in a token for what was asked (ABAC: no repository wildcard)."""
    granted: dict[tuple[str, str], set[str]] = {}
    for access in requested:
        if access.type == "registry" and access.name == "catalog":
            granted.setdefault(("registry", "catalog"), set()).add("*")
        elif access.type == "repository":
            if access.name == "*" and mode == "abac":
                continue
            actions = access.actions & _REPOSITORY_ACTIONS
            if actions:
                granted.setdefault(("repository", access.name), set()).update(actions)
    return [Access(t, n, frozenset(a)) for (t, n), a in granted.items()]


# --- HTTP ------------------------------------------------------------------------------------


def error_response(
    status: int,
    code: str,
    message: str,
    detail: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    info: dict[str, Any] = {"code": code, "message": message}
    if detail is not None:
        info["detail"] = detail
    return web.json_response({"errors": [info]}, status=status, headers=headers)


def page_not_found() -> web.Response:
    return web.Response(status=404, text="404 page not found\n", content_type="text/plain")


@dataclass(frozen=True, slots=True)
class Need:
    """The scope a route requires; `name` is filled from the path."""

    type: str
    action: str
    name: str = ""

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{self.action}"


_NEEDS: dict[str, Need] = {
    "acr.catalog": Need("registry", "*", "catalog"),
    "acr.repository.get": Need("repository", "metadata_read"),
    "acr.tags.list": Need("repository", "metadata_read"),
    "acr.tag.get": Need("repository", "metadata_read"),
    "acr.tag.update": Need("repository", "metadata_write"),
    "acr.tag.delete": Need("repository", "delete"),
    "acr.manifests.list": Need("repository", "metadata_read"),
    "acr.manifest.properties": Need("repository", "metadata_read"),
    "acr.manifest.update": Need("repository", "metadata_write"),
    "acr.manifest.get": Need("repository", "pull"),
    "acr.manifest.head": Need("repository", "pull"),
    "acr.manifest.delete": Need("repository", "delete"),
}
_WRITES = frozenset({"DELETE", "PATCH", "PUT", "POST"})


def _page_size(request: web.Request) -> int:
    raw = request.query.get("n")
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise RegistryError(
            400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", {"n": raw}
        )
    return value


def _order(request: web.Request) -> str:
    value = request.query.get("orderby", "") or "none"
    if value not in ("none", "timedesc", "timeasc"):
        raise RegistryError(
            400, "UNSUPPORTED", f"orderby '{value}' is not supported", {"orderby": value}
        )
    return value


def _page(
    *,
    names: list[str],
    times: dict[str, datetime],
    deleted: dict[str, datetime],
    order: str,
    last: str | None,
    n: int,
) -> tuple[list[str], bool]:
    """One page of `names` (in `order`) after `last`; and whether more follow."""
    if order == "none":
        ordered = sorted(names)
        start = bisect.bisect_right(ordered, last) if last else 0
    else:
        descending = order == "timedesc"
        ordered = sorted(names, key=lambda k: (times[k], k), reverse=descending)
        start = 0
        if last:
            when = times.get(last) or deleted.get(last)
            if when is None:
                start = bisect.bisect_right(sorted(names), last)
                ordered = sorted(names)
            else:
                mark = (when, last)
                start = sum(
                    1
                    for k in ordered
                    if ((times[k], k) >= mark if descending else (times[k], k) <= mark)
                )
    chunk = ordered[start : start + n]
    return chunk, start + n < len(ordered)


def _link(path: str, last: str, n: int, order: str) -> str:
    orderby = "" if order == "none" else order
    return f'<{path}?last={quote(last, safe="")}&n={n}&orderby={orderby}>; rel="next"'


def make_app(  # noqa: PLR0915 - one small closure per route reads better than a class
    state: AcrState, knobs: AcrKnobs, log: RequestLog, issuer: TokenIssuer
) -> web.Application:
    """The registry emulator; serve it over HTTPS."""
    authority = TokenAuthority(lambda: knobs.token_generation)

    def service_of(request: web.Request) -> str:
        return request.host

    def challenge(request: web.Request, need: Need | None) -> web.Response:
        service = service_of(request)
        header = f'Bearer realm="https://{service}/oauth2/token",service="{service}"'
        if need is not None:
            header += f',scope="{need.scope()}"'
        detail = (
            None if need is None else {"type": need.type, "name": need.name, "action": need.action}
        )
        return error_response(
            401,
            "UNAUTHORIZED",
            "authentication required, visit https://aka.ms/acr/authorization for more information.",
            detail,
            headers={"WWW-Authenticate": header},
        )

    @web.middleware
    async def registry_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except RegistryError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.detail)
        response.headers["Docker-Distribution-Api-Version"] = "registry/2.0"
        return response

    @web.middleware
    async def authorized(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.name or ""
        need = _NEEDS.get(route)
        if route == "acr.v2":
            need = None
        elif need is None:
            return await handler(request)
        else:
            need = Need(need.type, need.action, need.name or request.match_info.get("name", ""))
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        grants = authority.verify_access(token, service_of(request)) if token else None
        if grants is None:
            return challenge(request, need)
        if need is not None and not any(
            g.allows(need.type, need.name, need.action) for g in grants
        ):
            return challenge(request, need)
        budget = knobs.write_budget if request.method in _WRITES else knobs.read_budget
        if budget is not None:
            wait = budget.take()
            if wait is not None:
                return error_response(
                    429,
                    "TOOMANYREQUESTS",
                    "Too many requests",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await handler(request)

    app = web.Application(
        middlewares=[
            *make_middlewares(SERVICE, knobs, log),
            registry_errors,
            authorized,
        ]
    )

    # --- token endpoints ---------------------------------------------------------------

    async def exchange(request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        service = str(form.get("service", ""))
        if service != service_of(request):
            return error_response(400, "UNAUTHORIZED", f"invalid service '{service}'")
        if grant_type in ("access_token", "access_token_refresh_token"):
            claims = issuer.verify(str(form.get("access_token", "")), ACR_RESOURCE)
            if claims is None:
                return error_response(
                    401,
                    "UNAUTHORIZED",
                    "the access token is invalid, expired or not for this resource",
                )
            subject = claims.subject
        elif grant_type == "refresh_token":
            old = authority.verify_refresh(str(form.get("refresh_token", "")), service)
            if old is None:
                return error_response(
                    401, "UNAUTHORIZED", "the refresh token is invalid or expired"
                )
            subject = str(old.get("sub", ""))
        else:
            return error_response(400, "UNSUPPORTED", f"grant type '{grant_type}' is not supported")
        token = authority.refresh_token(service, subject, knobs.refresh_token_lifetime_s)
        return web.json_response({"refresh_token": token})

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        service = str(form.get("service", ""))
        if service != service_of(request):
            return error_response(400, "UNAUTHORIZED", f"invalid service '{service}'")
        if form.get("grant_type") != "refresh_token":
            return error_response(
                400, "UNSUPPORTED", f"grant type '{form.get('grant_type', '')}' is not supported"
            )
        claims = authority.verify_refresh(str(form.get("refresh_token", "")), service)
        if claims is None:
            return error_response(401, "UNAUTHORIZED", "the refresh token is invalid or expired")
        scopes = [s for value in form.getall("scope", []) for s in str(value).split()]
        if not scopes:
            return error_response(400, "UNSUPPORTED", "a scope is required")
        try:
            requested = [parse_scope(s) for s in scopes]
        except ValueError as exc:
            return error_response(400, "UNSUPPORTED", f"invalid scope '{exc}'")
        access = grant(requested, knobs.mode)
        issued = authority.access_token(
            service, str(claims.get("sub", "")), access, knobs.access_token_lifetime_s
        )
        return web.json_response({"access_token": issued})

    # --- registry ----------------------------------------------------------------------

    async def v2(request: web.Request) -> web.Response:
        return web.json_response({})

    async def catalog(request: web.Request) -> web.Response:
        n = _page_size(request)
        last = request.query.get("last")
        names = state.repository_names()
        start = bisect.bisect_right(names, last) if last else 0
        chunk = names[start : start + n]
        headers = {}
        if start + n < len(names) and chunk:
            headers["Link"] = _link("/acr/v1/_catalog", chunk[-1], n, "none")
        return web.json_response({"repositories": chunk}, headers=headers)

    def repo_path(name: str) -> str:
        return quote(name, safe="")

    async def repository_get(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        with state._lock:
            repo = state.get_repository(name)
            body = {
                "registry": service_of(request),
                "imageName": name,
                "createdTime": format_time(repo.created),
                "lastUpdateTime": format_time(repo.updated),
                "manifestCount": len(repo.manifests),
                "tagCount": len(repo.tags),
                "changeableAttributes": {**_attributes(True), "teleportEnabled": False},
            }
        return web.json_response(body)

    async def tags_list(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        n = _page_size(request)
        order = _order(request)
        last = request.query.get("last") or None
        digest = request.query.get("digest")
        with state._lock:
            repo = state.get_repository(name)
            records = repo.tags
            if digest:
                records = {k: v for k, v in records.items() if v.digest == digest}
            times = {k: v.updated for k, v in records.items()}
            chunk, more = _page(
                names=list(records),
                times=times,
                deleted=repo.deleted_times,
                order=order,
                last=last,
                n=n,
            )
            items = [records[k].to_json() for k in chunk]
        headers = {}
        if more and chunk:
            headers["Link"] = _link(f"/acr/v1/{repo_path(name)}/_tags", chunk[-1], n, order)
        body = {"registry": service_of(request), "imageName": name, "tags": items}
        return web.json_response(body, headers=headers)

    def _tag_record(name: str, tag: str) -> TagRecord:
        repo = state.get_repository(name)
        record = repo.tags.get(tag)
        if record is None:
            raise tag_unknown(tag)
        return record

    async def tag_get(request: web.Request) -> web.Response:
        name, tag = request.match_info["name"], request.match_info["reference"]
        with state._lock:
            item = _tag_record(name, tag).to_json()
        return web.json_response({"registry": service_of(request), "imageName": name, "tag": item})

    async def read_attributes(request: web.Request) -> dict[str, bool]:
        try:
            value = await request.json()
        except ValueError:
            value = None
        if not isinstance(value, dict) or any(
            not isinstance(v, bool) for k, v in value.items() if k.endswith("Enabled")
        ):
            raise RegistryError(400, "UNSUPPORTED", "the request body is not valid attributes")
        return {k: v for k, v in value.items() if isinstance(v, bool)}

    async def tag_update(request: web.Request) -> web.Response:
        name, tag = request.match_info["name"], request.match_info["reference"]
        attributes = await read_attributes(request)
        with state._lock:
            record = _tag_record(name, tag)
            _apply_attributes(record, attributes)
            item = record.to_json()
        return web.json_response({"registry": service_of(request), "imageName": name, "tag": item})

    async def tag_delete(request: web.Request) -> web.Response:
        state.delete_tag(request.match_info["name"], request.match_info["reference"])
        return web.Response(status=202)

    async def manifests_list(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        n = _page_size(request)
        order = _order(request)
        last = request.query.get("last") or None
        with state._lock:
            repo = state.get_repository(name)
            times = {k: v.updated for k, v in repo.manifests.items()}
            chunk, more = _page(
                names=list(repo.manifests),
                times=times,
                deleted=repo.deleted_times,
                order=order,
                last=last,
                n=n,
            )
            tags = repo.tags_by_digest()
            items = [repo.manifests[d].to_json(tags.get(d, [])) for d in chunk]
        headers = {}
        if more and chunk:
            headers["Link"] = _link(f"/acr/v1/{repo_path(name)}/_manifests", chunk[-1], n, order)
        body = {"registry": service_of(request), "imageName": name, "manifests": items}
        return web.json_response(body, headers=headers)

    def _manifest_record(name: str, digest: str) -> ManifestRecord:
        repo = state.get_repository(name)
        if not _DIGEST.match(digest):
            raise digest_invalid(digest)
        record = repo.manifests.get(digest)
        if record is None:
            raise manifest_unknown(digest)
        return record

    async def manifest_properties(request: web.Request) -> web.Response:
        name, digest = request.match_info["name"], request.match_info["digest"]
        with state._lock:
            record = _manifest_record(name, digest)
            item = record.to_json(state.get_repository(name).tags_of(digest))
        return web.json_response(
            {"registry": service_of(request), "imageName": name, "manifest": item}
        )

    async def manifest_update(request: web.Request) -> web.Response:
        name, digest = request.match_info["name"], request.match_info["digest"]
        attributes = await read_attributes(request)
        with state._lock:
            record = _manifest_record(name, digest)
            _apply_attributes(record, attributes)
            item = record.to_json(state.get_repository(name).tags_of(digest))
        return web.json_response(
            {"registry": service_of(request), "imageName": name, "manifest": item}
        )

    def _resolve_reference(name: str, reference: str) -> ManifestRecord:
        repo = state.get_repository(name)
        if reference.startswith("sha256:") or ":" in reference:
            return _manifest_record(name, reference)
        if not _TAG.match(reference):
            raise RegistryError(
                400, "TAG_INVALID", "manifest tag did not match URI", {"Tag": reference}
            )
        tag = repo.tags.get(reference)
        if tag is None:
            raise manifest_unknown(reference)
        return repo.manifests[tag.digest]

    async def manifest_get(request: web.Request) -> web.Response:
        name, reference = request.match_info["name"], request.match_info["reference"]
        with state._lock:
            record = _resolve_reference(name, reference)
        accept = request.headers.get("Accept", "")
        accepted = {a.split(";")[0].strip() for a in accept.split(",") if a.strip()}
        if accepted and "*/*" not in accepted and record.media_type not in accepted:
            raise RegistryError(
                404,
                "MANIFEST_UNKNOWN",
                "OCI index found, but accept header does not support OCI indexes"
                if record.media_type in INDEX_MEDIA_TYPES
                else f"manifest {reference} is not found in the accepted media types",
            )
        headers = {"Docker-Content-Digest": record.digest, "ETag": f'"{record.digest}"'}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(record.body))
            headers["Content-Type"] = record.media_type
            return web.Response(status=200, headers=headers)
        response = web.Response(status=200, body=record.body, headers=headers)
        response.content_type = record.media_type
        return response

    async def manifest_delete(request: web.Request) -> web.Response:
        name, reference = request.match_info["name"], request.match_info["reference"]
        state.get_repository(name)
        if not _DIGEST.match(reference):
            raise digest_invalid(reference)
        state.delete_manifest(name, reference, knobs.cascade_referrers)
        return web.Response(status=202)

    async def unknown(request: web.Request) -> web.Response:
        return page_not_found()

    name = r"{name:[^/_][^/]*(?:/[^/_][^/]*)*}"
    r = app.router
    r.add_get("/v2/", v2, name="acr.v2", allow_head=False)
    r.add_post("/oauth2/exchange", exchange, name="acr.oauth2.exchange")
    r.add_post("/oauth2/token", token, name="acr.oauth2.token")
    r.add_get("/acr/v1/_catalog", catalog, name="acr.catalog", allow_head=False)
    r.add_get(f"/acr/v1/{name}/_tags", tags_list, name="acr.tags.list", allow_head=False)
    r.add_get(f"/acr/v1/{name}/_tags/{{reference}}", tag_get, name="acr.tag.get", allow_head=False)
    r.add_patch(f"/acr/v1/{name}/_tags/{{reference}}", tag_update, name="acr.tag.update")
    r.add_delete(f"/acr/v1/{name}/_tags/{{reference}}", tag_delete, name="acr.tag.delete")
    r.add_get(
        f"/acr/v1/{name}/_manifests", manifests_list, name="acr.manifests.list", allow_head=False
    )
    r.add_get(
        f"/acr/v1/{name}/_manifests/{{digest}}",
        manifest_properties,
        name="acr.manifest.properties",
        allow_head=False,
    )
    r.add_patch(
        f"/acr/v1/{name}/_manifests/{{digest}}", manifest_update, name="acr.manifest.update"
    )
    r.add_get(
        f"/v2/{name}/manifests/{{reference}}",
        manifest_get,
        name="acr.manifest.get",
        allow_head=False,
    )
    r.add_head(f"/v2/{name}/manifests/{{reference}}", manifest_get, name="acr.manifest.head")
    r.add_delete(f"/v2/{name}/manifests/{{reference}}", manifest_delete, name="acr.manifest.delete")
    r.add_get(f"/acr/v1/{name}", repository_get, name="acr.repository.get", allow_head=False)
    r.add_route("*", "/{tail:.*}", unknown, name="acr.unknown")
    return app


# --- bulk generation -----------------------------------------------------------------------


def iter_bulk_images(
    repositories: int,
    tags_per_repository: int,
    *,
    pr_tag_every: int = 2,
    first_pr: int = 1000,
    prs_per_repository: int | None = None,
    now: datetime | None = None,
) -> Iterator[ImageSeed]:
    """Images for a big registry: `team-NN/svc-NNNN` repositories, release and PR tags.

    Every `pr_tag_every`-th image is tagged `PR<id>` (ids from `first_pr` on, each repository
    its own range of `prs_per_repository`), the others `v1.<i>.0`; one image per repository
    also carries `latest`.
    """
    now = now or datetime.now(UTC)
    per_repo = prs_per_repository or tags_per_repository
    for r in range(repositories):
        repo = f"team-{r % 20:02d}/svc-{r:04d}"
        for i in range(tags_per_repository):
            created = now - timedelta(days=tags_per_repository - i, seconds=r)
            if pr_tag_every and i % pr_tag_every == 0:
                tag = f"PR{first_pr + r * per_repo + (i // pr_tag_every) % per_repo}"
            else:
                tag = f"v1.{i}.0"
            tags: tuple[str, ...] = (tag, "latest") if i == tags_per_repository - 1 else (tag,)
            yield ImageSeed(repo, tags, created_at=created, salt=f"{r}:{i}")


def bulk_seed(state: AcrState, images: Iterable[ImageSeed]) -> int:
    """Push plain images fast (no per-image JSON parsing); returns how many were pushed.

    100,000 images take a few seconds: the body is a fixed template with the salt's digests.
    """
    count = 0
    with state._lock:
        for image in images:
            when = image.created_at or datetime.now(UTC) - timedelta(days=image.age_days)
            salt = f"{image.repository}:{image.salt}"
            body = image_body(salt)
            digest = _sha256(body)
            repo = state._repository(image.repository, when)
            repo.manifests[digest] = ManifestRecord(
                digest=digest,
                media_type=DOCKER_MANIFEST,
                body=body,
                created=when,
                updated=when,
                size=1469 + len("linux/amd64") + 3401613 + 28540,
                architecture="amd64",
                os="linux",
                config_media_type=DOCKER_CONFIG,
                delete_enabled=not image.locked,
            )
            repo.updated = max(repo.updated, when)
            for tag in image.tags:
                repo.tags[tag] = TagRecord(
                    tag, digest, when, when, delete_enabled=tag not in image.locked_tags
                )
            count += 1
    return count
