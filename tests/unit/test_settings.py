"""Settings: every setting parsed once, every bad value refused with a message naming it."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from cleanup.credentials import CredentialKind
from cleanup.durations import format_duration, parse_duration
from cleanup.errors import ConfigurationError
from cleanup.settings import (
    SETTING_DEFAULTS,
    RepositoryFilter,
    Secret,
    UnknownPullRequest,
    load_settings,
    parse_tag_pattern,
)
from tests.builders import environment


def problem(**overrides: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environment(**overrides))
    return str(caught.value)


def test_defaults():
    """The smallest environment gives the contract's defaults."""
    s = load_settings(environment())
    assert (s.registry, s.registry_url, s.org_url) == (
        "contoso.azurecr.io",
        "https://contoso.azurecr.io",
        "https://dev.azure.com/contoso",
    )
    assert (s.dry_run, s.grace_period, s.unknown_pr, s.delete_manifests) == (
        False,
        timedelta(0),
        UnknownPullRequest.KEEP,
        True,
    )
    assert (s.max_deletions, s.concurrency, s.schedule) == (1000, 16, "0 0 2 * * *")
    assert (s.storage_container, s.run_queue, s.project, s.pat) == (
        "cleanup-runs",
        "cleanup-runs",
        None,
        None,
    )
    assert s.credential_choice().kind is CredentialKind.SYSTEM_ASSIGNED_MANAGED_IDENTITY


def test_setting_defaults_parse_to_the_settings_defaults():
    """Every default in SETTING_DEFAULTS is itself a valid value."""
    env = {name: value for name, value in SETTING_DEFAULTS.items() if value is not None}
    s = load_settings(environment(**env))
    assert s.tag_pattern.pattern == SETTING_DEFAULTS["CLEANUP_TAG_PATTERN"]


@pytest.mark.parametrize(
    ("value", "display", "url"),
    [
        ("contoso.azurecr.io", "contoso.azurecr.io", "https://contoso.azurecr.io"),
        ("Contoso.AzureCR.io", "Contoso.AzureCR.io", "https://contoso.azurecr.io"),
        ("https://contoso.azurecr.io", "contoso.azurecr.io", "https://contoso.azurecr.io"),
        ("https://contoso.azurecr.io/", "contoso.azurecr.io", "https://contoso.azurecr.io"),
        ("127.0.0.1:8443", "127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("https://localhost:8443", "localhost:8443", "https://localhost:8443"),
        ("https://[::1]:8443", "[::1]:8443", "https://[::1]:8443"),
        ("  contoso.azurecr.io  ", "contoso.azurecr.io", "https://contoso.azurecr.io"),
    ],
)
def test_registry_accepted(value, display, url):
    """A login server or https URL gives the display name and the normalised https URL."""
    s = load_settings(environment(CLEANUP_REGISTRY=value))
    assert (s.registry, s.registry_url) == (display, url)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("http://contoso.azurecr.io", "https is required"),
        ("http://127.0.0.1:8080", "https is required"),
        ("ftp://contoso.azurecr.io", "https is required"),
        ("contoso.azurecr.io/path", "a path is not allowed"),
        ("https://contoso.azurecr.io/v2", "a path is not allowed"),
        ("https://contoso.azurecr.io?x=1", "query"),
        ("https://user:pw@contoso.azurecr.io", "user name or password"),
        ("https://contoso.azurecr.io:99999", "not a valid URL"),
        ("https://contoso.azurecr.io:0", "port"),
        ("conto so.io", "not a host name"),
        ("https://", "no host"),
        ("https://[zz::1]", "not a valid URL"),
    ],
)
def test_registry_refused(value, says):
    """A registry that is not a login server or https URL is refused, naming the setting."""
    message = problem(CLEANUP_REGISTRY=value)
    assert message.startswith("CLEANUP_REGISTRY=")
    assert says in message


def test_a_password_in_a_url_is_never_echoed():
    """A URL with userinfo is refused without showing the password."""
    assert "hunter2" not in problem(AZURE_DEVOPS_ORG_URL="https://me:hunter2@dev.azure.com/c")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://dev.azure.com/contoso", "https://dev.azure.com/contoso"),
        ("https://dev.azure.com/contoso/", "https://dev.azure.com/contoso"),
        ("https://tfs.contoso.local/tfs/Default/", "https://tfs.contoso.local/tfs/Default"),
        ("https://127.0.0.1:9443/org", "https://127.0.0.1:9443/org"),
    ],
)
def test_org_url_accepted(value, expected):
    """Any https base URL is an organisation URL; a trailing slash is dropped."""
    assert load_settings(environment(AZURE_DEVOPS_ORG_URL=value)).org_url == expected


