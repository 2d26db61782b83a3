"""The backend-agnostic RPC checks (rpc_checks.py) against the embedded node and, when one is on
PATH, a real ``bitcoind -regtest``: proof that the checks (and so the embedded node) match bitcoind."""

from __future__ import annotations

import shutil

import pytest
import rpc_checks
from node_helpers import Rpc

from devnets.bitcoin_node import BitcoinNode


@pytest.fixture(scope="module", params=["embedded", pytest.param("bitcoind", marks=pytest.mark.bitcoind)])
def node(request, regtest, tmp_path_factory):
    if request.param == "embedded":
        yield regtest
        return
    if shutil.which("bitcoind") is None:
        pytest.skip("bitcoind is not on PATH: the bitcoind compatibility checks need a real bitcoind -regtest")
    bitcoind = BitcoinNode(tmp_path_factory.mktemp("bitcoind"), backend="bitcoind", rpc_user="bridge", rpc_password="bridge")
    bitcoind.start()
    yield bitcoind
    bitcoind.stop()


@pytest.fixture
def rpc(node) -> Rpc:
    return Rpc(node.rpc_url, node.rpc_auth)


async def test_blocks_and_headers(rpc: Rpc) -> None:
    await rpc_checks.check_blocks_and_headers(rpc)


async def test_spend_lookups_and_mempool(rpc: Rpc) -> None:
    await rpc_checks.check_spend_lookups_and_mempool(rpc)


async def test_policy_rejections(rpc: Rpc) -> None:
    await rpc_checks.check_policy_rejections(rpc)


async def test_errors_keep_the_node_serving(rpc: Rpc) -> None:
    await rpc_checks.check_errors_keep_the_node_serving(rpc)


async def test_mining_rpcs(rpc: Rpc) -> None:
    await rpc_checks.check_mining_rpcs(rpc)


async def test_block_waits(rpc: Rpc) -> None:
    await rpc_checks.check_block_waits(rpc)
