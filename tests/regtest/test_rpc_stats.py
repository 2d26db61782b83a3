"""Mempool relations, fee deltas, packages and chain statistics on a private node, each against the
numbers a hand-built chain must give and bitcoind 28's error texts."""

from __future__ import annotations

from decimal import Decimal

import pytest
from node_helpers import Coin, NodeError, Rpc, Wallet, mature_coin, spend_p2wpkh

from chains.btc import primitives as p
from devnets.regtest import RegtestNode

BURN = "bcrt1qfdes8c308vmyhjgl9wl7nkdsflfc8fupv5e20k"


@pytest.fixture
async def node(tmp_path):
    n = RegtestNode(tmp_path / "node")
    await n.start()
    yield n
    await n.stop()


async def error_of(rpc: Rpc, method: str, *params) -> tuple[int, str]:
    with pytest.raises(NodeError) as err:
        await rpc(method, *params)
    return err.value.code, err.value.message


async def _chain(rpc: Rpc, alice: Wallet) -> tuple[p.Tx, p.Tx, p.Tx]:
    """parent -> child -> grandchild, all in the mempool (fees 1000, 2000, 3000)."""
    coin = await mature_coin(rpc, alice, BURN)
    parent = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - 1_000)])
    child = spend_p2wpkh(alice, [Coin(parent.txid, 0, coin.value - 1_000)], [(alice.script, coin.value - 3_000)])
    grandchild = spend_p2wpkh(alice, [Coin(child.txid, 0, coin.value - 3_000)], [(alice.script, coin.value - 6_000)])
    for tx in (parent, child, grandchild):
        await rpc("sendrawtransaction", tx.serialize().hex())
    return parent, child, grandchild


