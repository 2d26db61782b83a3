"""Shared fixtures.  Devnet fixtures start real nodes on free ports in pytest's
temp dirs; pytest keeps the last runs' temp dirs, so a failed run's node data
and logs can be inspected afterwards (path printed in the failure)."""

from __future__ import annotations

import logging

import pytest

from devnets.anvil import Anvil

log = logging.getLogger("tests")


@pytest.fixture(scope="session")
def anvil(tmp_path_factory):
    """A real Anvil (chain id 31337, prague) for the whole session."""
    node = Anvil(tmp_path_factory.mktemp("anvil"))
    node.start()
    log.info("anvil up at %s (data %s)", node.url, node.data_dir)
    yield node
    node.stop()


@pytest.fixture(scope="session")
def regtest(tmp_path_factory):
    """The embedded Bitcoin regtest node (``devnets.bitcoin_node.BitcoinNode``) for the whole session,
    as its own process: ``.rpc_url``, ``.rpc_auth`` (user, password), sync ``.rpc(method, *params)``.
    Shared by many tests: mine to your own addresses and never assume an exact height."""
    from devnets.bitcoin_node import BitcoinNode

    node = BitcoinNode(tmp_path_factory.mktemp("regtest"))
    node.start()
    log.info("regtest node up at %s (data %s)", node.rpc_url, node.data_dir)
    yield node
    node.stop()


@pytest.fixture
def own_regtest(tmp_path):
    """A private regtest node for one test that rewrites the chain, restarts or kills the node; a fixed
    user/password (not the cookie) so an ``rpc_auth`` taken before a restart still works after it."""
    from devnets.bitcoin_node import BitcoinNode

    node = BitcoinNode(tmp_path / "own-regtest", rpc_user="bridge", rpc_password="bridge")
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def btc(regtest):
    """A ``BitcoinAdapter`` on the ``regtest`` node (a module's own ``regtest`` fixture wins)."""
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc

    user, password = regtest.rpc_auth
    adapter = BitcoinAdapter(BitcoinRpc(regtest.rpc_url, user=user, password=password))
    yield adapter
    await adapter.close()


@pytest.fixture(scope="session")
def faucet():
    """One key that mines on the shared node and pays tests' keys (``await faucet.pay(btc, key, sats)``)."""
    from support.faucet import Faucet

    return Faucet()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request, tmp_path):
    """``(url, engine)`` of an empty database, once on SQLite and once on PostgreSQL
    (a fresh schema, dropped afterwards; skipped with the reason when unreachable)."""
    from bridge.core.db import postgres_available
    from bridge.ledger.testdb import fresh_database

    if request.param == "postgresql" and (reason := postgres_available()):
        pytest.skip(reason)
    with fresh_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture
async def evm(anvil):
    """An EVM adapter on the session's Anvil (a module's own ``evm`` or ``anvil`` fixture wins)."""
    from chains.evm import EvmAdapter

    adapter = await EvmAdapter.connect(anvil.url)
    yield adapter
    await adapter.close()


@pytest.fixture
async def automine(btc):
    """Mine a Bitcoin block whenever a transaction waits in the mempool, as Anvil does by itself."""
    from swap_harness import automine as mining

    async with mining(btc):
        yield
