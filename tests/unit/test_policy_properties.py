"""Invariants of the policy and the parsers, over generated registries and text (hypothesis)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleanup.errors import ConfigurationError
from cleanup.model import Manifest, PullRequest, PullRequestStatus, RepositoryListing, Tag
from cleanup.policy import Action, StepKind, pr_id
from cleanup.settings import SETTING_DEFAULTS, load_settings, parse_tag_pattern
from tests.builders import digest, environment, plan_of, pr, rules

DEFAULT = parse_tag_pattern(SETTING_DEFAULTS["CLEANUP_TAG_PATTERN"] or "")
STATUSES = ["active", "completed", "abandoned", "notFound", "unknown", None]


@st.composite
def registries(draw):
    """A repository of up to 8 manifests (indexes, referrers, locks), tags and PR states."""
    count = draw(st.integers(1, 8))
    digests = [digest(n) for n in range(1, count + 1)]
    manifests, tags = [], []
    names = iter(range(10_000))
    for i, d in enumerate(digests):
        others = digests[:i] + digests[i + 1 :]
        references = (
            tuple(draw(st.lists(st.sampled_from(others), max_size=2, unique=True)))
            if others
            else ()
        )
        subject = draw(st.none() | st.sampled_from(others)) if others else None
        own = []
        for _ in range(draw(st.integers(0, 3))):
            number = draw(st.integers(1, 6))
            name = draw(st.sampled_from([f"PR{number}", f"pr-{number}", "latest", "v1"]))
            name = f"{name}.{next(names)}" if name in ("latest", "v1") else f"{name}"
            if name in {t.name for t in tags} or name in own:
                continue
            own.append(name)
            tags.append(Tag("r", name, d, draw(st.booleans() | st.just(True))))
        manifests.append(
            Manifest("r", d, tuple(own), references, subject, draw(st.booleans() | st.just(True)))
        )
    complete = draw(st.booleans() | st.just(True))
    pulls = {}
    for number in range(1, 7):
        status = draw(st.sampled_from(STATUSES))
        if status in ("completed", "abandoned"):
            ago = timedelta(days=draw(st.integers(0, 20)))
            pulls[number] = pr(number, status, closed_ago=ago)
        elif status is not None:
            pulls[number] = pr(number, status)
    listing = RepositoryListing(
        "r", tuple(tags), tuple(manifests), complete, None if complete else "x"
    )
    policy = rules(
        grace=timedelta(days=draw(st.sampled_from([0, 7]))),
        unknown_pr=draw(st.sampled_from(["keep", "delete"])),
        delete_manifests=draw(st.booleans()),
    )
    return listing, pulls, policy


def deleted_tags(p):
    return {d.tag for d in p.decisions if d.action is Action.DELETE}


def deleted_manifests(p):
    return {s.digest for s in p.steps if s.kind is StepKind.DELETE_MANIFEST}


def must_keep(status: PullRequestStatus | None, pull: PullRequest | None, unknown: str) -> bool:
    if pull is None or status in (PullRequestStatus.ACTIVE, PullRequestStatus.UNKNOWN):
        return True
    return status is PullRequestStatus.NOT_FOUND and unknown == "keep"


CASES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CASES
@given(registries())
def test_tags_of_open_or_unknown_pull_requests_are_never_deleted(case):
    """No tag of an active, unknown, unanswered or not-found-with-keep PR is deleted."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    for d in p.decisions:
        if must_keep(d.pr_status, pulls.get(d.pr_id), policy.unknown_pr.value):
            assert d.action is Action.KEEP, d


@CASES
@given(registries())
def test_manifests_that_keep_something_are_never_deleted(case):
    """A deleted manifest carries no kept tag, no kept index uses it, no kept referrer needs it."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    gone_tags, gone = deleted_tags(p), deleted_manifests(p)
    by_digest = {m.digest: m for m in listing.manifests}
    for d in gone:
        assert all(t.name in gone_tags for t in listing.tags if t.digest == d)
        assert all(tag in gone_tags for tag in by_digest[d].tags)
        users = [m.digest for m in listing.manifests if d in m.references and m.digest != d]
        assert all(user in gone for user in users)
        attached = [m.digest for m in listing.manifests if m.subject == d and m.digest != d]
        assert all(referrer in gone for referrer in attached)


@CASES
@given(registries())
def test_locked_items_are_never_touched(case):
    """No locked tag is deleted, no tag of a locked manifest, no locked manifest."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    locked_manifests = {m.digest for m in listing.manifests if not m.delete_enabled}
    locked_tags = {t.name for t in listing.tags if not t.delete_enabled}
    locked_tags |= {t.name for t in listing.tags if t.digest in locked_manifests}
    assert not deleted_tags(p) & locked_tags
    assert not deleted_manifests(p) & locked_manifests


