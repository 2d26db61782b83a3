"""Mempool behaviour over JSON-RPC: full-RBF replacement, unconfirmed chains mined by ancestor
feerate, a two-block reorg that puts the disconnected transactions back in the mempool."""

from __future__ import annotations

import pytest
from node_helpers import Coin, NodeError, Rpc, Wallet, coin_of, fund, spend_p2wpkh

from chains.btc import primitives as p

FEE = 1_000


@pytest.fixture
def rpc(regtest) -> Rpc:
    return Rpc(regtest.rpc_url, regtest.rpc_auth)


async def test_replacement_by_fee(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    first = spend_p2wpkh(alice, [coin], [(bob.script, coin.value - FEE)])
    await rpc("sendrawtransaction", first.serialize().hex())

    # Same fee, other output: refused with Core's RBF wording; the original stays.
    same_fee = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - FEE)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", same_fee.serialize().hex())
    assert err.value.code == -26
    assert err.value.message.startswith(f"insufficient fee, rejecting replacement {same_fee.txid}; new feerate")
    # Higher feerate but not enough extra to pay for its own relay (rule 4).
    tiny_bump = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - FEE - 10)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", tiny_bump.serialize().hex())
    assert err.value.message.startswith(f"insufficient fee, rejecting replacement {tiny_bump.txid}, not enough additional fees to relay; 0.0000001 < 0.00000")

    bumped = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - 5 * FEE)])
    assert await rpc("sendrawtransaction", bumped.serialize().hex()) == bumped.txid
    pool = await rpc("getrawmempool")
    assert bumped.txid in pool and first.txid not in pool
    entry = await rpc("getmempoolentry", bumped.txid)
    assert str(entry["fees"]["base"]) == "0.00005000"
    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    assert bumped.txid in {t.txid for t in block.txs}


async def test_chain_of_three_unconfirmed_is_mined_parents_first(rpc: Rpc) -> None:
    alice, burn = Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    chain = []
    current = coin
    for _ in range(3):
        tx = spend_p2wpkh(alice, [current], [(alice.script, current.value - FEE)])
        assert await rpc("sendrawtransaction", tx.serialize().hex()) == tx.txid
        chain.append(tx)
        current = Coin(tx.txid, 0, current.value - FEE)
    verbose = await rpc("getrawmempool", True)
    assert verbose[chain[2].txid]["ancestorcount"] == 3
    assert verbose[chain[2].txid]["depends"] == [chain[1].txid]
    assert verbose[chain[0].txid]["descendantcount"] == 3
    out = await rpc("gettxout", chain[2].txid, 0)
    assert out["confirmations"] == 0 and out["scriptPubKey"]["address"] == alice.address
    assert await rpc("gettxout", chain[1].txid, 0) is None  # spent in the mempool

    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    block = await rpc("getblock", block_hash, 1)
    assert block["tx"][1:] == [t.txid for t in chain]
    assert (await rpc("gettxout", chain[2].txid, 0))["confirmations"] == 1


async def test_reorg_of_two_blocks_returns_transactions_to_the_mempool(own_regtest) -> None:
    rpc = Rpc(own_regtest.rpc_url, own_regtest.rpc_auth)
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    pay = spend_p2wpkh(alice, [coin], [(bob.script, coin.value - FEE)])
    await rpc("sendrawtransaction", pay.serialize().hex())
    [first] = await rpc("generatetoaddress", 1, burn.address)
    pay2 = spend_p2wpkh(bob, [await coin_of(rpc, pay.txid, 0)], [(bob.script, coin.value - 2 * FEE)])
    await rpc("sendrawtransaction", pay2.serialize().hex())
    [second] = await rpc("generatetoaddress", 1, burn.address)
    height = await rpc("getblockcount")
    assert await rpc("getrawmempool") == []

    result = await rpc("devnetreorg", 2)
    assert result["old_tip"] == second and result["disconnected"] == 2
    assert await rpc("getblockcount") == height + 1
    assert (await rpc("getblockheader", first))["confirmations"] == -1
    assert sorted(await rpc("getrawmempool")) == sorted([pay.txid, pay2.txid])
    assert (await rpc("getmempoolentry", pay2.txid))["depends"] == [pay.txid]
    stale = await rpc("getrawtransaction", pay.txid, True, first)
    assert stale["in_active_chain"] is False
    # The kernel's new chain no longer holds the payment; mining puts it back in.
    [again] = await rpc("generatetoaddress", 1, burn.address)
    assert (await rpc("getblock", again, 1))["tx"][1:] == [pay.txid, pay2.txid]


