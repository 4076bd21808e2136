"""A small process that starts the measured children, so their peak RSS is their own.

A child's `ru_maxrss` counts the memory of the process it was forked from until it execs: a
child started straight from the harness, which holds the emulators' 100,000 seeded images,
would report the harness's few hundred megabytes. The harness therefore starts this spawner
first, while it is still small, and asks it to run each child:

    request (one JSON line on stdin):  {"argv": [...], "env": {...}, "cwd": "...", "timeout": s}
    answer (one JSON line on stdout):  {"returncode", "wall_s", "user_s", "sys_s",
                                        "max_rss_kb", "stdout", "stderr"}

Only the standard library is imported here, to keep the spawner itself small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any


def run(request: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            request["argv"], env=request["env"], cwd=request["cwd"], stdout=out, stderr=err
        )
        watchdog = threading.Timer(float(request["timeout"]), proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "returncode": proc.returncode,
            "wall_s": wall,
            "user_s": usage.ru_utime,
            "sys_s": usage.ru_stime,
            "max_rss_kb": usage.ru_maxrss,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def main() -> int:
    for line in sys.stdin:
        if line.strip():
            sys.stdout.write(json.dumps(run(json.loads(line))) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
