"""Restarting the node process on the same datadir: clean stop (SIGTERM, ``stop`` RPC) keeps the
chain, indexes and mempool; kill -9 loses no block the node reported as accepted."""

from __future__ import annotations

import asyncio
import threading

from node_helpers import Coin, Rpc, Wallet, mature_coin, spend_p2wpkh

from bridge.core.testing import wait_until
from devnets.bitcoin_node import BitcoinNode
from devnets.process import pid_alive, read_pid

FEE = 1_000


async def test_restart_finds_chain_indexes_and_mempool(own_regtest: BitcoinNode) -> None:
    node = own_regtest
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await mature_coin(rpc, alice, burn.address)
    confirmed = spend_p2wpkh(alice, [coin], [(bob.script, coin.value - FEE)])
    await rpc("sendrawtransaction", confirmed.serialize().hex())
    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    pending = spend_p2wpkh(bob, [Coin(confirmed.txid, 0, coin.value - FEE)], [(bob.script, coin.value - 2 * FEE)])
    await rpc("sendrawtransaction", pending.serialize().hex())
    before = await rpc("getblockchaininfo")

    # Clean stop by the stop RPC, like bitcoin-cli stop.
    pid = read_pid(node.pid_file)
    assert await rpc("stop") == "Bitcoin Core stopping"
    await wait_until(lambda: not pid_alive(pid), timeout=30, what="node process to exit after stop")
    node.start()

    after = await rpc("getblockchaininfo")
    assert (after["blocks"], after["bestblockhash"]) == (before["blocks"], before["bestblockhash"])
    tx = await rpc("getrawtransaction", confirmed.txid, True)
    assert tx["blockhash"] == block_hash and tx["confirmations"] == 1
    assert await rpc("getrawmempool") == [pending.txid]
    assert await rpc("gettxout", confirmed.txid, 0) is None  # spent by the mempool tx
    assert (await rpc("gettxout", confirmed.txid, 0, False))["value"] is not None
    found = await rpc("scantxoutset", "start", [f"addr({bob.address})"])
    assert [(u["txid"], u["vout"]) for u in found["unspents"]] == [(confirmed.txid, 0)]

    # SIGTERM is a clean stop too.
    node.stop()
    node.start()
    assert await rpc("getrawmempool") == [pending.txid]
    [mined] = await rpc("generatetoaddress", 1, burn.address)
    assert (await rpc("getblock", mined))["tx"][1:] == [pending.txid]


async def test_kill_9_loses_no_accepted_block(own_regtest: BitcoinNode) -> None:
    node = own_regtest
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    burn = Wallet.new()
    accepted: list[str] = []
    accepted += await rpc("generatetoaddress", 30, burn.address)

    # Kill while the node is busy mining: every hash it answered with before dying must survive.
    stop = threading.Event()

    def miner() -> None:
        while not stop.is_set():
            try:
                accepted.extend(node.rpc("generatetoaddress", 1, burn.address, timeout=5))
            except Exception:
                return

    thread = threading.Thread(target=miner)
    thread.start()
    await wait_until(lambda: len(accepted) >= 60, timeout=60, what="blocks mined before the kill")
    node.kill()
    stop.set()
    await asyncio.to_thread(thread.join, 10)

    node.start()
    height = await rpc("getblockcount")
    assert height >= len(accepted)
    for h in accepted:
        assert (await rpc("getblockheader", h))["confirmations"] >= 1
    assert await rpc("getbestblockhash") == await rpc("getblockhash", height)
    # The index is whole again: mining continues on top.
    await rpc("generatetoaddress", 1, burn.address)
    assert await rpc("getblockcount") == height + 1
