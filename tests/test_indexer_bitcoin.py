"""The indexer on the real regtest node: a reorg, and kill -9 then restart.

A reorg rewrites the chain, so this module runs its own embedded node rather
than the session one.  The reorg is the node's ``devnetreorg`` (libbitcoinkernel
cannot ``invalidateblock``): a longer branch of empty blocks replaces the tip, and
the replaced blocks' transactions go back to the mempool as in Bitcoin Core.
Coins are locked to P2WSH(OP_TRUE) so the test spends them without keys.

Run as a script, this file is the worker the kill test starts and SIGKILLs:
``python tests/test_indexer_bitcoin.py URL COOKIE DB_URL NAME START_HEIGHT``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bridge.core.db import make_engine
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_rpc import BitcoinRpc
from chains.bitcoin_tx import btc_to_sats
from chains.btc.address import encode_segwit_address
from chains.btc.primitives import OutPoint, Tx, TxIn, TxOut, sha256
from chains.indexer import Indexer
from devnets.bitcoin_node import BitcoinNode

sys.path.insert(0, str(Path(__file__).parent))
from test_indexer import Recorder, SlowRecorder, db, drain, kill_mid_run_and_resume, net_view, recorded  # noqa: E402,F401 (db: fixture)
from devnets.controls import BitcoinDevnet  # noqa: E402

OP_TRUE = b"\x51"
OP_TRUE_SCRIPT = b"\x00\x20" + sha256(OP_TRUE)
OP_TRUE_ADDRESS = encode_segwit_address("bcrt", 0, sha256(OP_TRUE))


def spend(txid: str, n: int, value: int, fee: int = 1_000) -> Tx:
    return Tx(2, [TxIn(OutPoint.from_hex(txid, n), b"", 0xFFFFFFFD, (OP_TRUE,))], [TxOut(value - fee, OP_TRUE_SCRIPT)])


@pytest.fixture(scope="module")
def own_node(tmp_path_factory):
    node = BitcoinNode(tmp_path_factory.mktemp("regtest-indexer"))
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def btc(own_node):
    adapter = BitcoinAdapter(BitcoinRpc(own_node.rpc_url, cookie_file=own_node.cookie_file))
    yield adapter
    await adapter.close()


async def matured_op_true_coin(btc: BitcoinAdapter) -> tuple[str, int, int]:
    [block_hash] = await BitcoinDevnet(btc).mine(1, OP_TRUE_ADDRESS)
    coinbase = (await btc.rpc.call("getblock", block_hash, 2))["tx"][0]
    await BitcoinDevnet(btc).mine(100)
    return coinbase["txid"], 0, btc_to_sats(coinbase["vout"][0]["value"])


async def canonical_txids(btc: BitcoinAdapter, start: int) -> list[str]:
    return [e.key for e in await btc.events(start, (await btc.head()).height)]


async def test_regtest_reorg_consumer_sees_each_canonical_tx_exactly_once(btc, db):
    _, engine = db
    name = f"btc-{uuid.uuid4().hex[:8]}"
    coin = await matured_op_true_coin(btc)
    start = (await btc.head()).height - 5
    moved = spend(*coin)
    assert await btc.send(moved.hex()) == moved.txid
    await BitcoinDevnet(btc).mine(3)  # `moved` confirms at fork + 1
    fork = (await btc.head()).height - 3
    indexer = Indexer(name, btc, engine, Recorder(name), start_height=start, batch_blocks=4)
    await drain(indexer, max_steps=200)
    assert recorded(engine, name) == await canonical_txids(btc, start)
    orphaned = [e.key for e in await btc.events(fork + 1, fork + 3)]
    assert moved.txid in orphaned

    # A 4-block branch replaces the top 3 blocks; `moved` goes back to the mempool and is
    # re-mined one block later next to a spend of it, so the new branch has other events.
    reorg = await BitcoinDevnet(btc).reorg(3)
    assert reorg["disconnected"] == 3 and (await btc.head()).height == fork + 4
    second = spend(moved.txid, 0, moved.vout[0].value)
    await btc.send(second.hex())
    await BitcoinDevnet(btc).mine(1)

    await drain(indexer, max_steps=200)

    after = await canonical_txids(btc, start)
    assert moved.txid in after and second.txid in after
    assert sorted(recorded(engine, name, "revert")) == sorted(orphaned)
    assert net_view(engine, name) == sorted(after)
    assert indexer.stats["reorgs"] == 1 and indexer.stats["deepest_reorg"] == 3
    assert indexer.cursor().hash == (await btc.head()).hash


async def test_indexer_killed_and_restarted_resumes_without_gaps_or_duplicates(btc, db, tmp_path, own_node):
    url, engine = db
    name = f"btc-kill-{uuid.uuid4().hex[:8]}"
    start = (await btc.head()).height + 1
    await BitcoinDevnet(btc).mine(40)
    expected = await canonical_txids(btc, start)

    def worker(log_name: str) -> subprocess.Popen:
        argv = [sys.executable, __file__, own_node.rpc_url, str(own_node.cookie_file), url, name, str(start)]
        return subprocess.Popen(argv, stdout=open(tmp_path / log_name, "wb"), stderr=subprocess.STDOUT)

    await kill_mid_run_and_resume(engine, name, expected, 10, worker)


async def _worker(url: str, cookie: str, db_url: str, name: str, start: int) -> None:
    engine = make_engine(db_url)
    async with BitcoinAdapter(BitcoinRpc(url, cookie_file=cookie)) as adapter:
        indexer = Indexer(name, adapter, engine, SlowRecorder(name), start_height=start, batch_blocks=1, poll_interval=0.05)
        print(f"worker {os.getpid()} resuming after {indexer.cursor()}", flush=True)
        await indexer.run()


if __name__ == "__main__":
    u, c, d, n, s = sys.argv[1:6]
    asyncio.run(_worker(u, c, d, n, int(s)))
