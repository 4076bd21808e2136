r"""The contract's settings, read once from the environment into one frozen Settings.

Every problem is collected and reported together, one line each, in a ConfigurationError
(exit 2) raised before anything is contacted. Messages name the setting, the bad value and
what is allowed; the values of AZURE_DEVOPS_PAT and AZURE_CLIENT_SECRET never appear.

Choices the contract leaves open, kept here in one place:

- An empty value of an optional setting means "unset": the default applies. Pipelines and
  Bicep templates often pass empty strings for settings nobody chose.
- An unknown variable starting with `CLEANUP_` is refused ("did you mean ..."): a misspelled
  safety setting (`CLEANUP_DRYRUN=true`) must not silently run for real.
- `CLEANUP_MAX_DELETIONS=0` means a plan that deletes any tag stops the run.
- `AZURE_TENANT_ID` without a secret is ignored (managed identity needs no tenant).
- Surrounding spaces are trimmed from every value (the tag pattern and secrets included).
- The tag pattern refuses a quantified group that contains another quantifier (`(a+)+`,
  `(\d*)*`, `(x+){2,}`) or an alternation (`(a|aa)*`): with backtracking `re` these can
  take exponential time. Matching
  is also bounded by the 128-character limit of ACR tags (see policy.pr_id).
"""

from __future__ import annotations

import difflib
import enum
import importlib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from cleanup.credentials import CredentialChoice, choose_credential
from cleanup.durations import ALLOWED as DURATION_ALLOWED
from cleanup.durations import parse_duration
from cleanup.errors import ConfigurationError

DEFAULT_TAG_PATTERN: Final = r"(?i)^pr-?(?P<pr>\d+)$"

SETTING_DEFAULTS: Final[Mapping[str, str | None]] = {  # names, not passwords  # nosec B105
    "CLEANUP_REGISTRY": None,
    "CLEANUP_REPOSITORIES": "*",
    "CLEANUP_TAG_PATTERN": DEFAULT_TAG_PATTERN,
    "AZURE_DEVOPS_ORG_URL": None,
    "AZURE_DEVOPS_PROJECT": None,
    "AZURE_DEVOPS_PAT": None,
    "CLEANUP_DRY_RUN": "false",
    "CLEANUP_GRACE_PERIOD": "0",
    "CLEANUP_UNKNOWN_PR": "keep",
    "CLEANUP_DELETE_MANIFESTS": "true",
    "CLEANUP_MAX_DELETIONS": "1000",
    "CLEANUP_CONCURRENCY": "16",
    "CLEANUP_SCHEDULE": "0 0 2 * * *",
    "AZURE_CLIENT_ID": None,
    "AZURE_TENANT_ID": None,
    "AZURE_CLIENT_SECRET": None,
    "SSL_CERT_FILE": None,
    "CLEANUP_STORAGE_CONTAINER": "cleanup-runs",
    "CLEANUP_RUN_QUEUE": "cleanup-runs",
}
"""Every environment variable the product reads, with the default a user would write."""

SECRET_SETTINGS: Final = frozenset({"AZURE_DEVOPS_PAT", "AZURE_CLIENT_SECRET"})

MAX_TAG_LENGTH: Final = 128
"""ACR tags are at most 128 characters; a longer name is never a pull-request tag."""

MAX_PR_ID: Final = 2**31 - 1
"""Azure DevOps pull request ids are 32-bit; a larger number cannot name one."""

MAX_CONCURRENCY: Final = 256


