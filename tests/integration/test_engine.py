"""A whole run through the real SDK and httpx against the emulators: every step of a run."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from cleanup.engine import run
from cleanup.runner import Progress
from cleanup.settings import load_settings
from emulators import Emulators
from emulators.acr import AcrKnobs, Budget
from emulators.harness import FaultRule
from emulators.scenario import ImageSeed, PullRequestSeed, Scenario, demo_scenario
from tests.conftest import StartEmulators

pytestmark = pytest.mark.integration


def settings_for(emulators: Emulators, **overrides: str | None):
    environment = dict(emulators.env)
    for name, value in overrides.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return load_settings(environment)


def actions(report_dict: Mapping[str, object]) -> dict[tuple[str, str], str]:
    return {
        (a["repository"], a["tag"]): a["action"]  # type: ignore[index]
        for a in report_dict["actions"]  # type: ignore[attr-defined]
    }


@pytest.fixture
def identity_environment(monkeypatch: pytest.MonkeyPatch, start_emulators: StartEmulators):
    """azure-identity finds the managed identity endpoint in the process environment."""
    started = []

    def start(scenario: Scenario | None = None, **kwargs: object) -> Emulators:
        emulators = start_emulators(scenario, **kwargs)
        for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"):
            monkeypatch.setenv(name, emulators.env[name])
        started.append(emulators)
        return emulators

    return start


@pytest.fixture
def demo(identity_environment) -> Emulators:
    return identity_environment(demo_scenario())


DEMO_EXPECTED = {
    ("team/api", "PR1234"): "delete",
    ("team/api", "pr-1240"): "keep",
    ("team/api", "PR1250"): "delete",
    ("team/api", "PR1299"): "keep",
    ("team/web", "PR1241"): "keep",
    ("team/web", "pr-1260"): "delete",
    ("team/web", "PR1234"): "delete",
    ("tools/builder", "PR1250"): "keep",
    ("payments", "PR1300"): "keep",
    ("payments", "pr-1234"): "delete",
}


async def test_demo_registry_is_cleaned_as_the_contract_says(demo: Emulators):
    """Closed pull requests' tags go; active, draft, unknown, other-project and locked stay."""
    report = await run(settings_for(demo))
    body = report.to_dict()
    assert actions(body) == DEMO_EXPECTED
    assert report.exit_code == 0
    state = demo.acr.state
    assert not state.has_tag("team/api", "PR1234")
    assert state.has_tag("team/api", "pr-1240")
    assert state.has_tag("tools/builder", "PR1250")
    assert state.has_tag("payments", "staging"), "a manifest keeping a release tag stays"
    assert state.has_tag("team/api", "latest")


async def test_multi_arch_image_and_its_signature_go_with_the_pull_request_tag(demo: Emulators):
    """Deleting an index deletes its platform manifests and the signature attached to it."""
    before = len(demo.acr.state.digests("team/api"))
    report = await run(settings_for(demo))
    after = len(demo.acr.state.digests("team/api"))
    # PR1234's index, its two platform manifests and its signature; PR1250's image.
    assert before - after == 5
    assert report.to_dict()["summary"]["manifestsDeleted"] >= 5  # type: ignore[index]


async def test_dry_run_reports_the_plan_and_deletes_nothing(demo: Emulators):
    """A dry run answers the same plan as a real run and leaves the registry as it was."""
    before = demo.acr.state.tag_count
    report = await run(settings_for(demo, CLEANUP_DRY_RUN="true"))
    assert actions(report.to_dict()) == DEMO_EXPECTED
    assert demo.acr.state.tag_count == before
    assert demo.log.count(service="acr", method="DELETE") == 0


async def test_managed_identity_serves_azure_devops_without_a_pat(demo: Emulators):
    """Without a PAT, the job gets an Entra token for Azure DevOps from the managed identity."""
    report = await run(settings_for(demo, AZURE_DEVOPS_PAT=None))
    assert actions(report.to_dict()) == DEMO_EXPECTED
    assert demo.log.count(service="devops", status=401) == 0


async def test_refused_pat_stops_the_run_before_any_deletion(demo: Emulators):
    """A PAT Azure DevOps refuses ends the run with exit 3 and deletes nothing."""
    report = await run(settings_for(demo, AZURE_DEVOPS_PAT="not-the-right-token"))
    assert report.exit_code == 3
    assert demo.log.count(service="acr", method="DELETE") == 0
    assert "not-the-right-token" not in report.to_json()


async def test_unknown_project_is_a_configuration_error_not_not_found(demo: Emulators):
    """A project Azure DevOps does not have stops the run (exit 3), nothing deleted."""
    report = await run(settings_for(demo, AZURE_DEVOPS_PROJECT="no-such-project"))
    assert report.exit_code == 3
    assert demo.log.count(service="acr", method="DELETE") == 0


async def test_unknown_pull_requests_are_deleted_only_when_asked(demo: Emulators):
    """CLEANUP_UNKNOWN_PR=delete deletes tags of pull requests Azure DevOps does not know."""
    report = await run(settings_for(demo, CLEANUP_UNKNOWN_PR="delete"))
    result = actions(report.to_dict())
    assert result[("team/api", "PR1299")] == "delete"
    assert result[("payments", "PR1300")] == "delete"
    assert result[("team/api", "pr-1240")] == "keep"


def paged_scenario(repositories: int, tags: int) -> Scenario:
    images = [
        ImageSeed(f"team/repo-{r:03d}", tags=(f"PR{t}",), salt=f"{r}-{t}")
        for r in range(repositories)
        for t in range(1, tags + 1)
    ]
    pulls = [PullRequestSeed(t, "completed" if t % 2 else "active") for t in range(1, tags + 1)]
    return Scenario(images=tuple(images), pull_requests=tuple(pulls))


