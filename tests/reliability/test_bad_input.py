"""Bad input: every setting's wrong types, ranges and shapes stop the real command line with
exit 2 before any request; hostile tag and repository names are handled without a crash.

(tests/integration/test_cli.py covers -1 for the cap, a pattern without `pr`, an http://
registry, an unknown CLEANUP_UNKNOWN_PR word and a misspelled setting; the HTTP API's 400s are
in tests/functions/test_http_api.py; property-based tests of the parsers in
tests/unit/test_policy_properties.py.)"""

from __future__ import annotations

import pytest

from cleanup.engine import run
from emulators import Emulators
from emulators.scenario import ImageSeed, Scenario
from tests.reliability.conftest import FAST, Emulate, cli_environment, run_cli, settings_for
from tests.reliability.conftest import snapshot as snap
from tests.reliability.scenarios import closed

pytestmark = pytest.mark.integration

BAD_SETTINGS = [
    ("CLEANUP_REGISTRY", "http://127.0.0.1:1"),
    ("CLEANUP_REGISTRY", "ftp://contoso.azurecr.io"),
    ("CLEANUP_REGISTRY", "contoso.azurecr.io/path"),
    ("CLEANUP_REGISTRY", "https://user:secret@contoso.azurecr.io"),
    ("CLEANUP_REGISTRY", "https://contoso.azurecr.io:99999"),
    ("CLEANUP_REGISTRY", "  "),
    ("AZURE_DEVOPS_ORG_URL", "http://dev.azure.com/contoso"),
    ("AZURE_DEVOPS_ORG_URL", "dev.azure.com/contoso"),
    ("AZURE_DEVOPS_ORG_URL", "https://dev.azure.com/contoso?x=1"),
    ("AZURE_DEVOPS_ORG_URL", ""),
    ("AZURE_DEVOPS_PROJECT", "web/api"),
    ("AZURE_DEVOPS_PAT", "two words"),
    ("AZURE_DEVOPS_PAT", "$(System.AccessToken)"),
    ("CLEANUP_REPOSITORIES", "team/*,,web"),
    ("CLEANUP_REPOSITORIES", "!"),
    ("CLEANUP_TAG_PATTERN", "(?P<pr>(a+)+)"),
    ("CLEANUP_TAG_PATTERN", "(?P<pr>(.*)*)"),
    ("CLEANUP_TAG_PATTERN", "(?P<pr>\\d+"),
    ("CLEANUP_TAG_PATTERN", "(?P<number>\\d+)"),
    ("CLEANUP_DRY_RUN", "maybe"),
    ("CLEANUP_DRY_RUN", "2"),
    ("CLEANUP_GRACE_PERIOD", "-7d"),
    ("CLEANUP_GRACE_PERIOD", "seven days"),
    ("CLEANUP_GRACE_PERIOD", "P7X"),
    ("CLEANUP_UNKNOWN_PR", "DROP"),
    ("CLEANUP_DELETE_MANIFESTS", "sometimes"),
    ("CLEANUP_MAX_DELETIONS", "ten"),
    ("CLEANUP_MAX_DELETIONS", "1.5"),
    ("CLEANUP_MAX_DELETIONS", "99999999999999999999999"),
    ("CLEANUP_CONCURRENCY", "0"),
    ("CLEANUP_CONCURRENCY", "-4"),
    ("CLEANUP_CONCURRENCY", "100000"),
    ("CLEANUP_SCHEDULE", "0 2 * * *"),
    ("CLEANUP_SCHEDULE", "0 0 25 * * *"),
    ("CLEANUP_STORAGE_CONTAINER", "Runs_Here"),
    ("CLEANUP_RUN_QUEUE", "ab"),
    ("SSL_CERT_FILE", "/no/such/ca.pem"),
    ("AZURE_CLIENT_SECRET", "a-secret-without-its-ids"),
]


@pytest.fixture
def quiet(start_emulators) -> Emulators:
    """Emulators that must see no request at all."""
    return start_emulators(Scenario(images=(ImageSeed("team/api", ("PR1",)),)))


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_a_bad_setting_exits_2_naming_it_with_no_request_sent(quiet: Emulators, name, value):
    """The real command line: exit 2, the setting named on stderr, nothing on stdout, and the
    emulators' request log empty."""
    env = cli_environment(quiet, **{name: value})
    if name == "AZURE_CLIENT_SECRET":
        env.pop("AZURE_CLIENT_ID", None)
    completed = run_cli(env, "--json")
    assert completed.returncode == 2, completed.stderr
    assert name in completed.stderr
    assert completed.stdout == ""
    assert "Traceback" not in completed.stderr
    if name in ("AZURE_DEVOPS_PAT", "AZURE_CLIENT_SECRET"):
        assert value not in completed.stderr
    assert "secret@" not in completed.stderr
    assert quiet.log.entries() == []


HOSTILE_REPOSITORIES = [
    "a/b/c/d/e/f/g",
    "team.x/api-v2_beta",
    "a__b/c-d",
    "x" * 200,
    "team/" + "y" * 240,
]
HOSTILE_TAGS = [
    "PR" + "1" * 126,  # 128 characters: an id beyond 32 bits, not a pull request
    "pr-0000000012",  # leading zeros: pull request 12
    "PR12..",
    "PR12.sig",
    "PR-12-",
    "v1.0_PR12",
    "PR12-" + "z" * 123,  # 128 characters
]
METACHARACTER_TAGS = [
    "PR12?x=1",
    "PR12#frag",
    "PR12&b",
    "PR12%2F..",
    "..",
    "PR12 ",
    "PŘ12",
    "PR\uff11\uff12",  # full-width digits: \d matches them
]


def hostile_scenario() -> Scenario:
    images = []
    for r, repository in enumerate(HOSTILE_REPOSITORIES):
        images.append(ImageSeed(repository, ("PR12",), salt=f"pr-{r}"))
        images.append(ImageSeed(repository, ("latest",), salt=f"keep-{r}"))
        images += [ImageSeed(repository, (t,), salt=f"{r}-{t}") for t in HOSTILE_TAGS]
    return Scenario(images=tuple(images), pull_requests=(closed(12),))


async def test_hostile_names_that_acr_allows_are_handled(emulate: Emulate):
    """Deep, long, dotted repository names and odd tags: PR tags of PR 12 go, the rest stay."""
    emulators = emulate(hostile_scenario())
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code == 0, report.render_text()
    after = snap(emulators)
    for repository in HOSTILE_REPOSITORIES:
        assert (repository, "PR12") not in after.tags
        assert (repository, "pr-0000000012") not in after.tags
        assert (repository, "latest") in after.tags
        for tag in HOSTILE_TAGS[2:]:
            assert (repository, tag) in after.tags, tag
        assert (repository, HOSTILE_TAGS[0]) in after.tags


async def test_url_metacharacters_in_names_never_delete_another_tag(emulate: Emulate):
    """Tags ACR would refuse, pushed into the emulator anyway (`?`, `#`, `&`, `%2F`, `..`,
    unicode): the run does not crash, and no tag but PR12's own is deleted."""
    images = [ImageSeed("team/api", ("PR12",), salt="pr"), ImageSeed("team/api", ("PR13",))]
    images += [ImageSeed("team/api", (t,), salt=t) for t in METACHARACTER_TAGS]
    emulators = emulate(Scenario(images=tuple(images), pull_requests=(closed(12),)))
    before = snap(emulators)
    report = await run(settings_for(emulators), tuning=FAST)
    assert report.exit_code in (0, 1), report.render_text()
    after = snap(emulators)
    assert set(before.tags) - set(after.tags) == {("team/api", "PR12")}
