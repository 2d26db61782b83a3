"""The Bitcoin adapter and the wallet-less signing tools against the real embedded regtest node.

The node is shared by the whole session (other tests mine and send too), so every
test uses fresh keys and asserts only on its own coins and transactions.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.core.errors import ChainUnavailable, InsufficientFunds, MissingInputs, NotFound, TransactionRejected
from bridge.core.testing import wait_until
from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter, BitcoinTxFilter
from chains.bitcoin_rpc import BitcoinRpc
from chains.bitcoin_tx import btc_to_sats
from chains.bitcoin_wallet import BtcKey, Utxo, build_payment
from chains.btc.primitives import Tx
from devnets.bitcoin_node import BitcoinNode
from devnets.controls import BitcoinDevnet


FUND_SATS = 2_000_000


async def test_head_and_blocks_link_by_parent_hash(btc):
    await BitcoinDevnet(btc).mine(2)
    head = await btc.head()
    parent = await btc.block_by_height(head.height - 1)
    assert head.parent_hash == parent.hash
    assert await btc.block_by_hash(head.hash) == head
    assert btc.chain_id == "bitcoin:regtest"
    with pytest.raises(NotFound):
        await btc.block_by_height(head.height + 1000)


async def test_fresh_regtest_has_no_fee_estimate_so_the_fallback_is_used(btc):
    assert await btc.estimate_feerate(2) == 2


async def test_mine_to_a_key_and_spend_the_coinbase_once_mature(btc):
    key, dest = BtcKey.generate(), BtcKey.generate()
    [block_hash] = await BitcoinDevnet(btc).mine(1, key.p2wpkh_address())
    block = await btc.rpc.call("getblock", block_hash, 2)
    reward = sum(btc_to_sats(o["value"]) for o in block["tx"][0]["vout"] if o["scriptPubKey"]["hex"] == key.p2wpkh_script.hex())
    coins = await btc.utxos([key.p2wpkh_address()])
    assert [(c.value_sats, c.coinbase) for c in coins] == [(reward, True)]

    await BitcoinDevnet(btc).mine(COINBASE_MATURITY - 2)  # one block short of spendable in the next block
    with pytest.raises(InsufficientFunds):
        await btc.send_to([key], [(dest.p2wpkh_address(), reward // 2)], feerate=3)
    await BitcoinDevnet(btc).mine(1)
    signed = await btc.send_to([key], [(dest.p2wpkh_address(), reward // 2)], feerate=3)
    assert (await btc.tx_status(signed.txid)).confirmations == 0
    # Spent in the mempool: scantxoutset still lists the coin, the adapter must not.
    assert await btc.balance([key.p2wpkh_address()]) == 0
    await BitcoinDevnet(btc).mine(1)
    status = await btc.wait_for_confirmations(signed.txid, 1, timeout=30)
    assert status.block is not None and status.block.height == (await btc.head()).height

    assert await btc.balance([dest.p2wpkh_address()]) == reward // 2
    assert await btc.balance([key.p2wpkh_script]) == reward - reward // 2 - signed.fee_sats
    entry = await btc.rpc.call("getrawtransaction", signed.txid, True, status.block.hash)
    assert signed.fee_sats >= 3 * entry["vsize"]


async def test_unconfirmed_change_can_be_spent_again(btc, faucet):
    key, dest = BtcKey.generate(), BtcKey.generate()
    await faucet.pay(btc, key, FUND_SATS)
    first = await btc.send_to([key], [(dest.p2wpkh_address(), 50_000)], feerate=2)
    second = await btc.send_to([key], [(dest.p2wpkh_address(), 60_000)], feerate=2)
    assert second.inputs[0].outpoint == (first.txid, first.change_vout)
    await BitcoinDevnet(btc).mine(1)
    await btc.wait_for_confirmations(second.txid, 1, timeout=30)
    assert await btc.balance([dest.p2wpkh_address()]) == 110_000


async def test_broadcasting_twice_returns_the_same_txid(btc, faucet):
    key = BtcKey.generate()
    await faucet.pay(btc, key, FUND_SATS)
    signed = await btc.send_to([key], [(BtcKey.generate().p2wpkh_address(), 70_000)], feerate=2, broadcast=False)
    assert (await btc.tx_status(signed.txid)).confirmations == -1
    assert await btc.send(signed.raw_hex) == signed.txid
    assert await btc.send(signed.raw_hex) == signed.txid  # in the mempool already
    await BitcoinDevnet(btc).mine(1)
    assert await btc.send(signed.raw_hex) == signed.txid  # confirmed already (-27 or known outputs)
    mempool = await btc.rpc.call("getrawmempool")
    assert signed.txid not in mempool
    assert (await btc.tx_status(signed.txid)).confirmations >= 1


async def test_rejected_transaction_carries_the_nodes_reason(btc, faucet):
    key, thief = BtcKey.generate(), BtcKey.generate()
    await faucet.pay(btc, key, FUND_SATS)
    [coin] = await btc.utxos([key.p2wpkh_script])
    # The thief claims the coin is his: the witness key does not match the output's program.
    forged = build_payment(
        [thief], [Utxo(coin.txid, coin.vout, coin.value_sats, thief.p2wpkh_script, coin.height)], [(thief.p2wpkh_address(), 100_000)], feerate=2
    )
    with pytest.raises(TransactionRejected) as info:
        await btc.send(forged.raw_hex)
    assert "mandatory-script-verify-flag-failed" in info.value.reason
    assert info.value.details["code"] == -26
    assert await btc.balance([key.p2wpkh_script]) == coin.value_sats


async def test_spending_a_coin_that_does_not_exist_is_missing_inputs(btc):
    key = BtcKey.generate()
    ghost = Utxo("ab" * 32, 0, 100_000, key.p2wpkh_script, 1)
    signed = build_payment([key], [ghost], [(key.p2wpkh_address(), 50_000)], feerate=2)
    with pytest.raises(MissingInputs):
        await btc.send(signed.raw_hex)


async def test_events_filter_finds_exactly_the_watched_transactions(btc, faucet):
    key, watched, other = BtcKey.generate(), BtcKey.generate(), BtcKey.generate()
    await faucet.pay(btc, key, FUND_SATS)
    start = (await btc.head()).height + 1
    pay_watched = await btc.send_to([key], [(watched.p2wpkh_address(), 200_000)], feerate=2)
    pay_other = await btc.send_to([key], [(other.p2wpkh_address(), 300_000)], feerate=2)
    await BitcoinDevnet(btc).mine(1)
    # The watched coin is spent in the next block: found through the outpoint seen in the scan.
    spend_watched = await btc.send_to([watched], [(other.p2wpkh_address(), 150_000)], feerate=2)
    await BitcoinDevnet(btc).mine(1)
    await btc.wait_for_confirmations(spend_watched.txid, 1, timeout=30)
    end = (await btc.head()).height

    by_script = await btc.events(start, end, BitcoinTxFilter(scripts={watched.p2wpkh_script}))
    assert [e.key for e in by_script] == [pay_watched.txid, spend_watched.txid]
    assert by_script[0].block.height == start and by_script[1].block.height == end

    vout = next(i for i, (_, s) in enumerate(Tx.parse(bytes.fromhex(pay_other.raw_hex)).vout) if s == other.p2wpkh_script)
    by_outpoint = await btc.events(start, end, BitcoinTxFilter(outpoints={(pay_other.txid, vout)}))
    assert by_outpoint == []  # that coin is unspent
    by_outpoint = await btc.events(start, end, BitcoinTxFilter(outpoints={(pay_watched.txid, 0)}))
    assert [e.key for e in by_outpoint] == [spend_watched.txid]

    everything = await btc.events(start, end)
    n_tx = [len((await btc.rpc.call("getblock", (await btc.block_by_height(h)).hash, 1))["tx"]) for h in (start, end)]
    assert len(everything) == sum(n_tx)
    assert {pay_watched.txid, pay_other.txid, spend_watched.txid} <= {e.key for e in everything}
    assert everything[0].data["index"] == 0  # the coinbase comes first


async def test_tx_status_follows_a_transaction_into_a_block(btc, faucet):
    key = BtcKey.generate()
    await faucet.pay(btc, key, FUND_SATS)
    signed = await btc.send_to([key], [(BtcKey.generate().p2wpkh_address(), 10_000)], feerate=2)
    assert (await btc.tx_status(signed.txid)).confirmations == 0
    [block_hash] = await BitcoinDevnet(btc).mine(1)
    status = await wait_until(lambda: _confirmed(btc, signed.txid), timeout=30, what="tx confirmed")
    assert status.block.hash == block_hash
    await BitcoinDevnet(btc).mine(2)
    assert (await btc.tx_status(signed.txid)).confirmations == 3


async def _confirmed(btc: BitcoinAdapter, txid: str):
    status = await btc.tx_status(txid)
    return status if status.confirmations >= 1 else None


async def test_cookie_auth_survives_a_node_restart(tmp_path):
    # A node of its own: restarting the shared one would disturb other tests.
    node = BitcoinNode(tmp_path / "node")
    await asyncio.to_thread(node.start)
    cookie = tmp_path / "node" / "regtest" / ".cookie"
    try:
        async with BitcoinAdapter(BitcoinRpc(node.rpc_url, cookie_file=cookie)) as btc:
            await BitcoinDevnet(btc).mine(3)
            first_cookie = cookie.read_text()
            await asyncio.to_thread(node.stop)
            with pytest.raises(ChainUnavailable):
                await btc.height()
            await asyncio.to_thread(node.start)
            assert cookie.read_text() != first_cookie  # a new secret: the client must re-read it
            assert await btc.height() == 3
    finally:
        await asyncio.to_thread(node.stop)


async def test_event_transactions_read_like_the_nodes_verbose_blocks(btc, faucet):
    key = BtcKey.generate()
    await faucet.pay(btc, key, FUND_SATS)
    signed = await btc.send_to([key], [(BtcKey.generate().p2wpkh_address(), 40_000)], feerate=2)
    [block_hash] = await BitcoinDevnet(btc).mine(1)
    ref = await btc.block_by_hash(block_hash)
    verbose = await btc.rpc.call("getblock", block_hash, 2)
    events = await btc.events(ref.height, ref.height)
    assert [e.key for e in events] == [tx["txid"] for tx in verbose["tx"]]
    assert signed.txid in {e.key for e in events}
    for event, node_tx in zip(events, verbose["tx"]):
        assert event.block == ref
        ours = event.data["tx"]
        for field in ("txid", "hash", "version", "locktime", "hex"):
            assert ours[field] == node_tx[field]
        assert [(o["value"], o["n"], o["scriptPubKey"]["hex"]) for o in ours["vout"]] == [
            (o["value"], o["n"], o["scriptPubKey"]["hex"]) for o in node_tx["vout"]
        ]
        fields = ("txid", "vout", "coinbase", "sequence", "txinwitness")
        assert [{k: v[k] for k in fields if k in v} for v in ours["vin"]] == [{k: v[k] for k in fields if k in v} for v in node_tx["vin"]]


async def test_utxos_trust_one_mempool_look_only_at_the_scanned_tip():
    """Coins a mempool transaction spends are dropped with one ``gettxspendingprevout``, but only
    when no block came after the scan (a block may have spent a coin the mempool no longer
    shows); otherwise, and on nodes without that call or scantxoutset's coinbase flag (before
    Core 24/25), each coin is asked with ``gettxout``.  A fake node at the RPC edge plays each case."""
    from chains.bitcoin_rpc import RpcError
    from chains.btc.rpc_errors import RPC_METHOD_NOT_FOUND

    key = BtcKey.generate()
    spk = key.p2wpkh_script.hex()
    coin_a = {"txid": "aa" * 32, "vout": 0, "amount": "0.5", "scriptPubKey": spk, "height": 5}
    coin_b = {"txid": "bb" * 32, "vout": 1, "amount": "0.25", "scriptPubKey": spk, "height": 6}

    class Node:
        def __init__(self, flag: bool, spending: bool, tip: str) -> None:
            self.flag, self.spending, self.tip, self.asked = flag, spending, tip, []

        async def call(self, method, *params):
            self.asked.append(method)
            assert method == "scantxoutset"
            extra = {"coinbase": False} if self.flag else {}
            return {"bestblock": "0a" * 32, "unspents": [{**coin_a, **extra}, {**coin_b, **extra}]}

        async def batch(self, calls, return_exceptions=False):
            self.asked.append("+".join(method for method, _ in calls))
            if calls[0][0] == "gettxspendingprevout":
                if not self.spending:
                    return [RpcError("Method not found", code=RPC_METHOD_NOT_FOUND), self.tip]
                # A mempool tx spends coin a (b is spent too, in a block the scan did not see).
                return [[{"txid": "aa" * 32, "vout": 0, "spendingtxid": "cc" * 32}, {"txid": "bb" * 32, "vout": 1}], self.tip]
            # gettxout per coin: coin a spent in the mempool, coin b gone with the new block... or
            # (same tip) b a live coinbase.
            return [None if params[0] == "aa" * 32 or self.tip != "0a" * 32 else {"coinbase": True} for _, params in calls]

    async def spendable(node):
        return [(c.txid, c.value_sats, c.coinbase) for c in await BitcoinAdapter(node, push_blocks=False).utxos([key.p2wpkh_script])]

    current = Node(flag=True, spending=True, tip="0a" * 32)
    assert await spendable(current) == [("bb" * 32, 25_000_000, False)]
    assert current.asked == ["scantxoutset", "gettxspendingprevout+getbestblockhash"]
    moved = Node(flag=True, spending=True, tip="0b" * 32)  # a block came after the scan
    assert await spendable(moved) == []
    assert moved.asked == ["scantxoutset", "gettxspendingprevout+getbestblockhash", "gettxout+gettxout"]
    older = Node(flag=True, spending=False, tip="0a" * 32)  # bitcoind 23: no gettxspendingprevout
    assert await spendable(older) == [("bb" * 32, 25_000_000, True)]
    oldest = Node(flag=False, spending=False, tip="0a" * 32)  # no coinbase flag: straight to gettxout
    assert await spendable(oldest) == [("bb" * 32, 25_000_000, True)]
    assert oldest.asked == ["scantxoutset", "gettxout+gettxout"]
