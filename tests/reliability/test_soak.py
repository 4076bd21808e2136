"""The seeded soak: many small runs with random faults against one registry that keeps
getting new images. After every run the safety invariants hold; once the faults stop, one
more run leaves exactly what a fault-free run leaves on a fresh copy of the same registry."""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import replace

import pytest

from cleanup.engine import run
from emulators import Emulators
from emulators.harness import FaultRule
from emulators.scenario import ImageSeed, PullRequestSeed
from tests.reliability.conftest import FAST, Emulate, Snapshot, settings_for, snapshot
from tests.reliability.scenarios import closed, random_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = int(os.environ.get("SOAK_SEED", "20261204"))
RUNS = 60

ACR_ROUTES = [
    "acr.catalog",
    "acr.tags.list",
    "acr.manifests.list",
    "acr.manifest.get",
    "acr.tag.delete",
    "acr.manifest.delete",
    "acr.oauth2.*",
]
READ_ROUTES = {"acr.catalog", "acr.tags.list", "acr.manifests.list", "acr.manifest.get"}
DEVOPS_ROUTES = ["devops.pr.list", "devops.pr.get"]


def random_rule(rng: random.Random, route: str, *, reads: bool) -> FaultRule:
    """One random fault; slow answers only on reads (a delayed write would land later)."""
    kinds = ["429", "500", "503", "drop", "malformed"] + (["slow"] if reads else [])
    kind = rng.choice(kinds)
    common = {
        "route": route,
        "probability": rng.uniform(0.1, 0.5),
        "times": rng.choice([1, 2, 4, None]),
    }
    if kind == "slow":
        return FaultRule(kind="slow", delay_s=FAST.registry_timeout_s * 2, **common | {"times": 1})
    if kind in ("drop", "malformed"):
        return FaultRule(kind=kind, **common)  # type: ignore[arg-type]
    retry_after = 0.01 if kind == "429" else None
    return FaultRule(status=int(kind), retry_after=retry_after, **common)  # type: ignore[arg-type]


def inject(rng: random.Random, emulators: Emulators) -> None:
    for route in rng.sample(ACR_ROUTES, rng.randint(1, 3)):
        rule = random_rule(rng, route, reads=route in READ_ROUTES)
        emulators.acr.knobs.faults.add(rule)
    if rng.random() < 0.6:
        route = rng.choice(DEVOPS_ROUTES)
        rule = random_rule(rng, route, reads=True)
        if rng.random() < 0.05:
            rule = FaultRule(route=route, status=203, times=1)  # the sign-in page
        emulators.devops.knobs.faults.add(rule)


def push(
    rng: random.Random, emulators: Emulators, number: int
) -> tuple[list[ImageSeed], PullRequestSeed | None]:
    """A new pull-request image (sometimes multi-arch, signed or locked) and its pull request."""
    repository = rng.choice(emulators.acr.state.repository_names())
    tag = f"PR{number}"
    image = ImageSeed(
        repository,
        (tag,),
        platforms=("linux/amd64", "linux/arm64") if rng.random() < 0.2 else (),
        locked_tags=(tag,) if rng.random() < 0.05 else (),
        salt=f"soak-{number}",
    )
    images = [image]
    if rng.random() < 0.2:
        images.append(ImageSeed(repository, subject=tag, salt=f"soak-sig-{number}"))
    for seed in images:
        emulators.acr.state.add_image(
            seed.repository,
            seed.tags,
            platforms=seed.platforms,
            subject=seed.subject,
            locked_tags=seed.locked_tags,
            salt=seed.salt,
        )
    status = rng.choice(["active", "completed", "abandoned", "unknown"])
    if status == "unknown":
        return images, None
    pull = PullRequestSeed(number, "active") if status == "active" else closed(number, status)
    emulators.devops.state.add_pull_request(
        number, status=pull.status, project="web", closed_at=pull.closed_at
    )
    return images, pull


def violations(before: Snapshot, after: Snapshot, protected: set[tuple[str, str]]) -> list[str]:
    """Every broken safety invariant between two snapshots of one run."""
    found = [
        f"protected tag {key} is gone"
        for key in protected
        if key in before.tags and after.tags.get(key) != before.tags[key]
    ]
    found += [
        f"locked tag {key} was touched"
        for key in before.locked_tags
        if key not in after.tags or key not in after.locked_tags
    ]
    found += [
        f"locked manifest {key} was touched"
        for key in before.locked_manifests
        if key not in after.manifests or key not in after.locked_manifests
    ]
    found += [
        f"manifest {repository}@{digest} keeps a tag and is gone"
        for (repository, _tag), digest in after.tags.items()
        if (repository, digest) not in after.manifests
    ]
    return found


