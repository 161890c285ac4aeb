#!/usr/bin/env bash
# The stream-deadline-gateway command, installed from its wheel with pip, against the real
# Python clients (openai, langchain-openai), directly and behind nginx.
#
# Creates tests/python/.venv if it is missing, installs the pinned requirements (again only
# when requirements.txt changes), builds the gateway's wheel with maturin (dev profile, into
# the workspace's target directory, so a gateway cargo has built already is not compiled
# again), checks its metadata with `twine check --strict` (what PyPI would show), installs
# that wheel into a fresh venv of its own without a package index, installs
# nginx with apt-get when it is missing, builds llama.cpp's llama-server and fetches a small
# model when they are not in their cache (llama_server.sh), and runs each checks*.py against
# the command found on that venv's PATH. The checks start their upstream (the FastAPI
# stand-in, or llama-server) and the gateway and print PASS/FAIL per check. Needs python3
# (3.11+) with venv and pip, cargo, a C++ compiler, and PyPI.
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

work="$(mktemp -d "${TMPDIR:-/tmp}/stream-deadline-gateway-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "tests/python: building the gateway's wheel"
"$venv/bin/maturin" build --profile dev --manifest-path "$root/gateway/Cargo.toml" \
  --out "$work/dist"
wheels=("$work"/dist/stream_deadline_gateway-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
  echo "tests/python: maturin did not leave exactly one stream_deadline_gateway wheel" >&2
  exit 1
fi
# What PyPI would show: the README renders, the licences, URLs and classifiers are valid.
echo "tests/python: twine check --strict $(basename "${wheels[0]}")"
"$venv/bin/twine" check --strict "${wheels[0]}"

echo "tests/python: installing $(basename "${wheels[0]}") into a fresh venv"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --no-index --no-deps "${wheels[0]}"
gateway="$(PATH="$work/venv/bin" command -v stream-deadline-gateway || true)"
if [ "$gateway" != "$work/venv/bin/stream-deadline-gateway" ]; then
  echo "tests/python: the wheel did not put stream-deadline-gateway on its venv's PATH" >&2
  exit 1
fi
# The wheel's version is the one in gateway/Cargo.toml, which the binary reports.
installed="$("$work/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("stream-deadline-gateway"))')"
reported="$("$gateway" --version)"
if [ "$reported" != "stream-deadline-gateway $installed" ]; then
  echo "tests/python: the wheel is version $installed but the command says: $reported" >&2
  exit 1
fi
echo "tests/python: using $gateway ($reported)"

if ! PATH="$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null; then
  echo "tests/python: installing nginx"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q nginx-light >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y -q nginx-light >/dev/null; }
fi

# A real model server for checks_llama_server.py: built once per machine (about 4 minutes),
# then taken from its cache.
paths="$("$here/llama_server.sh")"
export STREAM_DEADLINE_LLAMA_SERVER="$(sed -n 1p <<<"$paths")"
export STREAM_DEADLINE_LLAMA_MODEL="$(sed -n 2p <<<"$paths")"
echo "tests/python: using $STREAM_DEADLINE_LLAMA_SERVER with $(basename "$STREAM_DEADLINE_LLAMA_MODEL")"

status=0
for checks in "$here"/checks*.py; do
  echo "tests/python: $(basename "$checks")"
  "$venv/bin/python" "$checks" --gateway "$gateway" || status=1
done
exit "$status"