async def test_ancestors_descendants_and_fee_deltas(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice = Wallet.new()
    parent, child, grandchild = await _chain(rpc, alice)

    assert await rpc("getmempoolancestors", grandchild.txid) == [parent.txid, child.txid]
    assert await rpc("getmempoolancestors", parent.txid) == []
    assert await rpc("getmempooldescendants", parent.txid) == [child.txid, grandchild.txid]
    verbose = await rpc("getmempooldescendants", parent.txid, True)
    assert list(verbose) == [child.txid, grandchild.txid]
    assert verbose[grandchild.txid]["depends"] == [child.txid] and verbose[child.txid]["ancestorcount"] == 2
    assert await error_of(rpc, "getmempoolancestors", "00" * 32) == (-5, "Transaction not in mempool")
    assert await error_of(rpc, "getmempooldescendants", "abc") == (-8, "parameter 1 must be of length 64 (not 3, for 'abc')")

    # prioritisetransaction: deltas add up, show in getmempoolentry and getprioritisedtransactions.
    assert await rpc("prioritisetransaction", parent.txid, 0, 10_000) is True
    assert await rpc("prioritisetransaction", parent.txid, None, 5_000) is True
    unknown = "11" * 32
    await rpc("prioritisetransaction", unknown, 0, -7)
    deltas = await rpc("getprioritisedtransactions")
    assert deltas[parent.txid] == {"fee_delta": 15_000, "in_mempool": True, "modified_fee": 16_000}
    assert deltas[unknown] == {"fee_delta": -7, "in_mempool": False}
    entry = await rpc("getmempoolentry", parent.txid)
    assert entry["fees"]["base"] == Decimal("0.00001") and entry["fees"]["modified"] == Decimal("0.00016")
    assert (await rpc("getmempoolentry", child.txid))["fees"]["ancestor"] == Decimal("0.00018")
    # A delta that cancels out is forgotten, as in bitcoind.
    await rpc("prioritisetransaction", unknown, 0, 7)
    assert unknown not in await rpc("getprioritisedtransactions")
    assert await error_of(rpc, "prioritisetransaction", parent.txid, 1, 10) == (
        -8,
        "Priority is no longer supported, dummy argument to prioritisetransaction must be 0.",
    )
    code, message = await error_of(rpc, "prioritisetransaction", parent.txid, 10)  # fee_delta is the 3rd
    assert code == -1 and message.startswith("prioritisetransaction")


async def test_fee_delta_orders_and_excludes_in_block_template(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice = Wallet.new()
    coins = [await mature_coin(rpc, alice, BURN) for _ in range(2)]
    cheap = spend_p2wpkh(alice, [coins[0]], [(alice.script, coins[0].value - 200)])
    dear = spend_p2wpkh(alice, [coins[1]], [(alice.script, coins[1].value - 5_000)])
    for tx in (cheap, dear):
        await rpc("sendrawtransaction", tx.serialize().hex())
    order = [t["txid"] for t in (await rpc("getblocktemplate", {"rules": ["segwit"]}))["transactions"]]
    assert order == [dear.txid, cheap.txid]
    await rpc("prioritisetransaction", cheap.txid, 0, 100_000)
    template = await rpc("getblocktemplate", {"rules": ["segwit"]})
    assert [t["txid"] for t in template["transactions"]] == [cheap.txid, dear.txid]
    assert template["transactions"][0]["fee"] == 200  # the template reports the fee paid, not the delta
    # A negative delta below the block min feerate keeps it out of blocks, as bitcoind's miner does.
    await rpc("prioritisetransaction", cheap.txid, 0, -100_200)
    assert [t["txid"] for t in (await rpc("getblocktemplate", {"rules": ["segwit"]}))["transactions"]] == [dear.txid]
    await rpc("generatetoaddress", 1, BURN)
    assert await rpc("getrawmempool") == [cheap.txid]


async def test_submitpackage_child_pays_for_parent(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice = Wallet.new()
    coin = await mature_coin(rpc, alice, BURN)
    parent = spend_p2wpkh(alice, [coin], [(alice.script, coin.value)])  # no fee: refused alone
    child = spend_p2wpkh(alice, [Coin(parent.txid, 0, coin.value)], [(alice.script, coin.value - 10_000)])
    assert await error_of(rpc, "sendrawtransaction", parent.serialize().hex()) == (-26, "min relay fee not met, 0 < 110")
    assert await error_of(rpc, "submitpackage", [parent.serialize().hex()]) == (-8, "Array must contain between 2 and 25 transactions.")
    assert await error_of(rpc, "submitpackage", [child.serialize().hex(), parent.serialize().hex()]) == (
        -25,
        "package topology disallowed. not child-with-parents or parents depend on each other.",
    )
    result = await rpc("submitpackage", [parent.serialize().hex(), child.serialize().hex()])
    vsizes = parent.vsize + child.vsize
    rate = Decimal(10_000 * 1000 // vsizes) / 100_000_000
    assert result == {
        "package_msg": "success",
        "tx-results": {
            parent.wtxid: {
                "txid": parent.txid,
                "vsize": parent.vsize,
                "fees": {"base": Decimal(0), "effective-feerate": rate, "effective-includes": [parent.wtxid, child.wtxid]},
            },
            child.wtxid: {
                "txid": child.txid,
                "vsize": child.vsize,
                "fees": {"base": Decimal("0.0001"), "effective-feerate": rate, "effective-includes": [parent.wtxid, child.wtxid]},
            },
        },
        "replaced-transactions": [],
    }
    assert sorted(await rpc("getrawmempool")) == sorted([parent.txid, child.txid])
    # Submitted again: both are known, reported with their base fees only.
    again = await rpc("submitpackage", [parent.serialize().hex(), child.serialize().hex()])
    assert again["package_msg"] == "success" and again["tx-results"][parent.wtxid] == {"txid": parent.txid, "vsize": parent.vsize, "fees": {"base": Decimal(0)}}
    # Mined together: the template ties the child to its parent.
    template = await rpc("getblocktemplate", {"rules": ["segwit"]})
    assert [t["depends"] for t in template["transactions"]] == [[], [1]]
    await rpc("generatetoaddress", 1, BURN)
    assert await rpc("getrawmempool") == []


async def test_submitpackage_failure_is_atomic(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice = Wallet.new()
    coin = await mature_coin(rpc, alice, BURN)
    parent = spend_p2wpkh(alice, [coin], [(alice.script, coin.value)])
    child = spend_p2wpkh(alice, [Coin(parent.txid, 0, coin.value)], [(alice.script, coin.value - 50)])  # too little for both
    result = await rpc("submitpackage", [parent.serialize().hex(), child.serialize().hex()])
    assert result["package_msg"] == "transaction failed"
    assert result["tx-results"][parent.wtxid]["error"].startswith("min relay fee not met")
    assert await rpc("getrawmempool") == []


async def test_block_and_chain_statistics(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    alice = Wallet.new()
    parent, child, grandchild = await _chain(rpc, alice)
    [block_hash] = await rpc("generatetoaddress", 1, BURN)
    height = await rpc("getblockcount")
    stats = await rpc("getblockstats", height)
    assert stats == await rpc("getblockstats", block_hash)
    sizes = sorted(tx.size for tx in (parent, child, grandchild))
    assert stats["blockhash"] == block_hash and stats["height"] == height and stats["txs"] == 4
    fee_stats = ("ins", "outs", "totalfee", "minfee", "maxfee", "medianfee", "avgfee")
    assert [stats[k] for k in fee_stats] == [3, 5, 6_000, 1_000, 3_000, 2_000, 2_000]
    assert stats["subsidy"] == p.block_subsidy(height) and stats["total_out"] == parent.total_out + child.total_out + grandchild.total_out
    assert (stats["mintxsize"], stats["maxtxsize"], stats["mediantxsize"]) == (sizes[0], sizes[2], sizes[1])
    assert stats["swtxs"] == 3 and stats["total_weight"] == parent.weight + child.weight + grandchild.weight
    assert stats["minfeerate"] == 1_000 * 4 // parent.weight and stats["maxfeerate"] == 3_000 * 4 // grandchild.weight
    assert stats["utxo_increase"] == 2 and stats["utxo_increase_actual"] == 1  # the coinbase's commitment is OP_RETURN
    assert len(stats["feerate_percentiles"]) == 5 and stats["time"] == (await rpc("getblockheader", block_hash))["time"]
    assert await rpc("getblockstats", height, ["txs", "minfee"]) == {"minfee": 1_000, "txs": 4}
    assert await error_of(rpc, "getblockstats", height, ["txs", "nonsense"]) == (-8, "Invalid selected statistic 'nonsense'")
    assert await error_of(rpc, "getblockstats", height + 1) == (-8, f"Target block height {height + 1} after current tip {height}")
    assert await error_of(rpc, "getblockstats", -1) == (-8, "Target block height -1 is negative")
    assert await error_of(rpc, "getblockstats", "00" * 32) == (-5, "Block not found")
    genesis = await rpc("getblockstats", 0)
    assert genesis["utxo_increase_actual"] == 0 and genesis["txs"] == 1

    chain = await rpc("getchaintxstats")
    assert chain["txcount"] == height + 1 + 3 and chain["window_final_block_height"] == height
    assert chain["window_block_count"] == height - 1 and chain["window_tx_count"] == height - 1 + 3
    assert chain["window_final_block_hash"] == block_hash
    small = await rpc("getchaintxstats", 0)
    assert small["window_block_count"] == 0 and "window_tx_count" not in small
    assert await error_of(rpc, "getchaintxstats", height) == (-8, "Invalid block count: should be between 0 and the block's height - 1")
    assert await error_of(rpc, "getchaintxstats", None, "00" * 32) == (-5, "Block not found")

    info = await rpc("gettxoutsetinfo", "none")
    assert list(info) == ["height", "bestblock", "txouts", "bogosize", "total_amount", "transactions", "disk_size"]
    assert info["height"] == height and info["bestblock"] == block_hash
    # Every coinbase but genesis's pays one spendable output, one of them spent by the chain of
    # three, which left one output (its grandchild's).
    assert info["txouts"] == height and info["transactions"] == height
    expected_total = sum(p.block_subsidy(h) for h in range(1, height + 1))
    assert info["total_amount"] == Decimal(expected_total) / 100_000_000
    full = await rpc("gettxoutsetinfo")
    assert len(full["hash_serialized_3"]) == 64 and full["hash_serialized_3"] == (await rpc("gettxoutsetinfo"))["hash_serialized_3"]
    mu = await rpc("gettxoutsetinfo", "muhash")
    assert len(mu["muhash"]) == 64 and "hash_serialized_3" not in mu
    assert await error_of(rpc, "gettxoutsetinfo", "foo hash") == (-8, "'foo hash' is not a valid hash_type")
    assert await error_of(rpc, "gettxoutsetinfo", "none", 1) == (-8, "Querying specific block heights requires coinstatsindex")

    assert isinstance(await rpc("getnetworkhashps"), (int, Decimal))
    assert await rpc("getnetworkhashps", 1, 0) == 0
    assert await error_of(rpc, "getnetworkhashps", 0) == (-8, "Invalid nblocks. Must be a positive number or -1.")
    assert await error_of(rpc, "getnetworkhashps", 1, height + 1) == (-8, "Block does not exist at specified height")


async def test_getnetworkinfo_networks(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    networks = (await rpc("getnetworkinfo"))["networks"]
    assert [n["name"] for n in networks] == ["ipv4", "ipv6", "onion", "i2p", "cjdns"]
    assert networks[0] == {"name": "ipv4", "limited": False, "reachable": True, "proxy": "", "proxy_randomize_credentials": False}
    assert networks[2] == {"name": "onion", "limited": True, "reachable": False, "proxy": "", "proxy_randomize_credentials": False}