def orphans(emulators: Emulators, extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The manifests of `extra` that are untagged leftovers of a deleted index or subject."""
    state = emulators.acr.state
    found = []
    for repository, digest in extra:
        record = state.manifest(repository, digest)
        manifests = state.repositories[repository].manifests.values()
        untagged = not state.repositories[repository].tags_of(digest)
        used = any(digest in {r.digest for r in m.references} for m in manifests)
        dangling = record.subject is not None and not state.has_manifest(repository, record.subject)
        if untagged and (dangling or (record.subject is None and not used)):
            found.append((repository, digest))
    return found


def protected_tags(snap: Snapshot, pulls: dict[int, PullRequestSeed]) -> set[tuple[str, str]]:
    """Tags of active or unknown pull requests, and every tag that names no pull request."""
    keep = set()
    for repository, tag in snap.tags:
        lowered = tag.lower().removeprefix("pr").removeprefix("-")
        number = int(lowered) if tag.lower().startswith("pr") and lowered.isdigit() else None
        pull = pulls.get(number) if number is not None else None
        if number is None or pull is None or pull.status == "active":
            keep.add((repository, tag))
    return keep


async def test_soak_random_faults_keep_the_invariants_and_converge(emulate: Emulate, capsys):
    """60 seeded runs with random faults: never a protected, locked or needed item lost; the
    first run after the faults stop leaves exactly the fault-free result."""
    rng = random.Random(SEED)
    scenario = random_registry(rng)
    emulators = emulate(scenario)
    pulls = {p.id: p for p in scenario.pull_requests}
    pushed: list[ImageSeed] = []
    settings = settings_for(emulators)
    counts: Counter[str] = Counter()
    found: list[str] = []
    number = 500
    for index in range(RUNS):
        for _ in range(rng.randint(0, 3)):
            number += 1
            images, pull = push(rng, emulators, number)
            pushed.extend(images)
            if pull is not None:
                pulls[pull.id] = pull
        emulators.acr.knobs.faults.clear()
        emulators.devops.knobs.faults.clear()
        inject(rng, emulators)
        before = snapshot(emulators)
        report = await run(settings, tuning=FAST)
        counts["runs"] += 1
        counts[f"exit {report.exit_code}"] += 1
        counts["faults injected"] += (
            emulators.acr.knobs.faults.injected + emulators.devops.knobs.faults.injected
        )
        after = snapshot(emulators)
        counts["tags deleted"] += len(set(before.tags) - set(after.tags))
        counts["manifests deleted"] += len(before.manifests - after.manifests)
        found += [
            f"run {index}: {v}" for v in violations(before, after, protected_tags(before, pulls))
        ]

    emulators.acr.knobs.faults.clear()
    emulators.devops.knobs.faults.clear()
    final = await run(settings, tuning=FAST)
    converged = snapshot(emulators)

    whole = replace(
        scenario,
        images=scenario.images + tuple(pushed),
        pull_requests=tuple(pulls.values()),
    )
    fresh = emulate(whole)
    clean = await run(settings_for(fresh), tuning=FAST)
    expected = snapshot(fresh)

    extra = sorted(converged.manifests - expected.manifests)
    left = orphans(emulators, extra)
    figures = (
        f"soak (seed {SEED}): {counts['runs']} runs, {counts['faults injected']} faults injected, "
        f"{counts['tags deleted']} tags and {counts['manifests deleted']} manifests deleted, "
        f"exits {dict(sorted((k, v) for k, v in counts.items() if k.startswith('exit')))}, "
        f"{len(found)} invariant violations; after the faults stop, tags exactly the "
        f"fault-free result, {len(left)} orphaned manifests left over"
    )
    with capsys.disabled():
        print("\n" + figures)  # noqa: T201 - the soak's figures are its output
    assert found == []
    assert final.exit_code == 0, final.render_text()
    assert clean.exit_code == 0, clean.render_text()
    assert converged.tags == expected.tags
    # Leaves go before their index or subject, so a failed deletion leaves nothing untagged
    # behind: once faults stop, the registry is exactly the fault-free result.
    assert converged.manifests == expected.manifests, f"left over: {extra}, orphans: {left}"
    assert counts["faults injected"] > RUNS
