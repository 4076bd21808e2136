"""Pure: re-check a repository's manifest deletions against a listing read just before them.

A plan is made from listings that can be many minutes old by the time its deletions run (a
large scan, a throttled registry). Meanwhile someone may have tagged a pull request's image
for release (`v1.2.3` on the same digest), pushed an index that uses a platform manifest the
plan deletes, or locked an image. Deleting a manifest removes every tag on it, so each
manifest deletion is checked against a fresh listing of its repository first:

- a manifest that now carries a tag the plan does not remove is kept; only the plan's
  pull-request tags are removed from it (`TAGS_ONLY`);
- a manifest that is now locked is kept with its tags (`LOCKED`);
- a manifest that a manifest outside the deletion set now uses (a new index that lists it, a
  new signature attached to it) is kept,
  its planned tags removed (`TAGS_ONLY`), or left alone when it has none (`KEPT`);
- what a kept manifest waits for (the platform manifests of a kept index, the referrers of a
  kept subject) is kept too (`KEPT`), and a subject whose referrer is kept keeps its manifest
  (`TAGS_ONLY`); an index whose platform manifest is kept because another index uses it still
  goes.

A manifest the fresh listing no longer has is left to its step: deleting it again answers 404,
which counts as done. Tag deletions are not re-checked: a tag is deleted by name, and it is a
pull-request tag of a closed pull request whatever it points at now.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from cleanup.model import Manifest
from cleanup.policy import Step, StepKind


class Adjustment(enum.Enum):
    TAGS_ONLY = "tagsOnly"
    """Keep the manifest; delete only the step's pull-request tags from it."""
    KEPT = "kept"
    """Do not run the step: something came to need the manifest since the plan."""
    LOCKED = "locked"
    """Do not run the step: the manifest is locked now."""


class Change(NamedTuple):
    adjustment: Adjustment
    reason: str


def revalidate(steps: Sequence[Step], fresh: Iterable[Manifest]) -> dict[Step, Change]:
    """The changes a repository's steps need; empty: none.

    Steps are leaves first: a manifest step's `after` names its platform manifests and
    referrers that go too. A kept manifest keeps everything it waits for; a kept referrer
    keeps its subject; a kept platform manifest does not keep its index (it is used elsewhere).
    """
    current = {m.digest: m for m in fresh}
    by_digest = {s.digest: s for s in steps if s.kind is StepKind.DELETE_MANIFEST}
    users = _users(current, set(by_digest))
    changes: dict[Step, Change] = {}
    for step in by_digest.values():
        change = _check(step, current.get(step.digest), users)
        if change is not None:
            changes[step] = change
    waited_for_by: dict[str, list[Step]] = {}
    for step in by_digest.values():
        for digest in step.after:
            waited_for_by.setdefault(digest, []).append(step)
    todo = [s.digest for s in changes]
    while todo:
        digest = todo.pop()
        for change_step, change in _spread(by_digest[digest], current, waited_for_by, by_digest):
            if change_step not in changes:
                changes[change_step] = change
                todo.append(change_step.digest)
    return changes


def _spread(
    kept: Step,
    current: Mapping[str, Manifest],
    waited_for_by: Mapping[str, list[Step]],
    by_digest: Mapping[str, Step],
) -> Iterable[tuple[Step, Change]]:
    """What keeping `kept` keeps too: what it waits for, and a subject it is attached to."""
    for digest in kept.after:
        yield (
            by_digest[digest],
            Change(Adjustment.KEPT, f"{kept.digest} is kept, so this manifest stays with it"),
        )
    for parent in waited_for_by.get(kept.digest, ()):
        now = current.get(parent.digest)
        children = set(now.references) if now is not None else set()
        if kept.digest not in children:  # a referrer of `parent`, not a platform manifest
            yield parent, _tags_only(parent, f"{kept.digest}, attached to it, is kept")


def _users(current: Mapping[str, Manifest], deleting: set[str]) -> dict[str, str]:
    """digest -> a manifest outside the deletion set that uses it now: an index that lists it,
    or a signature or SBOM attached to it."""
    users: dict[str, str] = {}
    for manifest in current.values():
        if manifest.digest in deleting:
            continue
        for child in manifest.references:
            users.setdefault(child, manifest.digest)
        if manifest.subject is not None:
            users.setdefault(manifest.subject, manifest.digest)
    return users


def _check(step: Step, now: Manifest | None, users: Mapping[str, str]) -> Change | None:
    if now is None:
        return None
    if not now.delete_enabled:
        return Change(Adjustment.LOCKED, "the manifest was locked after the plan was made")
    planned = set(step.tags)
    extra = sorted(set(now.tags) - planned)
    if extra:
        return _tags_only(step, f"the manifest was tagged {extra[0]} after the plan was made")
    user = users.get(step.digest)
    if user is not None:
        return _tags_only(step, f"{user} uses the manifest since the plan was made")
    return None


def _tags_only(step: Step, reason: str) -> Change:
    if step.tags:
        return Change(Adjustment.TAGS_ONLY, reason)
    return Change(Adjustment.KEPT, reason)
