#!/usr/bin/env bash
# The llm_gateway example against the real Python clients (openai, anthropic, langchain).
#
# Creates tests/python/.venv if it is missing, installs the pinned requirements (again only
# when requirements.txt changes), builds the gateway once, and runs checks.py and then
# endings.py, each of which starts the FastAPI upstream and the gateway and prints PASS/FAIL
# per check. Needs python3 (3.11+) with venv and pip, cargo, and PyPI.
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
  cargo build --example llm_gateway --message-format=json-render-diagnostics |
    "$venv/bin/python" -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "llm_gateway" and msg.get("executable"):
        print(msg["executable"])
'
)"
if [ -z "$gateway" ]; then
  echo "tests/python: cargo did not report the llm_gateway executable" >&2
  exit 1
fi

status=0
"$venv/bin/python" "$here/checks.py" --gateway "$gateway" || status=$?
# How streams end (deadlines, a failing upstream) for the OpenAI and Anthropic clients.
"$venv/bin/python" "$here/endings.py" --gateway "$gateway" || status=$?
exit "$status"
