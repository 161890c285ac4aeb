#!/usr/bin/env bash
# The stream-deadline-gateway binary against the real Python clients (openai,
# langchain-openai).
#
# Creates tests/python/.venv if it is missing, installs the pinned requirements (again only
# when requirements.txt changes), builds the gateway once, and runs each checks*.py, which
# start the FastAPI upstream and the gateway and print PASS/FAIL per check. Needs python3 (3.11+)
# with venv and pip, cargo, and PyPI.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
# No __pycache__ next to the sources.
export PYTHONDONTWRITEBYTECODE=1

if [ ! -x "$venv/bin/python" ]; then
  echo "tests/python: creating $venv"
  "$python" -m venv "$venv"
fi

hash_of() {
  "$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}
stamp="$venv/.requirements.sha256"
wanted="$(hash_of "$here/requirements.txt")"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "tests/python: installing the pinned requirements"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    --requirement "$here/requirements.txt"
  echo "$wanted" >"$stamp"
fi

echo "tests/python: building the gateway"
cd "$root"
gateway="$(
  cargo build -p stream-deadline-gateway --message-format=json-render-diagnostics |
    "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "stream-deadline-gateway" and msg.get("executable"):
        print(msg["executable"])
'
)"
if [ -z "$gateway" ]; then
  echo "tests/python: cargo did not report the stream-deadline-gateway executable" >&2
  exit 1
fi

status=0
for checks in "$here"/checks*.py; do
  echo "tests/python: $(basename "$checks")"
  "$venv/bin/python" "$checks" --gateway "$gateway" || status=1
done
exit "$status"
