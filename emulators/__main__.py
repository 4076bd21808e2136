"""`python -m emulators`: start the three emulators, print the environment, serve until stopped.

    eval "$(python -m emulators --seed demo)" &   # or read the export lines it prints
    python -m emulators --seed demo --latency-ms 20 --acr-mode abac --write-budget 500/60

The `export` lines go to stdout (and nothing else does); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from emulators import Emulators
from emulators.acr import SKU_BUDGETS, AcrKnobs, Budget, bulk_seed, iter_bulk_images
from emulators.harness import Knobs
from emulators.scenario import Scenario, demo_scenario, load_scenario


def _say(message: str) -> None:
    sys.stderr.write(f"emulators: {message}\n")


def _budget(text: str) -> Budget:
    try:
        return Budget.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or N/SECONDS ({exc})") from exc


def _bulk(text: str) -> tuple[int, int]:
    repos, sep, tags = text.lower().partition("x")
    if not sep or not repos.isdigit() or not tags.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected REPOSITORIESxTAGS, e.g. 1000x100")
    return int(repos), int(tags)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emulators", description=__doc__.split("\n")[0])
    p.add_argument("--seed", default=None, help="`demo` or a JSON scenario file")
    p.add_argument(
        "--bulk",
        type=_bulk,
        default=None,
        metavar="RxT",
        help="add R repositories of T tags each (half of them PR tags)",
    )
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    p.add_argument("--acr-mode", choices=("normal", "abac"), default="normal")
    p.add_argument(
        "--token-lifetime",
        type=float,
        default=None,
        metavar="S",
        help="lifetime of Entra and registry access tokens, seconds",
    )
    p.add_argument("--refresh-token-lifetime", type=float, default=None, metavar="S")
    p.add_argument(
        "--read-budget",
        type=_budget,
        default=None,
        metavar="N/S",
        help="registry reads per window (default window 60 s)",
    )
    p.add_argument(
        "--write-budget",
        type=_budget,
        default=None,
        metavar="N/S",
        help="registry writes per window (default window 60 s)",
    )
    p.add_argument(
        "--sku",
        choices=sorted(SKU_BUDGETS),
        default=None,
        help="read and write budgets of the SKU's per-minute estimates",
    )
    p.add_argument(
        "--sku-window",
        type=float,
        default=60.0,
        metavar="S",
        help="squeeze the SKU's minute into S seconds",
    )
    p.add_argument("--pat", default=None, help="the PAT Azure DevOps accepts (default: random)")
    p.add_argument("--organization", default="contoso")
    for name in ("acr", "devops", "identity"):
        p.add_argument(f"--{name}-port", type=int, default=0)
    return p


def scenario_of(seed: str | None) -> Scenario:
    if seed is None:
        return Scenario()
    if seed == "demo":
        return demo_scenario()
    return load_scenario(Path(seed))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        scenario = scenario_of(args.seed)
    except (OSError, ValueError, KeyError) as exc:
        _say(f"cannot read the scenario {args.seed!r}: {exc}")
        return 2
    acr_knobs = AcrKnobs(latency_ms=args.latency_ms, mode=args.acr_mode)
    if args.sku:
        acr_knobs.set_sku(args.sku, args.sku_window)
    acr_knobs.read_budget = args.read_budget or acr_knobs.read_budget
    acr_knobs.write_budget = args.write_budget or acr_knobs.write_budget
    if args.token_lifetime is not None:
        acr_knobs.access_token_lifetime_s = args.token_lifetime
    if args.refresh_token_lifetime is not None:
        acr_knobs.refresh_token_lifetime_s = args.refresh_token_lifetime
    emu = Emulators(
        scenario,
        acr_knobs=acr_knobs,
        devops_knobs=Knobs(latency_ms=args.latency_ms),
        identity_knobs=Knobs(latency_ms=args.latency_ms),
        token_lifetime_s=args.token_lifetime or 3600.0,
        organization=args.organization,
        pat=args.pat,
        ports={"acr": args.acr_port, "devops": args.devops_port, "identity": args.identity_port},
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with emu:
        if args.bulk:
            repos, tags = args.bulk
            count = bulk_seed(emu.acr.state, iter_bulk_images(repos, tags))
            _say(f"seeded {count} images in {repos} repositories")
        for key, value in emu.env.items():
            sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
        sys.stdout.flush()
        _say(f"registry {emu.acr.url} ({args.acr_mode}), serving until interrupted")
        while not stop.wait(0.5):
            pass
    _say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
