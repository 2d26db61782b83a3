"""The backend-agnostic RPC checks (rpc_checks.py) against the embedded node."""

from __future__ import annotations

import pytest
import rpc_checks
from node_helpers import Rpc


@pytest.fixture
def rpc(regtest) -> Rpc:
    return Rpc(regtest.rpc_url, regtest.rpc_auth)


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