async def test_paging_past_a_hundred_repositories_and_tags(identity_environment):
    """Catalog and tag listings longer than one page are read to the end."""
    many_repositories = paged_scenario(repositories=105, tags=1)
    many_tags = paged_scenario(repositories=1, tags=130)
    scenario = Scenario(
        images=many_repositories.images + many_tags.images[1:],
        pull_requests=many_tags.pull_requests,
    )
    emulators = identity_environment(scenario)
    report = await run(settings_for(emulators, CLEANUP_MAX_DELETIONS="100000"))
    summary = report.to_dict()["summary"]
    assert summary["repositories"] == 105  # type: ignore[index]
    assert summary["pullRequestTags"] == 105 + 129  # type: ignore[index]
    assert not emulators.acr.state.has_tag("team/repo-000", "PR129")
    assert emulators.acr.state.has_tag("team/repo-000", "PR130")
    assert not emulators.acr.state.has_tag("team/repo-104", "PR1")


async def test_request_counts_stay_close_to_one_per_operation(identity_environment):
    """DevOps requests stay within the distinct pull requests; ACR about one per operation."""
    emulators = identity_environment(paged_scenario(repositories=60, tags=6))
    report = await run(settings_for(emulators))
    assert report.exit_code == 0
    log = emulators.log
    devops_requests = log.count(service="devops")
    assert devops_requests <= 6
    token_requests = log.count(service="acr", route="acr.oauth2.*")
    challenges = log.count(service="acr", status=401)
    operations = log.count(service="acr") - token_requests - challenges
    assert operations > 200
    assert log.count(service="acr") / operations <= 1.2


async def test_throttled_registry_and_devops_are_waited_out(identity_environment):
    """429s with Retry-After from both services slow the run down; nothing fails."""
    emulators = identity_environment(
        demo_scenario(), acr_knobs=AcrKnobs(write_budget=Budget(3, 0.5))
    )
    emulators.devops.knobs.faults.add(
        FaultRule(route="devops.*", status=429, retry_after=0.1, times=3)
    )
    report = await run(settings_for(emulators))
    assert actions(report.to_dict()) == DEMO_EXPECTED
    assert report.exit_code == 0
    assert emulators.log.count(service="acr", status=429) > 0
    assert emulators.log.count(service="devops", status=429) == 3
    assert not emulators.acr.state.has_tag("team/api", "PR1234")


async def test_release_tag_put_on_a_pr_image_during_the_run_survives(demo: Emulators):
    """An image tagged for release between the plan and the deletions keeps its new tag."""
    state = demo.acr.state
    digest = state.resolve("team/web", "pr-1260")
    tagged: list[str] = []

    def promote(progress: Progress) -> None:
        if progress.phase == "deleting" and not tagged:
            demo.acr.call(lambda: state.tag("team/web", "v2.1.0", digest))
            tagged.append("v2.1.0")

    report = await run(settings_for(demo), progress=promote)
    assert tagged
    assert state.has_tag("team/web", "v2.1.0")
    assert state.has_manifest("team/web", digest)
    assert not state.has_tag("team/web", "pr-1260")
    assert actions(report.to_dict())[("team/web", "pr-1260")] == "delete"
    assert report.exit_code == 0


async def test_a_tagged_signature_keeps_the_image_it_is_attached_to(identity_environment):
    """A referrer with a tag of its own keeps its subject manifest; the PR tag alone goes."""
    scenario = Scenario(
        images=(
            ImageSeed("team/api", tags=("PR5",)),
            ImageSeed(
                "team/api",
                tags=("sbom-v1",),
                subject="PR5",
                artifact_type="application/spdx+json",
            ),
        ),
        pull_requests=(PullRequestSeed(5, "completed"),),
    )
    emulators = identity_environment(scenario)
    state = emulators.acr.state
    digest = state.resolve("team/api", "PR5")
    report = await run(settings_for(emulators))
    assert report.exit_code == 0
    assert not state.has_tag("team/api", "PR5")
    assert state.has_manifest("team/api", digest), "ACR would delete the tagged SBOM with it"
    assert state.has_tag("team/api", "sbom-v1")


async def test_a_managed_identity_that_refuses_is_named_not_the_registry(
    demo: Emulators, monkeypatch: pytest.MonkeyPatch
):
    """When the identity endpoint gives no token, the stop names the credential, exit 3."""
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header")
    report = await run(settings_for(demo))
    assert report.exit_code == 3
    assert report.stopped is not None
    assert report.stopped.startswith("the Azure credential refused the credential")
    assert demo.log.count(service="acr", method="DELETE") == 0


async def test_a_signature_pushed_during_the_run_keeps_its_image(demo: Emulators):
    """A signature attached to a PR image between the plan and the deletions keeps the image."""
    state = demo.acr.state
    digest = state.resolve("team/web", "pr-1260")
    pushed: list[str] = []

    def sign(progress: Progress) -> None:
        if progress.phase == "deleting" and not pushed:
            demo.acr.call(
                lambda: pushed.append(
                    state.add_image(
                        "team/web",
                        subject=digest,
                        artifact_type="application/vnd.cncf.notary.signature",
                    )
                )
            )

    report = await run(settings_for(demo), progress=sign)
    assert pushed
    assert state.has_manifest("team/web", digest)
    assert state.has_manifest("team/web", pushed[0])
    assert not state.has_tag("team/web", "pr-1260")
    assert report.exit_code == 0