async def test_unconfirmed_chain_limit(rpc: Rpc) -> None:
    alice, burn = Wallet.new(), Wallet.new()
    current = await fund(rpc, alice, burn.address)
    for _ in range(25):
        tx = spend_p2wpkh(alice, [current], [(alice.script, current.value - FEE)])
        await rpc("sendrawtransaction", tx.serialize().hex())
        current = Coin(tx.txid, 0, current.value - FEE)
    too_long = spend_p2wpkh(alice, [current], [(alice.script, current.value - FEE)])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", too_long.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "too-long-mempool-chain, too many unconfirmed ancestors [limit: 25]")
    await rpc("generatetoaddress", 1, burn.address)
    assert await rpc("sendrawtransaction", too_long.serialize().hex()) == too_long.txid


async def test_gettxspendingprevout_names_the_mempool_spender(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    other = await fund(rpc, alice, burn.address)
    spend = spend_p2wpkh(alice, [coin], [(bob.script, coin.value - FEE)])
    await rpc("sendrawtransaction", spend.serialize().hex())
    assert await rpc("gettxspendingprevout", [{"txid": coin.txid, "vout": coin.vout}, {"txid": other.txid, "vout": other.vout}]) == [
        {"txid": coin.txid, "vout": coin.vout, "spendingtxid": spend.txid},
        {"txid": other.txid, "vout": other.vout},
    ]
    # Mined: the mempool no longer holds the spend, as bitcoind answers without a spender index.
    await rpc("generatetoaddress", 1, burn.address)
    assert await rpc("gettxspendingprevout", [{"txid": coin.txid, "vout": coin.vout}]) == [{"txid": coin.txid, "vout": coin.vout}]
    for bad, message in [
        ([], "Invalid parameter, outputs are missing"),
        ([{"vout": 0}], "Invalid parameter, missing txid key"),
        ([{"txid": coin.txid}], "Invalid parameter, missing vout key"),
        ([{"txid": coin.txid, "vout": -1}], "Invalid parameter, vout cannot be negative"),
    ]:
        with pytest.raises(NodeError) as err:
            await rpc("gettxspendingprevout", bad)
        assert (err.value.code, err.value.message) == (-8, message)


async def test_automine_confirms_each_transaction_as_it_is_sent(own_regtest) -> None:
    """``devnetautomine``: the embedded node's counterpart of Anvil's automine."""
    rpc = Rpc(own_regtest.rpc_url, own_regtest.rpc_auth)
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    height = await rpc("getblockcount")
    assert await rpc("devnetautomine", True, burn.address) == {"automine": True}
    pay = spend_p2wpkh(alice, [coin], [(bob.script, coin.value - FEE)])
    assert await rpc("sendrawtransaction", pay.serialize().hex()) == pay.txid
    # Mined before the call returned: one block, paying its fee to the automine address.
    assert await rpc("getblockcount") == height + 1 and await rpc("getrawmempool") == []
    assert (await rpc("gettxout", pay.txid, 0))["confirmations"] == 1
    block = await rpc("getblock", await rpc("getbestblockhash"), 2)
    assert [t["txid"] for t in block["tx"][1:]] == [pay.txid]
    assert block["tx"][0]["vout"][0]["scriptPubKey"]["address"] == burn.address
    with pytest.raises(NodeError):  # a rejected transaction mines nothing
        await rpc("sendrawtransaction", pay.serialize().hex()[:-8] + "00000000")
    assert await rpc("getblockcount") == height + 1
    assert await rpc("devnetautomine", False) == {"automine": False}
    pay2 = spend_p2wpkh(bob, [await coin_of(rpc, pay.txid, 0)], [(bob.script, coin.value - 2 * FEE)])
    await rpc("sendrawtransaction", pay2.serialize().hex())
    assert await rpc("getrawmempool") == [pay2.txid] and await rpc("getblockcount") == height + 1
    with pytest.raises(NodeError, match="not of expected type bool"):
        await rpc("devnetautomine", "yes")
