"""The Python examples of the gateway's README (gateway/README.md), run as they are written.

    python checks_readme.py --gateway PATH/TO/stream-deadline-gateway

Starts `upstream.py` and the gateway in front of it, as `checks.py` does (total budget 2 s),
then runs each ```python block of gateway/README.md in a Python process of its own, with two
changes only: the example address `http://127.0.0.1:8080` becomes this run's gateway, and
the example model `my-model` becomes the upstream's `babbler`, which never stops talking.

1., 2. Each example prints tokens, then `cut at the budget:` and the gateway's message naming
   the 2 s budget, and exits 0: the example's own `except openai.APIError` caught the
   deadline, without any timeout of its own.
"""

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ next to the sources
from checks import (  # noqa: E402
    BUDGET_NAMED,
    STALL_GUARD,
    CheckFailed,
    Servers,
    expect,
    gateway_argument,
    run_checks,
)

README = Path(__file__).resolve().parents[2] / "gateway" / "README.md"
EXAMPLE_URL, EXAMPLE_MODEL = "http://127.0.0.1:8080", "my-model"
CUT = "cut at the budget:"


def examples() -> list:
    blocks = re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.DOTALL | re.MULTILINE)
    if not blocks:
        raise RuntimeError("gateway/README.md has no ```python block")
    return blocks


def run_example(code: str, servers: Servers) -> str:
    expect(EXAMPLE_URL in code and EXAMPLE_MODEL in code,
           f"the example does not name {EXAMPLE_URL} and {EXAMPLE_MODEL}")
    code = code.replace(EXAMPLE_URL, servers.gateway_url).replace(EXAMPLE_MODEL, "babbler")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=STALL_GUARD, check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the example still ran after {STALL_GUARD:g} s") from None
    expect(done.returncode == 0, f"the example exited {done.returncode}: {done.stderr[-2000:]}")
    tokens, cut, message = done.stdout.partition(CUT)
    expect(cut, f"the example never printed {CUT!r}: {done.stdout[-500:]!r}")
    expect(tokens.strip(), "no tokens were printed before the cut")
    expect(BUDGET_NAMED in message, f"the message does not name the budget: {message!r}")
    return f"{len(tokens)} characters of tokens, then {CUT}{message.strip()[:80]!r}..."


def main() -> int:
    servers = Servers(gateway_argument(__doc__.splitlines()[0]))
    checks = [
        (f"{n} gateway/README.md python example {n} runs as written",
         lambda servers, code=code: run_example(code, servers))
        for n, code in enumerate(examples(), start=1)
    ]
    return run_checks(servers, checks, "the README's examples")


if __name__ == "__main__":
    sys.exit(main())
