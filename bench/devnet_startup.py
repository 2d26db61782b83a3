"""Start-up of the pytest plugin's session devnets: both nodes answering, the HTLC and the
token deployed, the Bitcoin test keys funded (``devnets.pytest_plugin.start_devnet``).

    python bench/devnet_startup.py [--runs 5]

Each run starts both chains in a fresh temp dir on free ports, checks the result as a test
would see it, and stops them.  The process has imported web3 first (a test session has), so
the figure is the devnets' own start-up.  Goal (issue 16): <= 3 s.  Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/devnet_startup.py`, this folder is first on sys.path and bench/htlc.py
# would shadow the `htlc` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import web3  # noqa: E402, F401 - imported by any test session before its first fixture

from devnets.pytest_plugin import start_devnet  # noqa: E402


def one_run() -> float:
    with tempfile.TemporaryDirectory(prefix="bench-devnet-") as tmp:
        t0 = time.perf_counter()
        devnet = start_devnet(Path(tmp))
        elapsed = time.perf_counter() - t0
        try:
            ready = (
                devnet.btc("getblockcount") >= 125,
                int(devnet.evm("eth_blockNumber"), 16) > 0,
                devnet.evm("eth_getCode", devnet.htlc, "latest") not in ("0x", None),
                devnet.btc("scantxoutset", "start", [f"addr({devnet.btc_keys[4]['address']})"])["total_amount"] > 0,
            )
        finally:
            devnet.stop()
        if not all(ready):
            raise SystemExit(f"devnet not ready after start-up: {ready}")
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    times = [one_run() for _ in range(args.runs)]
    print(
        f"plugin session devnets start-up over {args.runs} runs: median {statistics.median(times):.2f} s "
        f"(range {min(times):.2f}-{max(times):.2f} s)   [goal <= 3 s]"
    )


if __name__ == "__main__":
    main()
