"""The same RPC checks as test_rpc_compat_checks.py, against a real ``bitcoind -regtest`` when one is
on PATH: proof that the checks (and so the embedded node) match bitcoind's behaviour."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import rpc_checks
from node_helpers import Rpc

from bridge.testing import wait_until
from devnets.process import free_port

pytestmark = pytest.mark.bitcoind

BITCOIND = shutil.which("bitcoind")


@pytest.fixture(scope="module")
def bitcoind(tmp_path_factory):
    if BITCOIND is None:
        pytest.skip("bitcoind is not on PATH: the bitcoind compatibility checks need a real bitcoind -regtest")
    datadir = tmp_path_factory.mktemp("bitcoind")
    rpcport, port = free_port(), free_port()
    proc = subprocess.Popen(
        [BITCOIND, "-regtest", f"-datadir={datadir}", f"-rpcport={rpcport}", f"-port={port}", "-rpcuser=bridge",
         "-rpcpassword=bridge", "-txindex=1", "-listen=0", "-fallbackfee=0.0002", "-printtoconsole=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    yield Rpc(f"http://127.0.0.1:{rpcport}", ("bridge", "bridge")), proc
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture
async def rpc(bitcoind) -> Rpc:
    client, proc = bitcoind

    async def ready() -> bool:
        assert proc.poll() is None, "bitcoind exited during start-up"
        try:
            await client("getblockcount")
            return True
        except Exception:
            return False

    await wait_until(ready, timeout=60, what="bitcoind -regtest to answer RPC")
    return client


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
