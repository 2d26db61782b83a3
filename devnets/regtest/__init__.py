"""The embedded Bitcoin regtest node: Bitcoin Core's consensus engine (libbitcoinkernel) behind
bitcoind's JSON-RPC.  ``RegtestNode`` runs it in-process; ``RegtestProcess`` runs
``python -m devnets.regtest`` as a child process."""

from devnets.regtest.launcher import RegtestProcess
from devnets.regtest.node import RegtestNode

__all__ = ["RegtestNode", "RegtestProcess"]
