"""The indexer on a real Anvil: a reorg through ``anvil_reorg``, and kill -9 then restart.

The reorg rewrites history, so this module runs its own Anvil instead of the
session one other tests share.  Run as a script, this file is the indexer worker
the kill test starts and SIGKILLs:
``python tests/test_indexer_evm.py URL DB_URL NAME ADDRESS START_HEIGHT``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from eth_account import Account
from sqlalchemy import select

from bridge.core.db import make_engine
from chains.evm import EvmAdapter, EvmLogFilter
from chains.indexer import Indexer
from devnets.anvil import Anvil
from devnets.keys import evm_test_keys

sys.path.insert(0, str(Path(__file__).parent))
from test_indexer import Recorder, SlowRecorder, db, drain, kill_mid_run_and_resume, net_view, recorded, seen  # noqa: E402,F401 (db: fixture)
from devnets.controls import AnvilControls  # noqa: E402

#: Runtime: ``for i in range(calldata[0:32]): LOG1(topic=i)``; hand assembled, 27 bytes.
EMITTER_RUNTIME = bytes.fromhex("60003560005b818110156019578060006000a16001016005565b00")
#: Init code: copy the runtime to memory and return it.
EMITTER_INIT = bytes.fromhex("601b80600b6000396000f3") + EMITTER_RUNTIME
KEY = evm_test_keys()[0].private_key


def emit_call(n: int) -> bytes:
    return n.to_bytes(32, "big")


async def deploy_emitter(adapter: EvmAdapter) -> tuple[str, int]:
    receipt = await adapter.wait_for_receipt(await adapter.transact(KEY, None, data=EMITTER_INIT))
    return receipt.contract_address, receipt.block_number


@pytest.fixture(scope="module")
def own_anvil(tmp_path_factory):
    node = Anvil(tmp_path_factory.mktemp("anvil-indexer"))
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def adapter(own_anvil):
    a = await EvmAdapter.connect(own_anvil.url)
    yield a
    await a.close()


async def canonical_keys(adapter: EvmAdapter, selector: EvmLogFilter, start: int) -> list[str]:
    return [e.key for e in await adapter.events(start, (await adapter.head()).height, selector)]


async def test_anvil_reorg_consumer_sees_each_canonical_log_exactly_once(adapter, db):
    _, engine = db
    name = f"evm-{uuid.uuid4().hex[:8]}"
    address, start = await deploy_emitter(adapter)
    selector = EvmLogFilter(address=address)
    for n in (3, 4, 5, 6, 7, 8):  # one transaction, one block each (automine)
        await adapter.wait_for_receipt(await adapter.transact(KEY, address, data=emit_call(n)))
    indexer = Indexer(name, adapter, engine, Recorder(name), selector=selector, start_height=start, batch_blocks=2)
    await drain(indexer, max_steps=200)
    before = await canonical_keys(adapter, selector, start)
    assert recorded(engine, name) == before and len(before) == 3 + 4 + 5 + 6 + 7 + 8

    # Replace the top 3 blocks by a branch carrying other emits (different tx hashes, other log counts).
    head = await adapter.head()
    orphaned = [e.key for e in await adapter.events(head.height - 2, head.height, selector)]
    sender = Account.from_key(KEY)
    nonce = int(await adapter.rpc.call("eth_getTransactionCount", [sender.address, hex(head.height - 3)]), 16)
    chain_id = await adapter.chain_id_int()
    branch = [
        sender.sign_transaction(
            {
                "type": 2,
                "chainId": chain_id,
                "nonce": nonce + i,
                "to": address,
                "value": 0,
                "data": emit_call(10 + i),
                "gas": 200_000,
                "maxFeePerGas": 100 * 10**9,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        for i in range(2)
    ]
    new_head = await AnvilControls(adapter).reorg(3, [(branch[0], 0), (branch[1], 2)])
    assert new_head.height == head.height and new_head.hash != head.hash

    await drain(indexer, max_steps=200)

    after = await canonical_keys(adapter, selector, start)
    assert sorted(recorded(engine, name, "revert")) == sorted(orphaned)
    assert net_view(engine, name) == sorted(after)
    assert len(after) == 3 + 4 + 5 + 10 + 11
    assert indexer.stats["reorgs"] == 1 and indexer.cursor().hash == new_head.hash


async def test_indexer_killed_and_restarted_resumes_without_gaps_or_duplicates(adapter, db, tmp_path, own_anvil):
    url, engine = db
    name = f"evm-kill-{uuid.uuid4().hex[:8]}"
    address, start = await deploy_emitter(adapter)
    for i in range(30):
        await adapter.wait_for_receipt(await adapter.transact(KEY, address, data=emit_call(1 + i % 4)))
    expected = await canonical_keys(adapter, EvmLogFilter(address=address), start)

    def worker(log_name: str) -> subprocess.Popen:
        argv = [sys.executable, __file__, own_anvil.url, url, name, address, str(start)]
        return subprocess.Popen(argv, stdout=open(tmp_path / log_name, "wb"), stderr=subprocess.STDOUT)

    at_kill = await kill_mid_run_and_resume(engine, name, expected, 15, worker)
    with engine.connect() as conn:
        first_after = conn.execute(select(seen.c.event_key).where(seen.c.indexer == name).order_by(seen.c.id).offset(len(at_kill))).first()
    assert first_after.event_key == expected[len(at_kill)]


async def _worker(url: str, db_url: str, name: str, address: str, start: int) -> None:
    engine = make_engine(db_url)
    async with await EvmAdapter.connect(url) as adapter:
        indexer = Indexer(
            name,
            adapter,
            engine,
            SlowRecorder(name),
            selector=EvmLogFilter(address=address),
            start_height=start,
            batch_blocks=1,
            poll_interval=0.05,
        )
        print(f"worker {os.getpid()} resuming after {indexer.cursor()}", flush=True)
        await indexer.run()


if __name__ == "__main__":
    u, d, n, a, s = sys.argv[1:6]
    asyncio.run(_worker(u, d, n, a, int(s)))