@CASES
@given(registries())
def test_incomplete_listings_delete_nothing(case):
    """An incomplete listing has no steps and every PR tag kept."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    if not listing.complete:
        assert list(p.steps) == []
        assert deleted_tags(p) == set()


@CASES
@given(registries())
def test_the_cap_counts_exactly_the_deleted_tags(case):
    """tags_deleted equals the PR tags that the steps remove, each exactly once."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    removed = [tag for s in p.steps for tag in s.tags]
    assert sorted(removed) == sorted(deleted_tags(p))
    assert p.tags_deleted == len(removed)
    assert p.exceeds_cap(len(removed)) is False
    if removed:
        assert p.exceeds_cap(len(removed) - 1) is True


@CASES
@given(registries())
def test_untagged_manifests_go_only_with_what_they_hang_off(case):
    """A deleted untagged manifest is a platform manifest or referrer of a deleted one."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    gone = deleted_manifests(p)
    tagged = {t.digest for t in listing.tags} | {m.digest for m in listing.manifests if m.tags}
    for m in listing.manifests:
        if m.digest in gone and m.digest not in tagged:
            parents = {x.digest for x in listing.manifests if m.digest in x.references}
            assert (parents and parents <= gone) or m.subject in gone


@CASES
@given(registries())
def test_steps_wait_only_for_earlier_manifest_steps(case):
    """Every `after` names a manifest step listed earlier; no manifest with delete_manifests off."""
    listing, pulls, policy = case
    p = plan_of(listing, pulls, policy=policy)
    seen = set()
    for s in p.steps:
        assert set(s.after) <= seen
        if s.kind is StepKind.DELETE_MANIFEST:
            assert policy.delete_manifests
            seen.add(s.digest)


@given(st.text(max_size=200))
def test_pr_id_never_crashes(name):
    """Any text is either not a PR tag or a positive 32-bit id."""
    number = pr_id(name, DEFAULT)
    assert number is None or 0 < number < 2**31


@given(st.integers(1, 2**31 - 1), st.sampled_from(["PR", "pr", "pr-", "Pr-"]))
def test_pr_id_reads_back_what_it_names(number, prefix):
    """A tag written from an id reads back to the same id."""
    assert pr_id(f"{prefix}{number}", DEFAULT) == number


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_tag_pattern_parser_never_crashes(text):
    """Any pattern text is accepted (with a pr group) or refused with ValueError."""
    try:
        pattern = parse_tag_pattern(text)
    except ValueError:
        return
    assert "pr" in pattern.groupindex


SETTABLE = sorted(name for name in SETTING_DEFAULTS if name != "SSL_CERT_FILE")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SETTABLE), st.text(max_size=30))
def test_settings_parse_or_name_the_setting(name, value):
    """Any value of any setting loads, or fails with a ConfigurationError naming it."""
    try:
        load_settings(environment(**{name: value}))
    except ConfigurationError as error:
        message = str(error)
        assert name in message
        secret = value.strip()
        if name in ("AZURE_DEVOPS_PAT", "AZURE_CLIENT_SECRET") and len(secret) > 2:
            # The message with the value blanked out must read the same: a value that is
            # merely a word of the message ("ser" in "service") is not a leak.
            template = str(_error_for(name, "\x00" * len(value)))
            assert secret not in message.replace(name, "") or secret in template


def _error_for(name: str, value: str) -> str:
    try:
        load_settings(environment(**{name: value}))
    except ConfigurationError as error:
        return str(error)
    return ""


UNKNOWN_NAMES = st.from_regex(r"CLEANUP_[A-Z_]{1,12}", fullmatch=True).filter(
    lambda name: name not in SETTING_DEFAULTS
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(UNKNOWN_NAMES, st.text(max_size=5), min_size=1, max_size=3))
def test_unknown_cleanup_names_never_pass_silently(extra):
    """Any CLEANUP_ variable the product does not know stops the run, named on its own line."""
    with pytest.raises(ConfigurationError) as caught:
        load_settings(environment(**extra))
    for name in extra:
        assert re.search(rf"^{name} is an unknown setting", str(caught.value), re.M)
