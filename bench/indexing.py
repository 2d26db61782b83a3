"""Indexing throughput on the real devnets (prints figures; asserts nothing).

EVM: a fresh Anvil, a hand-assembled contract that emits N ``LOG1``s per call,
>= 100,000 logs generated, then the indexer runs from the contract's block to the
head with a consumer that stores every event key in the indexer's transaction.
Goal: >= 20,000 logs/s.

Bitcoin: a fresh embedded regtest node, >= 100,000 transactions in blocks, then
the indexer scans every transaction (``selector=None``) with the same consumer.
Goal: >= 10,000 tx/s.  The chain is built once and cached under /tmp.

Setup time is printed apart from the indexing time.  Usage::

    python bench/indexing.py [--only evm|bitcoin] [--evm-logs N] [--btc-txs N] [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import BigInteger, Column, MetaData, String, Table, func, insert, select
from sqlmodel import Session

from bridge.core.db import make_engine
from chains.base import BlockRef, ChainAdapter, ChainEvent
from chains.indexer import Indexer, OrphanedBlock

#: ``for i in range(calldata[0:32]): LOG1(topic=i)``: 27 bytes of runtime behind an 11-byte loader.
EMITTER_INIT = bytes.fromhex("601b80600b6000396000f360003560005b818110156019578060006000a16001016005565b00")

_meta = MetaData()
bench_keys = Table(
    "bench_indexed_keys",
    _meta,
    Column("indexer", String, primary_key=True),
    Column("event_key", String, primary_key=True),
    Column("height", BigInteger, nullable=False),
)


class KeyStore:
    """Stores each delivered event key in the indexer's transaction (the exactly-once way)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def on_events(self, events: list[ChainEvent], block: BlockRef, *, session: Session) -> None:
        session.execute(insert(bench_keys), [{"indexer": self.name, "event_key": e.key, "height": block.height} for e in events])

    async def on_revert(self, orphaned: list[OrphanedBlock], *, session: Session) -> None:
        keys = [k for b in orphaned for k in b.event_keys]
        session.execute(bench_keys.delete().where((bench_keys.c.indexer == self.name) & bench_keys.c.event_key.in_(keys)))


async def time_indexer(name: str, adapter: ChainAdapter, db_url: str, start: int, selector=None) -> tuple[float, Indexer, int]:
    engine = make_engine(db_url)
    _meta.create_all(engine)
    indexer = Indexer(name, adapter, engine, KeyStore(name), selector=selector, start_height=start, batch_blocks=500)
    began = time.perf_counter()
    while not (await indexer.step()).caught_up:
        pass
    seconds = time.perf_counter() - began
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(bench_keys).where(bench_keys.c.indexer == name)).scalar_one()
    engine.dispose()
    return seconds, indexer, stored


def report(label: str, unit: str, count: int, stored: int, blocks: int, setup: float, seconds: float, goal: int, fetch: float) -> None:
    rate = count / seconds if seconds else float("inf")
    print(f"{label}: setup {setup:.1f}s ({count:,} {unit} in {blocks:,} blocks)")
    print(
        f"{label}: indexed {count:,} {unit} ({stored:,} keys stored) in {seconds:.2f}s = {rate:,.0f} {unit}/s "
        f"(goal {goal:,} {unit}/s: {'met' if rate >= goal else 'NOT met'})"
    )
    print(f"{label}: for reference, the adapter's events() alone over the same range: {fetch:.2f}s = {count / fetch:,.0f} {unit}/s")


# --- EVM ------------------------------------------------------------------------------------------


async def bench_evm(total_logs: int, logs_per_tx: int, db_url: str, workdir: Path) -> None:
    from chains.evm import EvmAdapter, EvmLogFilter
    from devnets.anvil import Anvil
    from devnets.keys import evm_test_keys

    key = evm_test_keys()[0].private_key
    node = Anvil(workdir / "anvil")
    began = time.perf_counter()
    node.start()
    try:
        async with await EvmAdapter.connect(node.url) as adapter:
            receipt = await adapter.wait_for_receipt(await adapter.transact(key, None, data=EMITTER_INIT))
            address, start = receipt.contract_address, receipt.block_number
            sent = 0
            while sent < total_logs:
                n = min(logs_per_tx, total_logs - sent)
                await adapter.wait_for_receipt(await adapter.transact(key, address, data=n.to_bytes(32, "big")))
                sent += n
            head = (await adapter.head()).height
            setup = time.perf_counter() - began

            selector = EvmLogFilter(address=address)
            seconds, indexer, stored = await time_indexer(f"bench-evm-{int(time.time())}", adapter, db_url, start, selector)
            t = time.perf_counter()
            fetched = len(await adapter.events(start, head, selector))
            fetch = time.perf_counter() - t
            report("evm", "logs", indexer.stats["events"], stored, head - start + 1, setup, seconds, 20_000, fetch)
            if fetched != indexer.stats["events"]:
                print(f"evm: WARNING events() now returns {fetched:,}")
    finally:
        node.stop()


# --- Bitcoin --------------------------------------------------------------------------------------

