"""The embedded Bitcoin regtest node: Bitcoin Core's consensus engine (libbitcoinkernel) behind
bitcoind's JSON-RPC.  ``RegtestNode`` runs it in-process; ``devnets.bitcoin_node.BitcoinNode`` runs
``python -m devnets.regtest`` as a child process."""

from devnets.regtest.node import RegtestNode

__all__ = ["RegtestNode"]