@pytest.mark.parametrize(
    "value", ["http://dev.azure.com/contoso", "dev.azure.com/contoso", "https:///contoso"]
)
def test_org_url_refused(value):
    """An organisation URL must be https with a host."""
    assert problem(AZURE_DEVOPS_ORG_URL=value).startswith("AZURE_DEVOPS_ORG_URL=")


@pytest.mark.parametrize("name", ["CLEANUP_REGISTRY", "AZURE_DEVOPS_ORG_URL"])
def test_required_settings(name):
    """A required setting missing or empty is named."""
    env = environment()
    env[name] = " "
    with pytest.raises(ConfigurationError, match=f"{name} is required"):
        load_settings(env)


@pytest.mark.parametrize(
    ("patterns", "selected", "not_selected"),
    [
        ("*", ["a", "team/api", ""], []),
        ("team/*", ["team/api", "team/x/y", "team/"], ["other/api", "Team/api", "xteam/api"]),
        ("team/*, !team/keep", ["team/api"], ["team/keep"]),
        ("!team/*", ["other", "teamx"], ["team/a"]),
        ("!a, !b", ["c"], ["a", "b"]),
        ("*/api", ["web/api", "a/b/api"], ["api", "web/api2"]),
        ("a?b, [x]", ["a?b", "[x]"], ["acb", "x"]),
        ("web/*,!*/legacy*", ["web/api"], ["web/legacy-api"]),
    ],
)
def test_repository_patterns(patterns, selected, not_selected):
    """Globs match in full, case-sensitive, `*` crosses `/`, exclusions win."""
    s = load_settings(environment(CLEANUP_REPOSITORIES=patterns))
    assert [name for name in selected if not s.repository_selected(name)] == []
    assert [name for name in not_selected if s.repository_selected(name)] == []


@pytest.mark.parametrize(("value", "says"), [("a,,b", "empty pattern"), ("a, !", "'!' alone")])
def test_repository_patterns_refused(value, says):
    """Empty items and a bare `!` are refused."""
    assert says in problem(CLEANUP_REPOSITORIES=value)


def test_repository_filter_is_one_regex():
    """The filter keeps its patterns, trimmed, for display."""
    assert RepositoryFilter.parse(" a , !b ").patterns == ("a", "!b")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (r"pr(\d+)", "named group pr"),
        (r"(?P<pr>\d+", "not a valid regular expression"),
        (r"(?P<pr>(\d+)+)", "exponential"),
        (r"(?P<pr>(\d*)*)", "exponential"),
        (r"(?P<pr>\d+)(.*)*", "exponential"),
        (r"(?P<pr>\d+)(a|b+)+", "exponential"),
        (r"(?P<pr>(?:\d{1,3}){2,})", "exponential"),
        (r"(?P<pr>\d+)(?=(a+)+)", "exponential"),
        (r"(?P<pr>(a|aa)*)", "alternation"),
        (r"(?P<pr>\d+)(-linux|-win)+", "alternation"),
    ],
)
def test_tag_pattern_refused(value, says):
    """A tag pattern must compile, name a `pr` group and avoid nested quantifiers."""
    message = problem(CLEANUP_TAG_PATTERN=value)
    assert message.startswith("CLEANUP_TAG_PATTERN=")
    assert says in message


