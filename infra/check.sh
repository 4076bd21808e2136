#!/usr/bin/env bash
# Scans the Bicep templates with checkov, offline. checkov pins an older pycep-parser than the
# project's .venv, so it lives in its own environment, .venv-checkov, created here on first use
# from the pins in infra/checkov-constraints.txt.
#
# Fails when a check fails (every skip carries its reason beside it, as an inline
# `checkov:skip=` comment) or when checkov could not parse a file: checkov itself reports an
# unparsable file as a parsing error and still exits 0, which would hide its resources.
#
# Usage: infra/check.sh [extra checkov arguments]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${CHECKOV_VENV:-$root/.venv-checkov}"

if [ ! -x "$venv/bin/checkov" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -c "$root/infra/checkov-constraints.txt" checkov
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0
"$venv/bin/checkov" --framework bicep --skip-download -d "$root/infra" --compact --quiet \
  -o cli -o json --output-file-path "console,$out/results.json" "$@" || status=$?

"$venv/bin/python" - "$out/results.json" <<'PY' || status=1
import json, sys

summary = json.load(open(sys.argv[1]))["summary"]
print("checkov summary:", json.dumps(summary, sort_keys=True))
if summary["parsing_errors"] or not summary["resource_count"]:
    sys.exit("checkov could not parse every .bicep file under infra/")
PY

exit "$status"