@dataclass(frozen=True, slots=True)
class Secret:
    """A value that never prints: repr and str are `***`; `reveal()` when it must be sent."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "***"

    def __str__(self) -> str:
        return "***"


class UnknownPullRequest(enum.Enum):
    """CLEANUP_UNKNOWN_PR: what a tag whose pull request does not exist gets."""

    KEEP = "keep"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class RepositoryFilter:
    """CLEANUP_REPOSITORIES compiled: `selected(name)` is one regex match and one lookup."""

    patterns: tuple[str, ...]
    _include: re.Pattern[str] = field(repr=False, compare=False)
    _exclude: re.Pattern[str] | None = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> RepositoryFilter:
        """Parse comma-separated globs; ValueError naming the bad item."""
        items = [item.strip() for item in text.split(",")]
        if any(not item for item in items):
            raise ValueError("an empty pattern (check for a stray comma)")
        includes = [item for item in items if not item.startswith("!")]
        excludes = [item[1:].strip() for item in items if item.startswith("!")]
        if any(not item for item in excludes):
            raise ValueError("'!' alone excludes nothing; write '!pattern'")
        return cls(
            patterns=tuple(items),
            _include=_globs_to_regex(includes or ["*"]),
            _exclude=_globs_to_regex(excludes) if excludes else None,
        )

    def selected(self, name: str) -> bool:
        """True when `name` matches an include pattern and no exclude pattern, in full."""
        if self._exclude is not None and self._exclude.fullmatch(name):
            return False
        return self._include.fullmatch(name) is not None


def _globs_to_regex(globs: list[str]) -> re.Pattern[str]:
    # Only `*` is special (and crosses `/`); everything else is literal, so `?` and `[` in a
    # repository name need no escaping by the user.
    alternatives = (".*".join(re.escape(part) for part in glob.split("*")) for glob in globs)
    return re.compile("|".join(f"(?:{alt})" for alt in alternatives), re.DOTALL)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs from its environment, validated."""

    registry: str
    """The login server as the user wrote it (`contoso.azurecr.io`, `127.0.0.1:8443`)."""
    registry_url: str
    """`https://host[:port]`, host in lower case, no trailing slash: the SDK's endpoint."""
    org_url: str
    """Azure DevOps organization (or collection) URL, https, no trailing slash."""
    project: str | None = None
    pat: Secret | None = field(default=None, repr=False)
    repositories: RepositoryFilter = field(default_factory=lambda: RepositoryFilter.parse("*"))
    tag_pattern: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_TAG_PATTERN))
    dry_run: bool = False
    grace_period: timedelta = timedelta(0)
    grace_period_text: str = "0"
    """The grace period as the user wrote it, for reasons (`within the 7d grace period`)."""
    unknown_pr: UnknownPullRequest = UnknownPullRequest.KEEP
    delete_manifests: bool = True
    max_deletions: int = 1000
    concurrency: int = 16
    schedule: str = "0 0 2 * * *"
    client_id: str | None = None
    tenant_id: str | None = None
    client_secret: Secret | None = field(default=None, repr=False)
    ssl_cert_file: str | None = None
    storage_container: str = "cleanup-runs"
    run_queue: str = "cleanup-runs"

    def repository_selected(self, name: str) -> bool:
        """True when CLEANUP_REPOSITORIES selects the repository `name`."""
        return self.repositories.selected(name)

    def credential_choice(self) -> CredentialChoice:
        """The Azure credential these settings select (cleanup.credentials decides)."""
        secret = self.client_secret.reveal() if self.client_secret is not None else None
        return choose_credential(self.client_id, self.tenant_id, secret)


