"""`python -m cleanup [--dry-run] [--json]`: one run from the command line.

The report goes to stdout; progress, log lines and errors go to stderr. Exit status: 0 all done,
1 some lookups or deletions failed, 2 a setting or argument is invalid (nothing contacted),
3 stopped before deleting anything, 4 the run ended unexpectedly (a bug: it may have deleted
some images before it ended).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from cleanup import __version__
from cleanup.errors import ConfigurationError
from cleanup.progress import TerminalProgress
from cleanup.settings import load_settings

if TYPE_CHECKING:
    from cleanup.report import Report

EXIT_CRASHED = 4
"""The run ended unexpectedly (not one of the contract's outcomes 0-3)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cleanup",
        description=(
            "Delete Azure Container Registry images whose Azure DevOps pull request is completed "
            "or abandoned. Settings come from environment variables (CLEANUP_REGISTRY, "
            "AZURE_DEVOPS_ORG_URL, ...); see the README."
        ),
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="plan and report, delete nothing (overrides CLEANUP_DRY_RUN)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every deletion and re-read to stderr"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def configure_logging(*, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("cleanup").setLevel(logging.DEBUG if verbose else logging.INFO)


def keep_start_up_out_of_the_collector() -> None:
    """Freeze what start-up allocated: the modules' hundreds of thousands of objects.

    They live until exit, yet every full collection during the run (and the ones at exit)
    would walk them again: about 0.07 s of CPU on a registry of a few thousand tags.
    """
    gc.freeze()


def exit_now(code: int) -> NoReturn:
    """Flush what was written and leave, without tearing the interpreter down.

    Everything the run opened is closed by then; the teardown would only free memory the
    operating system takes back anyway, about 0.1 s after azure-identity, aiohttp and the SDK.
    Under a profiler or coverage, exit normally so that they write what they measured.
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _reader_left()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def write_out(parts: Iterable[str]) -> None:
    """The report to stdout; a reader that leaves early (`| head`) ends it, without a traceback."""
    try:
        sys.stdout.writelines(parts)
    except BrokenPipeError:
        _reader_left()


def _reader_left() -> None:
    # What the reader did not read is gone either way; the rest goes nowhere, quietly.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


Engine = Callable[..., Coroutine[Any, Any, "Report"]]


def main(argv: Sequence[str] | None = None, *, engine: Engine | None = None) -> int:
    """The command line; `engine` (cleanup.engine.run by default) is for tests."""
    args = parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        settings = load_settings(os.environ, dry_run=True if args.dry_run else None)
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the command line's own error channel
        return exc.exit_code

    if engine is None:
        from cleanup.engine import run

        engine = run
        keep_start_up_out_of_the_collector()  # a real run, its imports done
    progress = TerminalProgress(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        report = asyncio.run(engine(settings, progress=progress))
    except Exception as exc:  # a bug or an answer nothing expected: say so, no traceback dump
        logging.getLogger("cleanup").debug("the run ended unexpectedly", exc_info=True)
        print(  # noqa: T201 - the command line's own error channel
            f"error: the run ended unexpectedly ({type(exc).__name__}); it may have deleted "
            "some images before it ended, and the next run carries on. Run with -v for details.",
            file=sys.stderr,
        )
        return EXIT_CRASHED
    finally:
        if progress is not None:
            progress.clear()
    if args.json:
        write_out([*report.json_parts(), "\n"])  # a large report is never one string
    else:
        output = report.render_text()
        write_out([output if output.endswith("\n") else output + "\n"])
    exit_code: int = report.exit_code
    return exit_code


if __name__ == "__main__":
    exit_now(main())