@pytest.mark.parametrize(
    "value",
    [
        r"(?i)^pr-?(?P<pr>\d+)$",
        r"build-(?P<pr>\d+)-\w+",
        r"(?P<pr>\d+)-(linux|windows)?",
        r"pr(?P<pr>[0-9]{1,7})(-[a-z]+)?",
    ],
)
def test_tag_pattern_accepted(value):
    """Ordinary patterns, optional groups and bounded repeats are fine."""
    assert parse_tag_pattern(value).pattern == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("36h", timedelta(hours=36)),
        ("7d", timedelta(days=7)),
        ("90m", timedelta(minutes=90)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("45s", timedelta(seconds=45)),
        ("7D", timedelta(days=7)),
        ("P7D", timedelta(days=7)),
        ("PT36H", timedelta(hours=36)),
        ("P1DT12H", timedelta(days=1, hours=12)),
        ("PT90M", timedelta(minutes=90)),
        ("P2W", timedelta(weeks=2)),
        ("p7d", timedelta(days=7)),
    ],
)
def test_durations(text, expected):
    """Short forms and ISO 8601 durations without years or months."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-7d", "negative"),
        ("-P7D", "negative"),
        ("P1M", "months"),
        ("P1Y", "years"),
        ("P1Y2M3D", "months"),
        ("P1.5D", "fractions"),
        ("7", "allowed"),
        ("", "allowed"),
        ("P", "allowed"),
        ("PT", "allowed"),
        ("P1DT", "allowed"),
        ("7 days", "allowed"),
        ("d7", "allowed"),
        ("999999999w", "too large"),
        ("1h1d", "allowed"),
    ],
)
def test_durations_refused(text, says):
    """Bad durations are refused with the reason."""
    with pytest.raises(ValueError, match=says):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "90m", "36h", "1d12h", "3d", "45s"])
def test_format_duration_round_trips(text):
    """format_duration writes what parse_duration reads back."""
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)


def test_grace_period_keeps_the_text_for_reasons():
    """The grace period is parsed, and its text kept as the user wrote it."""
    s = load_settings(environment(CLEANUP_GRACE_PERIOD="P7D"))
    assert (s.grace_period, s.grace_period_text) == (timedelta(days=7), "P7D")


def test_grace_period_refused_names_the_setting():
    """A bad grace period names CLEANUP_GRACE_PERIOD and what is allowed."""
    message = problem(CLEANUP_GRACE_PERIOD="1 month")
    assert message.startswith("CLEANUP_GRACE_PERIOD='1 month' is not allowed")
    assert "P7D" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True)],
        *[("false", False), ("False", False), ("0", False), ("no", False), ("", False)],
    ],
)
def test_booleans(value, expected):
    """Booleans: true/false, 1/0, yes/no, any case; empty means the default."""
    assert load_settings(environment(CLEANUP_DRY_RUN=value)).dry_run is expected


@pytest.mark.parametrize("value", ["on", "y", "2", "tru", "nope"])
def test_booleans_refused(value):
    """Other words are refused."""
    assert problem(CLEANUP_DELETE_MANIFESTS=value).startswith("CLEANUP_DELETE_MANIFESTS=")


@pytest.mark.parametrize(("flag", "expected"), [(True, True), (False, False)])
def test_dry_run_argument_overrides(flag, expected):
    """load_settings(dry_run=...) overrides CLEANUP_DRY_RUN."""
    env = environment(CLEANUP_DRY_RUN=str(not flag).lower())
    assert load_settings(env, dry_run=flag).dry_run is expected


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CLEANUP_MAX_DELETIONS", "0", 0),
        ("CLEANUP_MAX_DELETIONS", "250000", 250000),
        ("CLEANUP_CONCURRENCY", "1", 1),
        ("CLEANUP_CONCURRENCY", "256", 256),
        ("CLEANUP_CONCURRENCY", "+8", 8),
    ],
)
def test_numbers(name, value, expected):
    """Whole numbers within their ranges."""
    s = load_settings(environment(**{name: value}))
    assert getattr(s, {"CLEANUP_MAX_DELETIONS": "max_deletions"}.get(name, "concurrency")) == (
        expected
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANUP_MAX_DELETIONS", "-1"),
        ("CLEANUP_MAX_DELETIONS", "ten"),
        ("CLEANUP_MAX_DELETIONS", "1.5"),
        ("CLEANUP_MAX_DELETIONS", "1e3"),
        ("CLEANUP_MAX_DELETIONS", "9" * 40),
        ("CLEANUP_CONCURRENCY", "0"),
        ("CLEANUP_CONCURRENCY", "257"),
        ("CLEANUP_CONCURRENCY", "-4"),
    ],
)
def test_numbers_refused(name, value):
    """Out-of-range or non-integer numbers are refused with the allowed range."""
    message = problem(**{name: value})
    assert message.startswith(f"{name}=")
    assert "whole number" in message


@pytest.mark.parametrize(("value", "expected"), [("keep", "keep"), ("DELETE", "delete")])
def test_unknown_pr(value, expected):
    """CLEANUP_UNKNOWN_PR is keep or delete."""
    assert load_settings(environment(CLEANUP_UNKNOWN_PR=value)).unknown_pr.value == expected


def test_unknown_pr_refused():
    """Another word is refused."""
    assert "use keep or delete" in problem(CLEANUP_UNKNOWN_PR="ignore")


@pytest.mark.parametrize(
    "value",
    ["0 0 2 * * *", "0 */5 * * * *", "0 30 9 * * 1-5", "0 0 0 1 JAN,JUL MON", "0 0 2 * * 0"],
)
def test_schedule_accepted(value):
    """Six NCRONTAB fields."""
    assert load_settings(environment(CLEANUP_SCHEDULE=value)).schedule == value


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0 2 * * *", "5 fields"),
        ("0 0 2 * * xyz", "no name 'xyz'"),
        ("0 0 2 * FOO *", "no name 'FOO'"),
        ("0 0 MON * * *", "no name 'MON'"),
        ("0 0 2 * * * *", "7 fields"),
        ("0 0 24 * * *", "hour field"),
        ("60 0 2 * * *", "second field"),
        ("0 0 2 0 * *", "day field"),
        ("0 0 2 * 13 *", "month field"),
        ("0 0 2 * * 8", "day of week field"),
        ("0 0 2 ? * *", "not valid"),
        ("0 */0 * * * *", "step of 0"),
    ],
)
def test_schedule_refused(value, says):
    """Schedules of the wrong shape or out of range are refused."""
    message = problem(CLEANUP_SCHEDULE=value)
    assert message.startswith("CLEANUP_SCHEDULE=")
    assert says in message


@pytest.mark.parametrize(
    ("env", "kind"),
    [
        ({}, CredentialKind.SYSTEM_ASSIGNED_MANAGED_IDENTITY),
        ({"AZURE_CLIENT_ID": "c"}, CredentialKind.USER_ASSIGNED_MANAGED_IDENTITY),
        ({"AZURE_TENANT_ID": "t"}, CredentialKind.SYSTEM_ASSIGNED_MANAGED_IDENTITY),
        (
            {"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": "s"},
            CredentialKind.SERVICE_PRINCIPAL,
        ),
        (
            {"AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": ""},
            CredentialKind.USER_ASSIGNED_MANAGED_IDENTITY,
        ),
    ],
)
def test_credential_kinds(env, kind):
    """Service principal with all three; a client id alone picks a user-assigned identity."""
    assert load_settings(environment(**env)).credential_choice().kind is kind


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({"AZURE_CLIENT_SECRET": "s3cr3t"}, "AZURE_CLIENT_ID and AZURE_TENANT_ID are not"),
        ({"AZURE_CLIENT_SECRET": "s3cr3t", "AZURE_TENANT_ID": "t"}, "AZURE_CLIENT_ID is not"),
        ({"AZURE_CLIENT_SECRET": "s3cr3t", "AZURE_CLIENT_ID": "c"}, "AZURE_TENANT_ID is not"),
    ],
)
def test_a_secret_without_its_service_principal(env, missing):
    """A client secret without client and tenant id names what is missing, not the secret."""
    message = problem(**env)
    assert missing in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize("name", ["AZURE_DEVOPS_PAT", "AZURE_CLIENT_SECRET"])
@pytest.mark.parametrize("value", ["abc def", "abc\ndef", "abc\x00"])
def test_bad_secrets_are_described_not_shown(name, value):
    """A malformed secret is refused as "is set", never echoed."""
    env = {"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", name: value}
    message = problem(**env)
    assert f"{name} is set but" in message
    assert "abc" not in message


def test_an_unexpanded_pipeline_variable_is_refused():
    """`$(System.AccessToken)` left unexpanded by a pipeline is refused."""
    assert "unexpanded pipeline variable" in problem(AZURE_DEVOPS_PAT="$(System.AccessToken)")


def test_secrets_never_print():
    """Settings' repr, and a Secret's str and repr, never show a secret."""
    s = load_settings(
        environment(
            AZURE_DEVOPS_PAT="pat-value-1",
            AZURE_CLIENT_ID="c",
            AZURE_TENANT_ID="t",
            AZURE_CLIENT_SECRET="secret-value-2",
        )
    )
    assert "pat-value-1" not in repr(s)
    assert "secret-value-2" not in repr(s)
    assert (str(s.pat), repr(s.pat), f"{s.client_secret}") == ("***", "***", "***")
    assert s.pat is not None
    assert s.pat.reveal() == "pat-value-1"
    assert repr(Secret("x")) == "***"


def test_empty_optional_values_mean_unset():
    """An empty optional setting takes its default."""
    s = load_settings(
        environment(CLEANUP_CONCURRENCY="", AZURE_DEVOPS_PROJECT="", AZURE_DEVOPS_PAT="")
    )
    assert (s.concurrency, s.project, s.pat) == (16, None, None)


@pytest.mark.parametrize(
    ("name", "guess"),
    [
        ("CLEANUP_DRYRUN", "CLEANUP_DRY_RUN"),
        ("cleanup_dry_run", "CLEANUP_DRY_RUN"),
        ("CLEANUP_MAX_DELETION", "CLEANUP_MAX_DELETIONS"),
        ("CLEANUP_GRACE", "CLEANUP_GRACE_PERIOD"),
        ("AZURE_DEVOPS_PROJCT", "AZURE_DEVOPS_PROJECT"),
        ("AZURE_DEVOPS_ORG", "AZURE_DEVOPS_ORG_URL"),
    ],
)
def test_unknown_cleanup_settings_are_refused(name, guess):
    """A misspelled CLEANUP_ or AZURE_DEVOPS_ setting stops the run and suggests the right name."""
    assert f"{name} is an unknown setting; did you mean {guess}?" in problem(**{name: "true"})


def test_other_variables_are_ignored():
    """Variables outside the CLEANUP_ prefix are not ours to judge."""
    load_settings(
        environment(
            PATH="/bin",
            AZURE_DEVOPS_EXT_PAT="x",
            AZURE_DEVOPS_CACHE_DIR="/var/cache/ado",
            IDENTITY_ENDPOINT="u",
        )
    )


def test_ssl_cert_file_must_exist(tmp_path):
    """SSL_CERT_FILE, when set, must name an existing file."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_settings(environment(SSL_CERT_FILE=str(bundle))).ssl_cert_file == str(bundle)
    assert "no such file" in problem(SSL_CERT_FILE=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CLEANUP_STORAGE_CONTAINER", "Runs"),
        ("CLEANUP_STORAGE_CONTAINER", "ab"),
        ("CLEANUP_RUN_QUEUE", "a--b"),
        ("CLEANUP_RUN_QUEUE", "-runs"),
    ],
)
def test_storage_names_refused(name, value):
    """Container and queue names follow Azure Storage's naming rules."""
    assert problem(**{name: value}).startswith(f"{name}=")