class SettingsError(ConfigurationError):
    """ConfigurationError listing every bad setting, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def load_settings(environ: Mapping[str, str], *, dry_run: bool | None = None) -> Settings:
    """Parse and validate every setting in `environ`; `dry_run` overrides CLEANUP_DRY_RUN.

    Raises SettingsError (a ConfigurationError) naming every bad setting at once.
    """
    reader = _Reader(environ)
    registry, registry_url = reader.required("CLEANUP_REGISTRY", _parse_registry) or ("", "")
    org_url = reader.required("AZURE_DEVOPS_ORG_URL", _parse_org_url) or ""
    tag_pattern = reader.optional("CLEANUP_TAG_PATTERN", parse_tag_pattern)
    repositories = reader.optional("CLEANUP_REPOSITORIES", RepositoryFilter.parse)
    dry_run_setting = reader.optional("CLEANUP_DRY_RUN", _parse_bool)
    grace_text = reader.text("CLEANUP_GRACE_PERIOD")
    grace = reader.optional("CLEANUP_GRACE_PERIOD", _parse_grace)
    unknown_pr = reader.optional("CLEANUP_UNKNOWN_PR", _parse_unknown_pr)
    delete_manifests = reader.optional("CLEANUP_DELETE_MANIFESTS", _parse_bool)
    max_deletions = reader.optional("CLEANUP_MAX_DELETIONS", _int_in_range(0, None))
    concurrency = reader.optional("CLEANUP_CONCURRENCY", _int_in_range(1, MAX_CONCURRENCY))
    schedule = reader.optional("CLEANUP_SCHEDULE", _parse_schedule)
    storage_container = reader.optional("CLEANUP_STORAGE_CONTAINER", _parse_storage_name)
    run_queue = reader.optional("CLEANUP_RUN_QUEUE", _parse_run_queue)
    project = reader.text("AZURE_DEVOPS_PROJECT") or None
    if project is not None:
        reader.check("AZURE_DEVOPS_PROJECT", project, _parse_project)
    ssl_cert_file = reader.text("SSL_CERT_FILE") or None
    if ssl_cert_file is not None:
        reader.check("SSL_CERT_FILE", ssl_cert_file, _parse_cert_file)
    pat = reader.secret("AZURE_DEVOPS_PAT")
    client_id = reader.text("AZURE_CLIENT_ID") or None
    tenant_id = reader.text("AZURE_TENANT_ID") or None
    client_secret = reader.secret("AZURE_CLIENT_SECRET")
    if client_secret is not None:
        missing = [
            name
            for name, value in (("AZURE_CLIENT_ID", client_id), ("AZURE_TENANT_ID", tenant_id))
            if value is None
        ]
        if missing:
            reader.problems.append(
                f"AZURE_CLIENT_SECRET is set but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not: a service principal needs "
                "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET; a managed identity "
                "needs no secret"
            )
    reader.refuse_unknown()
    if reader.problems:
        raise SettingsError(reader.problems)
    return Settings(
        registry=registry,
        registry_url=registry_url,
        org_url=org_url,
        project=project,
        pat=pat,
        repositories=repositories,
        tag_pattern=tag_pattern,
        dry_run=bool(dry_run_setting) if dry_run is None else dry_run,
        grace_period=grace,
        grace_period_text=grace_text or "0",
        unknown_pr=unknown_pr,
        delete_manifests=bool(delete_manifests),
        max_deletions=max_deletions,
        concurrency=concurrency,
        schedule=schedule,
        client_id=client_id,
        tenant_id=tenant_id,
        client_secret=client_secret,
        ssl_cert_file=ssl_cert_file,
        storage_container=storage_container,
        run_queue=run_queue,
    )


_T = TypeVar("_T")


class _Reader:
    """Reads settings from one environment, collecting problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def text(self, name: str) -> str:
        return self.environ.get(name, "").strip()

    def check(self, name: str, value: str, parse: Callable[[str], _T]) -> _T | None:
        try:
            return parse(value)
        except ValueError as error:
            self.problems.append(f"{name}={_show(value)} is not allowed: {error}")
            return None

    def required(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        value = self.text(name)
        if not value:
            self.problems.append(f"{name} is required and is not set")
            return None
        return self.check(name, value, parse)

    def optional(self, name: str, parse: Callable[[str], _T]) -> _T:
        """The parsed value, or the default's (a problem is recorded, so it is never used)."""
        default = SETTING_DEFAULTS[name] or ""
        parsed = self.check(name, self.text(name) or default, parse)
        return parse(default) if parsed is None else parsed

    def secret(self, name: str) -> Secret | None:
        value = self.environ.get(name, "").strip()
        if not value:
            return None
        if not value.isprintable() or any(char.isspace() for char in value):
            self.problems.append(
                f"{name} is set but contains spaces, line breaks or control characters: "
                "a token is one line of printable characters"
            )
            return None
        if value.startswith("$("):
            self.problems.append(
                f"{name} is set to an unexpanded pipeline variable reference; map the "
                "secret variable into the job's environment"
            )
            return None
        return Secret(value)

    def refuse_unknown(self) -> None:
        """A misspelt setting of ours must not pass silently (a real run instead of a dry one,
        an organization-wide lookup instead of one project).

        Every unknown CLEANUP_ name is refused. AZURE_DEVOPS_ names are shared with other
        tools (the Azure DevOps CLI's AZURE_DEVOPS_EXT_PAT, ...): one is refused only when it
        is a near miss of ours.
        """
        known = sorted(name for name in SETTING_DEFAULTS if name.startswith(_OUR_PREFIXES))
        for name in sorted(self.environ):
            upper = name.upper()
            if name in SETTING_DEFAULTS or not upper.startswith(_OUR_PREFIXES):
                continue
            if upper.startswith("AZURE_DEVOPS_EXT_"):  # the Azure DevOps CLI's own
                continue
            if not upper.startswith("CLEANUP_") and not difflib.get_close_matches(
                upper, known, n=1, cutoff=0.85
            ):
                continue
            guesses = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
            hint = f"did you mean {guesses[0]}?" if guesses else f"known: {', '.join(known)}"
            self.problems.append(f"{name} is an unknown setting; {hint}")


_OUR_PREFIXES = ("CLEANUP_", "AZURE_DEVOPS_")
_USERINFO = re.compile(r"(?<=://)[^/?#]*@")


def _show(value: str) -> str:
    """The value for a message: quoted, escaped onto one line, shortened, no URL password."""
    shown = repr(_USERINFO.sub("***@", value))
    return shown if len(shown) <= 80 else shown[:77] + "...'"


def _parse_bool(value: str) -> bool:
    word = value.lower()
    if word in ("true", "1", "yes"):
        return True
    if word in ("false", "0", "no"):
        return False
    raise ValueError("use true or false (also 1/0, yes/no)")


def _parse_unknown_pr(value: str) -> UnknownPullRequest:
    try:
        return UnknownPullRequest(value.lower())
    except ValueError:
        raise ValueError("use keep or delete") from None


def _int_in_range(low: int, high: int | None) -> Callable[[str], int]:
    allowed = (
        f"a whole number from {low} to {high}"
        if high is not None
        else f"a whole number {low} or more"
    )

    def parse(value: str) -> int:
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", value):
            raise ValueError(allowed)
        number = int(value)
        if number < low or (high is not None and number > high):
            raise ValueError(allowed)
        return number

    return parse


def _parse_grace(value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        reason = str(error)
        if not reason.startswith("allowed"):
            reason = f"{reason} (allowed: {DURATION_ALLOWED})"
        raise ValueError(reason) from None


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def _split_https_url(value: str, *, what: str, allow_path: bool) -> tuple[str, str, str]:
    """(netloc, host, path) of an https URL; ValueError for anything else."""
    scheme, sep, _ = value.partition("://")
    if not sep:
        raise ValueError(f"{what}: expected https://host")
    if scheme.lower() == "http":
        raise ValueError("http:// is refused: https is required (credentials are sent)")
    if scheme.lower() != "https":
        raise ValueError(f"the scheme {scheme!r} is not allowed: https is required")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"{what}: not a valid URL (check the host and port)") from None
    if "@" in parts.netloc:
        raise ValueError("a user name or password in the URL is not allowed")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"{what}: a query or fragment is not allowed")
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError(f"{what}: a path is not allowed (expected https://host[:port])")
    host = parts.hostname or ""
    _check_host(host, bracketed=parts.netloc.startswith("["))
    if port is not None and port == 0:
        raise ValueError(f"{what}: the port must be from 1 to 65535")
    return parts.netloc, host, parts.path


