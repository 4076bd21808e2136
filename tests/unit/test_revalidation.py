"""Manifest deletions re-checked against a listing read just before them."""

from __future__ import annotations

import pytest

from cleanup.policy import Step, StepKind
from cleanup.revalidation import Adjustment, revalidate
from tests.builders import d1, d2, d3, d4, index, manifest

REPO = "web/api"


def delete_manifest(digest: str, *tags: str, after: tuple[str, ...] = ()) -> Step:
    return Step(StepKind.DELETE_MANIFEST, REPO, digest, tags=tags, after=after)


def adjustments(steps, fresh):
    return {s.digest: c.adjustment for s, c in revalidate(steps, fresh).items()}


def test_unchanged_repository_changes_nothing():
    """When the registry still looks as planned, every step runs as planned."""
    steps = [delete_manifest(d1, "PR1")]
    assert revalidate(steps, [manifest(d1, "PR1")]) == {}


def test_manifest_already_gone_is_left_to_its_step():
    """A manifest deleted meanwhile needs no change: deleting it again counts as done."""
    assert revalidate([delete_manifest(d1, "PR1")], []) == {}


@pytest.mark.parametrize("extra", ["v1.2.3", "latest", "PR2"])
def test_a_new_tag_keeps_the_manifest(extra):
    """A tag the plan does not remove, put on the manifest since, keeps the manifest."""
    steps = [delete_manifest(d1, "PR1")]
    assert adjustments(steps, [manifest(d1, "PR1", extra)]) == {d1: Adjustment.TAGS_ONLY}


def test_a_manifest_locked_since_is_not_touched():
    """A manifest locked since the plan is kept with its tags."""
    steps = [delete_manifest(d1, "PR1")]
    assert adjustments(steps, [manifest(d1, "PR1", locked=True)]) == {d1: Adjustment.LOCKED}


def test_children_of_a_kept_index_stay():
    """When an index is kept, its platform manifests that waited for it are kept too."""
    steps = [
        delete_manifest(d2),
        delete_manifest(d3),
        delete_manifest(d1, "PR1", after=(d2, d3)),
    ]
    fresh = [index(d1, "PR1", "release", children=(d2, d3)), manifest(d2), manifest(d3)]
    assert adjustments(steps, fresh) == {
        d1: Adjustment.TAGS_ONLY,
        d2: Adjustment.KEPT,
        d3: Adjustment.KEPT,
    }


def test_a_child_used_by_a_new_index_stays():
    """A platform manifest that a newly pushed index uses is not deleted; its old index is."""
    steps = [delete_manifest(d2), delete_manifest(d1, "PR1", after=(d2,))]
    fresh = [index(d1, "PR1", children=(d2,)), manifest(d2), index(d4, "v2", children=(d2,))]
    assert adjustments(steps, fresh) == {d2: Adjustment.KEPT}


def test_a_reference_from_another_doomed_index_does_not_keep_a_child():
    """Indexes that are deleted too do not count as users of a child."""
    steps = [
        delete_manifest(d2),
        delete_manifest(d1, "PR1", after=(d2,)),
        delete_manifest(d3, "PR3", after=(d2,)),
    ]
    fresh = [index(d1, "PR1", children=(d2,)), index(d3, "PR3", children=(d2,)), manifest(d2)]
    assert revalidate(steps, fresh) == {}


def test_a_referrer_locked_since_keeps_its_subject():
    """A signature locked after the plan stays, and so does the image it is attached to."""
    steps = [delete_manifest(d2), delete_manifest(d1, "PR1", after=(d2,))]
    fresh = [manifest(d1, "PR1"), manifest(d2, subject=d1, locked=True)]
    assert adjustments(steps, fresh) == {d2: Adjustment.LOCKED, d1: Adjustment.TAGS_ONLY}


def test_a_kept_index_keeps_nested_dependants():
    """Keeping spreads down the whole chain of what waits: index, platform, signature."""
    steps = [
        delete_manifest(d3),
        delete_manifest(d2, after=(d3,)),
        delete_manifest(d1, "PR1", after=(d2,)),
    ]
    fresh = [index(d1, "PR1", "v1", children=(d2,)), manifest(d2), manifest(d3, subject=d2)]
    assert adjustments(steps, fresh) == {
        d1: Adjustment.TAGS_ONLY,
        d2: Adjustment.KEPT,
        d3: Adjustment.KEPT,
    }


def test_a_signature_pushed_since_keeps_its_image():
    """A signature attached after the plan to an image the plan deletes keeps that image."""
    steps = [delete_manifest(d1, "PR1")]
    fresh = [manifest(d1, "PR1"), manifest(d2, subject=d1)]
    assert adjustments(steps, fresh) == {d1: Adjustment.TAGS_ONLY}


def test_tag_steps_are_never_changed():
    """Tag deletions are not re-checked: the tag is a closed pull request's by name."""
    steps = [Step(StepKind.DELETE_TAG, REPO, d1, tag="PR1", tags=("PR1",))]
    assert revalidate(steps, [manifest(d1, "PR1", "latest")]) == {}