def test_the_run_queue_leaves_room_for_its_poison_queue():
    """CLEANUP_RUN_QUEUE is at most 56 characters, so `<name>-poison` fits in 63."""
    longest = "q" * 56
    assert load_settings(environment(CLEANUP_RUN_QUEUE=longest)).run_queue == longest
    message = problem(CLEANUP_RUN_QUEUE="q" * 57)
    assert message.startswith("CLEANUP_RUN_QUEUE=")
    assert "at most 56 characters" in message
    assert "poison" in message


def test_project_refuses_slashes():
    """A project name with a slash (an org URL pasted in) is refused."""
    assert problem(AZURE_DEVOPS_PROJECT="contoso/web").startswith("AZURE_DEVOPS_PROJECT=")


def test_all_problems_are_reported_together():
    """Several bad settings give one error with one line each."""
    message = problem(
        CLEANUP_REGISTRY="http://x", CLEANUP_CONCURRENCY="0", CLEANUP_UNKNOWN_PR="maybe"
    )
    lines = message.splitlines()
    assert len(lines) == 3
    assert [re.match(r"[A-Z_]+", line)[0] for line in lines] == [
        "CLEANUP_REGISTRY",
        "CLEANUP_UNKNOWN_PR",
        "CLEANUP_CONCURRENCY",
    ]


def test_configuration_errors_exit_2():
    """A settings problem is a ConfigurationError: exit code 2."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings({})
    assert caught.value.exit_code == 2