def _check_host(host: str, *, bracketed: bool) -> None:
    if not host:
        raise ValueError("the URL has no host")
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
        return
    if not _HOSTNAME.fullmatch(host) or len(host) > 253:
        raise ValueError(f"{_show(host)} is not a host name")


def _parse_registry(value: str) -> tuple[str, str]:
    """(display login server, https URL) for a login server or an https URL."""
    what = "expected a login server (contoso.azurecr.io) or https://host[:port]"
    url = value if "://" in value else f"https://{value}"
    if "://" not in value and ("/" in value or "?" in value or "#" in value):
        raise ValueError(f"{what}: a path is not allowed")
    netloc, _, _ = _split_https_url(url, what=what, allow_path=False)
    return netloc, f"https://{netloc.lower()}"


def _parse_org_url(value: str) -> str:
    netloc, _, path = _split_https_url(
        value, what="expected https://dev.azure.com/ORGANIZATION", allow_path=True
    )
    return f"https://{netloc}{path}".rstrip("/")


def _parse_project(value: str) -> str:
    if not value.isprintable() or "/" in value or "\\" in value:
        raise ValueError("a project name or id: printable characters, no slashes")
    return value


def _parse_cert_file(value: str) -> str:
    if not os.path.isfile(value):
        raise ValueError("no such file: a CA bundle (PEM) that every HTTPS connection trusts")
    return value


_STORAGE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def _parse_storage_name(value: str) -> str:
    if not _STORAGE_NAME.fullmatch(value):
        raise ValueError(
            "3 to 63 lower-case letters, digits and single hyphens, starting and ending with a "
            "letter or digit"
        )
    return value


POISON_SUFFIX = "-poison"


