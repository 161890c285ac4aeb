"""The gateway in front of an HTTPS upstream, with the real `openai` SDK.

    python checks_tls.py --gateway PATH/TO/stream-deadline-gateway

`upstream.py` serves https://localhost with a certificate from a CA made here (`trustme`);
the gateway trusts that CA through `SSL_CERT_FILE`, as curl and Python do.

1. The `openai` SDK streams through the gateway to the HTTPS upstream and is cut at the
   budget with the gateway's deadline error, the upstream generator cancelled (check 1 of
   checks.py, over TLS).
2. A gateway that trusts another CA answers `502` with an OpenAI-shaped error naming the
   failed verification, which the SDK raises as `InternalServerError`; nothing reaches the
   upstream.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

import openai
import trustme

from checks import (
    GATEWAY_FLAGS,
    STALL_GUARD,
    Servers,
    check_openai_sdk_stream,
    expect,
    gateway_argument,
    poll_stats,
    run_checks,
    tagged,
)


def make_pki(directory: Path) -> tuple:
    """(certfile, keyfile, ca_file) for https://localhost, and a second, unrelated CA file."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = directory / "upstream.pem", directory / "upstream.key"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    ca_file, other_ca_file = directory / "ca.pem", directory / "other-ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    trustme.CA().cert_pem.write_to_path(other_ca_file)
    return (str(certfile), str(keyfile), str(ca_file)), str(other_ca_file)


def check_wrong_ca(servers: Servers, other_ca_file: str) -> str:
    _, url, _ = servers.start_gateway(GATEWAY_FLAGS, ca_file=other_ca_file,
                                      log_name="gateway-wrong-ca.log")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-local", max_retries=0,
                           timeout=STALL_GUARD)
    tag = "wrong-ca"
    try:
        client.chat.completions.create(
            model="babbler",
            messages=[{"role": "user", "content": "Hello?"}],
            stream=True,
            extra_headers={"x-check": tag},
        )
    except openai.InternalServerError as err:
        expect(err.status_code == 502, f"status {err.status_code}, not 502")
        expect(err.code == "upstream_tls_error", f"code {err.code!r}")
        expect("invalid peer certificate" in err.message, f"message {err.message!r}")
        requests, _ = poll_stats(servers, lambda s: tagged(s, "requests", tag), within=0)
        expect(not requests, "a request reached the upstream")
        return f"{type(err).__name__} {err.status_code}: {err.message!r}"
    raise AssertionError("the gateway streamed from an upstream it must not trust")


def main() -> int:
    gateway = gateway_argument(__doc__.splitlines()[0])
    directory = Path(tempfile.mkdtemp(prefix="stream-deadline-gateway-tls-"))
    try:
        pki, other_ca_file = make_pki(directory)
        servers = Servers(gateway, tls=pki)
        checks = [
            ("1 openai SDK stream=True over HTTPS, cut at the budget", check_openai_sdk_stream),
            ("2 a certificate from another CA: 502 naming the reason",
             lambda servers: check_wrong_ca(servers, other_ca_file)),
        ]
        return run_checks(servers, checks, "https upstream, " + " ".join(GATEWAY_FLAGS))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
