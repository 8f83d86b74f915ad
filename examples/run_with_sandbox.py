"""Serve the signup service against the embedded NDAX sandbox, on 127.0.0.1.

``python -m examples.run_with_sandbox [--port 8000] [--faults drop_after=0.05,err503=0.05]``
starts the sandbox on a free loopback port, points the service's client at it
(through the same ``NDAX_*`` variables you would set for NDAX) and serves the
app with uvicorn until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

from ndax_async.cli import parse_faults
from ndax_async.testing import Sandbox, SandboxServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--faults", default="", help="sandbox faults, e.g. drop_after=0.05,err503=0.05")
    args = parser.parse_args()
    sandbox = Sandbox(faults=parse_faults(args.faults))
    with SandboxServer(sandbox) as server:
        os.environ.update(
            NDAX_API_KEY=sandbox.api_key,
            NDAX_API_SECRET=sandbox.api_secret,
            NDAX_PASSPHRASE=sandbox.passphrase,
            NDAX_BASE_URL=server.base_url,
        )
        print(
            f"sandbox at {server.base_url}; signup service at http://127.0.0.1:{args.port}/docs", flush=True
        )
        uvicorn.run("examples.signup_service:app", host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
