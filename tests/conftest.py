"""Shared fixtures.  Devnet fixtures start real nodes on free ports in pytest's
temp dirs; pytest keeps the last runs' temp dirs, so a failed run's node data
and logs can be inspected afterwards (path printed in the failure)."""

from __future__ import annotations

import logging

import pytest


log = logging.getLogger("tests")


@pytest.fixture(scope="session")
def anvil(bridge_session_devnet):
    """The session's Anvil (chain id 31337, prague), from the package's pytest plugin
    (``devnets/pytest_plugin.py``): the HTLC and TUSD are deployed there, test accounts funded."""
    node = bridge_session_devnet.nodes.anvil
    log.info("anvil up at %s (data %s)", node.url, node.data_dir)
    return node


@pytest.fixture(scope="session")
def regtest(bridge_session_devnet):
    """The session's embedded Bitcoin regtest node (``devnets.bitcoin_node.BitcoinNode``), from the
    plugin's devnet: ``.rpc_url``, ``.rpc_auth`` (user, password), sync ``.rpc(method, *params)``.
    Shared by many tests: mine to your own addresses and never assume an exact height."""
    node = bridge_session_devnet.nodes.bitcoin
    log.info("regtest node up at %s (data %s)", node.rpc_url, node.data_dir)
    return node


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
    from devnets.controls import BitcoinDevnet

    async with BitcoinDevnet(btc).mining_mempool():
        yield


@pytest.fixture(scope="module")
def contracts(anvil) -> dict[str, str]:
    """The swap contracts, deployed once per module on the session's Anvil: ``htlc``, ``tusd`` (6 decimals)
    and ``deployer`` (the hex key that deployed them and may mint TUSD)."""
    import asyncio

    from eth_account import Account

    from chains.evm import EvmAdapter
    from devnets.controls import AnvilControls
    from devnets.presets import ONE_ETH
    from htlc.evm import Erc20, EvmHtlc

    async def deploy() -> dict[str, str]:
        chain = await EvmAdapter.connect(anvil.url)
        deployer = Account.create()
        await AnvilControls(chain).set_balance(deployer.address, 10 * ONE_ETH)
        key = deployer.key.to_0x_hex()
        try:
            htlc = await EvmHtlc.deploy(chain, key)
            token = await Erc20.deploy(chain, key, "TestToken", "Test USD", "TUSD", 6)
            return {"htlc": htlc.address, "tusd": token.address, "deployer": key}
        finally:
            await chain.close()

    return asyncio.run(deploy())


# The declared scenario of the devnet tests (``tests/support/scenario.py``): its fixtures, for every module.
from support.scenario import htlc  # noqa: E402, F401
