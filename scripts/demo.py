"""`make demo`: the whole job end to end on the local emulators, narrated for a newcomer.

Starts the registry, Azure DevOps and managed identity emulators with a registry that looks
like a real team's, shows what is in it, runs `python -m cleanup --dry-run`, then a real
`python -m cleanup`, and shows what is left. The cleanup runs as its own process with the
environment a user would set, exactly as in a pipeline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulators import Emulators  # noqa: E402 - after making the checkout importable
from emulators.scenario import demo_scenario  # noqa: E402

SECRET_SETTINGS = {"AZURE_DEVOPS_PAT"}


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def heading(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 90 - len(text)))


def show_registry(emulators: Emulators) -> None:
    state = emulators.acr.state
    for repository in state.repository_names():
        tags = state.tag_names(repository)
        tagged = {state.resolve(repository, t) for t in tags}
        untagged = len(state.digests(repository)) - len(tagged)
        extra = f"  (+{untagged} untagged manifests)" if untagged else ""
        say(f"  {repository:<16} {' '.join(sorted(tags))}{extra}")


def show_pull_requests(emulators: Emulators) -> None:
    for seed in emulators.scenario.pull_requests:
        draft = " (draft)" if seed.is_draft else ""
        closed = f", closed {seed.closed_at:%Y-%m-%d %H:%M}" if seed.closed_at else ""
        say(f"  PR {seed.id:<5} {seed.status}{draft}{closed}  [{seed.project}] {seed.title}")
    say("  PR 1299 does not exist in Azure DevOps")


def run_cleanup(environment: dict[str, str], *arguments: str) -> int:
    command = [sys.executable, "-m", "cleanup", *arguments]
    say(f"$ python -m cleanup {' '.join(arguments)}".rstrip())
    completed = subprocess.run(command, env=environment, cwd=ROOT, check=False)  # noqa: S603 - our own CLI
    say(f"(exit status {completed.returncode})")
    return completed.returncode


def main() -> int:
    with Emulators(demo_scenario()) as emulators:
        environment = {**os.environ, **emulators.env}
        heading("Local emulators are up; the job's settings")
        for name, value in sorted(emulators.env.items()):
            say(f"  {name}={'***' if name in SECRET_SETTINGS else value}")
        heading("The registry before the cleanup")
        show_registry(emulators)
        heading("The pull requests Azure DevOps knows (the job looks them up in project 'web')")
        show_pull_requests(emulators)
        heading("1. A dry run: what would be deleted, and why")
        run_cleanup(environment, "--dry-run")
        heading("2. The real run")
        status = run_cleanup(environment)
        heading("The registry after the cleanup")
        show_registry(emulators)
        requests = emulators.log.by_route()
        say()
        say(f"  HTTP requests the two runs made: {sum(requests.values())} in all")
    return 0 if status in (0, 1) else status


if __name__ == "__main__":
    sys.exit(main())