def _parse_run_queue(value: str) -> str:
    """A queue name whose poison queue (`<name>-poison`, the Functions host's) is one too."""
    _parse_storage_name(value)
    longest = 63 - len(POISON_SUFFIX)
    if len(value) > longest:
        raise ValueError(
            f"at most {longest} characters: its poison queue {value + POISON_SUFFIX!r} must "
            "also be a queue name (3 to 63 characters)"
        )
    return value


_MONTHS = frozenset(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
)
_WEEKDAYS = frozenset(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])
_CRON_FIELDS: tuple[tuple[str, int, int, frozenset[str]], ...] = (
    ("second", 0, 59, frozenset()),
    ("minute", 0, 59, frozenset()),
    ("hour", 0, 23, frozenset()),
    ("day", 1, 31, frozenset()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
_CRON_ITEM = re.compile(
    r"(?:\*|(?P<a>[0-9]{1,2}|[A-Za-z]{3})(?:-(?P<b>[0-9]{1,2}|[A-Za-z]{3}))?)(?:/(?P<step>[0-9]{1,2}))?"
)


def _parse_schedule(value: str) -> str:
    fields = value.split()
    allowed = "six NCRONTAB fields: second minute hour day month day-of-week (0 0 2 * * *)"
    if len(fields) != len(_CRON_FIELDS):
        raise ValueError(f"{len(fields)} fields; {allowed}")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            match = _CRON_ITEM.fullmatch(item)
            if match is None:
                raise ValueError(f"the {name} field {text!r} is not valid; {allowed}")
            for number in (match["a"], match["b"]):
                if number is not None and number.isalpha() and number.lower() not in names:
                    raise ValueError(f"the {name} field has no name {number!r}; {allowed}")
                if number is not None and number.isdigit() and not low <= int(number) <= high:
                    raise ValueError(f"the {name} field must be from {low} to {high}")
            if match["step"] is not None and int(match["step"]) == 0:
                raise ValueError(f"the {name} field has a step of 0")
    return " ".join(fields)


# --- the tag pattern ----------------------------------------------------------------------

_sre_parser: Any = importlib.import_module("re._parser")
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})


def parse_tag_pattern(value: str) -> re.Pattern[str]:
    """Compile CLEANUP_TAG_PATTERN; ValueError unless it compiles, is safe and has group `pr`."""
    try:
        pattern = re.compile(value)
    except (re.error, OverflowError, RecursionError) as error:
        raise ValueError(f"not a valid regular expression ({error})") from None
    if "pr" not in pattern.groupindex:
        raise ValueError(r"the pattern needs a named group pr, e.g. (?i)^pr-?(?P<pr>\d+)$")
    reason = _catastrophic(value)
    if reason is not None:
        raise ValueError(reason)
    return pattern


_NESTED = (
    "a repeated group that itself repeats (like (a+)+ or (.*)*) can take exponential time; "
    "quantify the inner part only"
)
_ALTERNATION = (
    "an alternation inside a repeat (like (a|aa)*) can take exponential time; "
    "use a character class or repeat each branch separately"
)


def _catastrophic(value: str) -> str | None:
    """Why the pattern can backtrack exponentially, or None when it cannot in these ways."""
    try:
        tree = _sre_parser.parse(value)
    except (re.error, OverflowError, RecursionError):  # pragma: no cover -- compile() passed
        return "the pattern cannot be analysed"
    return _walk(list(tree), inside_repeat=False)


def _walk(items: list[tuple[Any, Any]], *, inside_repeat: bool) -> str | None:
    for op, arg in items:
        name = str(op)
        if name in _REPEATS:
            repeats = arg[1] > 1
            if repeats and inside_repeat:
                return _NESTED
            bodies, inner = [arg[2]], inside_repeat or repeats
        elif name == "BRANCH" and inside_repeat:
            return _ALTERNATION
        else:
            bodies, inner = _sub_patterns(name, arg), inside_repeat
        for body in bodies:
            reason = _walk(list(body), inside_repeat=inner)
            if reason is not None:
                return reason
    return None


def _sub_patterns(name: str, arg: Any) -> list[Any]:
    """The nested patterns of one parsed regex item (groups, branches, lookarounds)."""
    if name == "SUBPATTERN":
        return [arg[-1]]
    if name == "ATOMIC_GROUP":
        return [arg]
    if name == "BRANCH":
        return list(arg[1])
    if name in ("ASSERT", "ASSERT_NOT"):
        return [arg[1]]
    if name == "GROUPREF_EXISTS":
        return [branch for branch in arg[1:] if branch is not None]
    return []
