"""setmocktime moves the node's clock: time-based nLockTime and BIP68 locks become testable."""

from __future__ import annotations

import time

import pytest
from node_helpers import Coin, NodeError, Rpc, Wallet, mature_coin, spend_p2wpkh


FEE = 1_000


@pytest.fixture
def rpc(own_regtest):
    return Rpc(own_regtest.rpc_url, own_regtest.rpc_auth)


async def test_time_locks_follow_mocktime(rpc: Rpc) -> None:
    alice, burn = Wallet.new(), Wallet.new()
    coin = await mature_coin(rpc, alice, burn.address)
    now = int(time.time())
    unlock = now + 1800
    locked = spend_p2wpkh(alice, [coin], [(alice.script, coin.value - FEE)], locktime=unlock, sequence=0xFFFFFFFE)
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", locked.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "non-final")

    # Blocks stamped an hour ahead push the median time past beyond the lock.
    await rpc("setmocktime", now + 3600)
    await rpc("generatetoaddress", 11, burn.address)
    assert (await rpc("getblockchaininfo"))["mediantime"] > unlock
    assert await rpc("sendrawtransaction", locked.serialize().hex()) == locked.txid

    # BIP68 relative time lock (512 s units) on the new output.
    await rpc("generatetoaddress", 1, burn.address)
    relative = spend_p2wpkh(alice, [Coin(locked.txid, 0, coin.value - FEE)], [(alice.script, coin.value - 2 * FEE)], sequence=(1 << 22) | 2)
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", relative.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "non-BIP68-final")
    await rpc("setmocktime", now + 3600 + 2000)
    await rpc("generatetoaddress", 11, burn.address)
    assert await rpc("sendrawtransaction", relative.serialize().hex()) == relative.txid
    with pytest.raises(NodeError) as err:
        await rpc("setmocktime", -1)
    assert err.value.code == -8
    tx = await rpc("getrawtransaction", locked.txid, 2)
    assert tx["fee"] is not None and tx["vin"][0]["prevout"]["value"] > 0
