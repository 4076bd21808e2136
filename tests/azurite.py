"""A real Azurite (the Azure Storage emulator) for the tests, on free loopback ports.

Azurite comes from npm (`node_modules/.bin/azurite`, pinned in package.json / package-lock.json);
the README's test command (`make test`) installs it with `npm ci`. The fixture `azurite` starts
one per test session and stops it at the end; tests keep apart by using their own container and
queue names.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite"

# Azurite's well-known development account; public, documented, not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Azurite:
    """Where a running Azurite listens, and the connection string that reaches it."""

    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.blob_port}/{ACCOUNT_NAME};"
            f"QueueEndpoint=http://127.0.0.1:{self.queue_port}/{ACCOUNT_NAME};"
            f"TableEndpoint=http://127.0.0.1:{self.table_port}/{ACCOUNT_NAME};"
        )


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_until_listening(process: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"Azurite exited with status {process.returncode} before listening:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        if all(_listening(p) for p in ports):
            return
        time.sleep(0.1)
    raise RuntimeError(f"Azurite did not listen on {ports} within {START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A real Azurite for the whole session, stopped at the end."""
    if not AZURITE_BIN.exists():
        pytest.fail(
            f"Azurite is not installed ({AZURITE_BIN} is missing): run `make test`, whose "
            "`npm ci` installs it from package-lock.json",
            pytrace=False,
        )
    workspace = Path(tempfile.mkdtemp(prefix="azurite-"))
    log = workspace / "azurite.log"
    try:
        blob, queue, table = _free_ports(3)
        with log.open("wb") as out:
            process = subprocess.Popen(  # noqa: S603 - a fixed local binary, no shell
                [
                    str(AZURITE_BIN),
                    "--blobPort",
                    str(blob),
                    "--queuePort",
                    str(queue),
                    "--tablePort",
                    str(table),
                    "--inMemoryPersistence",
                    "--silent",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                    # No --location: Azurite refuses it beside --inMemoryPersistence. Running in
                    # the temporary workspace keeps anything it writes out of the tree.
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workspace,
                # the well-known account only, whatever the developer's shell defines
                env={k: v for k, v in os.environ.items() if k != "AZURITE_ACCOUNTS"},
            )
        try:
            _wait_until_listening(process, [blob, queue, table], log)
            yield Azurite(blob_port=blob, queue_port=queue, table_port=table)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