#: Coins locked to P2WSH(OP_TRUE) are spent with the script alone: 100k transactions without signing.
OP_TRUE = b"\x51"
FANOUT = 2000  # outputs per fan-out transaction (about 86 kvB, under the 100 kvB standard limit)
SPEND_FEE = 200  # sats for a one-in one-out spend (~95 vB)
SEND_BATCH = 1000
MINE_EVERY = 5000


def _op_true_script() -> bytes:
    from chains.btc.primitives import sha256

    return b"\x00\x20" + sha256(OP_TRUE)


def _spend(prevouts: list[tuple[str, int, int]], outputs: int, fee: int):
    from chains.btc.primitives import OutPoint, Tx, TxIn, TxOut

    each = (sum(v for _, _, v in prevouts) - fee) // outputs
    vin = [TxIn(OutPoint.from_hex(txid, n), b"", 0xFFFFFFFD, (OP_TRUE,)) for txid, n, _ in prevouts]
    return Tx(2, vin, [TxOut(each, _op_true_script())] * outputs)


async def _send_and_mine(adapter, txs: list, miner_address: str) -> None:
    from devnets.controls import BitcoinDevnet

    for i in range(0, len(txs), SEND_BATCH):
        await adapter.rpc.batch([("sendrawtransaction", [tx.hex()]) for tx in txs[i : i + SEND_BATCH]])
        if (i + SEND_BATCH) % MINE_EVERY == 0:
            await BitcoinDevnet(adapter).mine(1, miner_address)
    while (await adapter.rpc.call("getmempoolinfo"))["size"]:
        await BitcoinDevnet(adapter).mine(1, miner_address)


async def _build_regtest_chain(adapter, total_txs: int) -> None:
    from chains.bitcoin_tx import btc_to_sats
    from chains.btc.address import encode_segwit_address
    from chains.btc.primitives import sha256
    from devnets.controls import BitcoinDevnet

    op_true_address = encode_segwit_address("bcrt", 0, sha256(OP_TRUE))
    fanouts = -(-total_txs // FANOUT)
    hashes = await BitcoinDevnet(adapter).mine(fanouts, op_true_address)
    await BitcoinDevnet(adapter).mine(100, op_true_address)  # coinbase maturity
    coinbases = []
    for block in await adapter.rpc.batch([("getblock", [h, 2]) for h in hashes]):
        cb = block["tx"][0]
        coinbases.append((cb["txid"], 0, btc_to_sats(cb["vout"][0]["value"])))
    fan_txs = [_spend([cb], FANOUT, 100_000) for cb in coinbases]
    await _send_and_mine(adapter, fan_txs, op_true_address)
    spends = [_spend([(fan.txid, n, out.value)], 1, SPEND_FEE) for fan in fan_txs for n, out in enumerate(fan.vout)][:total_txs]
    await _send_and_mine(adapter, spends, op_true_address)


async def bench_bitcoin(total_txs: int, db_url: str, cache: Path) -> None:
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc
    from devnets.bitcoin_node import BitcoinNode

    ready = cache / "chain.ready"
    if cache.exists() and not ready.exists():
        shutil.rmtree(cache)  # a build that was cut off: start over
    node = BitcoinNode(cache)
    began = time.perf_counter()
    node.start()
    try:
        async with BitcoinAdapter(BitcoinRpc(node.rpc_url, cookie_file=node.cookie_file, timeout=300)) as adapter:
            cached = ready.exists()
            if not cached:
                await _build_regtest_chain(adapter, total_txs)
                ready.touch()
            head = (await adapter.head()).height
            setup = time.perf_counter() - began
            note = f"chain cached in {cache}" if cached else f"built and cached in {cache}"
            print(f"bitcoin: {note}; delete it to rebuild")

            seconds, indexer, stored = await time_indexer(f"bench-btc-{int(time.time())}", adapter, db_url, 0)
            t = time.perf_counter()
            fetched = len(await adapter.events(0, head))
            fetch = time.perf_counter() - t
            report("bitcoin", "tx", indexer.stats["events"], stored, head + 1, setup, seconds, 10_000, fetch)
            if fetched != indexer.stats["events"]:
                print(f"bitcoin: WARNING events() now returns {fetched:,}")
    finally:
        node.stop()


# --- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["evm", "bitcoin"])
    parser.add_argument("--evm-logs", type=int, default=100_000)
    parser.add_argument("--logs-per-tx", type=int, default=1000, help="logs per transaction (one transaction per block)")
    parser.add_argument("--btc-txs", type=int, default=100_000)
    parser.add_argument("--btc-cache", default="/tmp/bridge-bench-regtest", help="where the generated regtest chain is kept")
    parser.add_argument("--db", help="SQLAlchemy URL for the indexer's database (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-indexing-") as tmp:
        workdir = Path(tmp)
        db_url = args.db or f"sqlite:///{workdir / 'indexer.sqlite'}"
        if args.only in (None, "evm"):
            asyncio.run(bench_evm(args.evm_logs, args.logs_per_tx, db_url, workdir))
        if args.only in (None, "bitcoin"):
            asyncio.run(bench_bitcoin(args.btc_txs, db_url, Path(args.btc_cache) / str(args.btc_txs)))


if __name__ == "__main__":
    main()
