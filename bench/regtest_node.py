"""Benchmark of the embedded regtest node.

Prints: mempool acceptance rate for 2,000 independent P2WPKH spends (signed beforehand, not timed),
sent as one JSON-RPC batch of sendrawtransaction calls and, separately, straight into the node
in-process; the time to mine the block holding them; start-up time on a 10,000-block datadir
(built once and cached under /tmp/bench-regtest-10k); peak RSS of the node.

Run: .venv/bin/python bench/regtest_node.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from bitcoinlib.keys import Key, sign

from chains.btc import primitives as p
from chains.btc.sighash import segwit_v0_sighash
from devnets.bitcoin_node import BitcoinNode
from devnets.regtest import RegtestNode

N_SPENDS = 2_000
CACHE_10K = Path("/tmp/bench-regtest-10k")
FEE = 200


class Signer:
    def __init__(self) -> None:
        self.key = Key()
        self.pubkey = self.key.public_byte
        self.script = b"\x00\x14" + p.hash160(self.pubkey)
        self.script_code = b"\x76\xa9\x14" + p.hash160(self.pubkey) + b"\x88\xac"

    def spend(self, txid: str, vout: int, value: int, to: bytes, out_value: int) -> p.Tx:
        txin = p.TxIn(p.OutPoint.from_hex(txid, vout), b"", 0xFFFFFFFD, ())
        tx = p.Tx(2, [txin], [p.TxOut(out_value, to)], 0)
        sig = sign(segwit_v0_sighash(tx, 0, self.script_code, value), self.key, hash_type=1).as_der_encoded(include_hash_type=True)
        return p.Tx(2, [txin._replace(witness=(sig, self.pubkey))], tx.vout, 0)


def prepare(node: RegtestNode, signer: Signer) -> list[p.Tx]:
    """Fan one matured coinbase out to N_SPENDS outputs, confirm it, sign one spend of each."""
    cb_block, _ = node.mine(signer.script)
    for _ in range(100):
        node.mine(b"\x51")
    coinbase = cb_block.txs[0]
    each = (coinbase.vout[0].value - 100_000) // N_SPENDS
    unsigned = p.Tx(2, [p.TxIn(p.OutPoint.from_hex(coinbase.txid, 0), b"", 0xFFFFFFFD, ())], [p.TxOut(each, signer.script)] * N_SPENDS, 0)
    fan = _sign_all_outputs(signer, unsigned, coinbase.vout[0].value)
    node.accept_tx(fan)
    node.mine(b"\x51")
    return [signer.spend(fan.txid, i, each, signer.script, each - FEE) for i in range(N_SPENDS)]


def _sign_all_outputs(signer: Signer, tx: p.Tx, value: int) -> p.Tx:
    txin = tx.vin[0]
    sig = sign(segwit_v0_sighash(tx, 0, signer.script_code, value), signer.key, hash_type=1).as_der_encoded(include_hash_type=True)
    return p.Tx(2, [txin._replace(witness=(sig, signer.pubkey))], tx.vout, 0)


def bench_in_process() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        node = RegtestNode(d)
        node.open()
        spends = prepare(node, Signer())
        t = time.perf_counter()
        for tx in spends:
            node.accept_tx(tx)
        accept = time.perf_counter() - t
        t = time.perf_counter()
        block, outcome = node.mine(b"\x51")
        mine = time.perf_counter() - t
        assert outcome.valid and len(block.txs) == N_SPENDS + 1, (outcome, len(block.txs))
        node.close()
    return N_SPENDS / accept, mine


async def bench_over_rpc() -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as d:
        # Build the coins in-process, then serve the same datadir from a node process.
        node = RegtestNode(d)
        node.open()
        spends = prepare(node, Signer())
        node.close()
        proc = BitcoinNode(Path(d))
        proc.start()
        try:
            token = base64.b64encode(("%s:%s" % proc.rpc_auth).encode()).decode()
            headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
            body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "sendrawtransaction", "params": [tx.serialize().hex()]} for i, tx in enumerate(spends)])
            async with aiohttp.ClientSession() as s:
                t = time.perf_counter()
                async with s.post(proc.rpc_url, data=body, headers=headers) as r:
                    replies = await r.json()
                accept = time.perf_counter() - t
                assert all("result" in x for x in replies), [x for x in replies if "error" in x][:1]
                t = time.perf_counter()
                async with s.post(
                    proc.rpc_url, headers=headers, data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "generatetodescriptor", "params": [1, "raw(51)"]})
                ) as r:
                    await r.json()
                mine = time.perf_counter() - t
                async with s.post(proc.rpc_url, headers=headers, data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "getmempoolinfo", "params": []})) as r:
                    assert (await r.json())["result"]["size"] == 0
        finally:
            proc.stop()
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return N_SPENDS / accept, mine, rss_kb


def build_10k() -> None:
    if (CACHE_10K / "complete").exists():
        return
    shutil.rmtree(CACHE_10K, ignore_errors=True)
    node = RegtestNode(CACHE_10K)
    node.open()
    while node.chain.height < 10_000:
        node.mine(b"\x51")
    node.close()
    (CACHE_10K / "complete").write_text("10000 blocks\n")


def bench_startup() -> tuple[float, float]:
    build_10k()
    t = time.perf_counter()
    node = RegtestNode(CACHE_10K)
    node.open()
    in_process = time.perf_counter() - t
    assert node.chain.height == 10_000
    node.close()
    proc = BitcoinNode(CACHE_10K)
    t = time.perf_counter()
    proc.start()
    as_process = time.perf_counter() - t
    assert proc.rpc("getblockcount") == 10_000
    proc.stop()
    return in_process, as_process


def main() -> int:
    rate_local, mine_local = bench_in_process()
    rate_rpc, mine_rpc, child_rss = asyncio.run(bench_over_rpc())
    start_local, start_proc = bench_startup()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"mempool acceptance, {N_SPENDS} P2WPKH spends, in-process:        {rate_local:8.0f} tx/s (goal >= 1000)")
    print(f"mempool acceptance, {N_SPENDS} P2WPKH spends, one JSON-RPC batch: {rate_rpc:8.0f} tx/s")
    print(f"mine the block holding them, in-process:                   {mine_local:8.3f} s (goal <= 2)")
    print(f"mine the block holding them, generatetodescriptor RPC:     {mine_rpc:8.3f} s")
    print(f"start-up on a 10,000-block datadir, in-process open():     {start_local:8.3f} s (goal <= 5)")
    print(f"start-up on a 10,000-block datadir, process until RPC up:  {start_proc:8.3f} s")
    print(f"peak RSS: bench process (in-process node) {peak / 1024:.0f} MiB, node processes {child_rss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
