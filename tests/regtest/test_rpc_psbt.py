"""The PSBT RPCs on a real node: a P2WPKH coin and a 2-of-3 P2WSH multisig coin spent through
createpsbt, utxoupdatepsbt, two descriptorprocesspsbt signers, combinepsbt, analyzepsbt at each
stage, finalizepsbt and sendrawtransaction; plus the error texts bitcoind gives."""

from __future__ import annotations

from decimal import Decimal

import pytest
from node_helpers import NodeError, Rpc, Wallet, fund

from chains.btc import keys
from chains.btc.address import script_to_address
from chains.btc.script import p2wsh_script
from devnets.regtest import RegtestNode

BURN = "bcrt1qfdes8c308vmyhjgl9wl7nkdsflfc8fupv5e20k"


@pytest.fixture
async def node(tmp_path):
    n = RegtestNode(tmp_path / "node")
    await n.start()
    yield n
    await n.stop()


def wif(w: Wallet) -> str:
    return keys.encode_wif(w.key.private_byte, True, "regtest")


async def error_of(rpc: Rpc, method: str, *params) -> tuple[int, str]:
    with pytest.raises(NodeError) as err:
        await rpc(method, *params)
    return err.value.code, err.value.message


async def test_psbt_flow_p2wpkh_and_2of3_p2wsh(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    owner = Wallet.new()
    signers = [Wallet.new() for _ in range(3)]
    pubs = sorted(s.pubkey.hex() for s in signers)
    ms_desc = f"wsh(sortedmulti(2,{','.join(pubs)}))"
    ws = bytes.fromhex("52" + "".join("21" + k for k in pubs) + "53ae")
    ms_addr = script_to_address(p2wsh_script(ws), "regtest")
    coin = await fund(rpc, owner, BURN)
    # fund the multisig with a PSBT too: P2WPKH coin -> multisig address
    psbt = await rpc("createpsbt", [{"txid": coin.txid, "vout": coin.vout}], [{ms_addr: str(Decimal(coin.value - 2000) / 10**8)}])
    assert (await rpc("analyzepsbt", psbt))["next"] == "updater"
    psbt = await rpc("utxoupdatepsbt", psbt)
    info = await rpc("analyzepsbt", psbt)  # the coin is known, the key behind its hash is not
    assert info["next"] == "updater" and info["inputs"][0]["missing"]["pubkeys"]
    psbt = await rpc("utxoupdatepsbt", psbt, [f"wpkh({owner.pubkey.hex()})"])
    info = await rpc("analyzepsbt", psbt)
    assert info["next"] == "signer" and info["inputs"][0]["missing"]["signatures"]
    assert info["fee"] == Decimal("0.00002")
    done = await rpc("descriptorprocesspsbt", psbt, [f"wpkh({wif(owner)})"])
    assert done["complete"] is True
    assert (await rpc("analyzepsbt", done["psbt"]))["next"] == "extractor"
    fin = await rpc("finalizepsbt", done["psbt"])
    assert fin["complete"] and fin["hex"] == done["hex"]
    txid = await rpc("sendrawtransaction", fin["hex"])
    await rpc("generatetoaddress", 1, BURN)
    ms_value = coin.value - 2000

    # spend the 2-of-3 multisig: two signers, each with its own key
    dest = Wallet.new()
    psbt = await rpc("createpsbt", [{"txid": txid, "vout": 0}], [{dest.address: str(Decimal(ms_value - 3000) / 10**8)}])
    psbt = await rpc("utxoupdatepsbt", psbt, [ms_desc])
    decoded = await rpc("decodepsbt", psbt)
    assert decoded["inputs"][0]["witness_utxo"]["amount"] == Decimal(ms_value) / 10**8
    assert decoded["inputs"][0]["witness_script"]["hex"] == ws.hex()
    assert decoded["fee"] == Decimal("0.00003")
    info = await rpc("analyzepsbt", psbt)
    assert info["next"] == "signer" and len(info["inputs"][0]["missing"]["signatures"]) == 3
    by_pub = {s.pubkey.hex(): s for s in signers}
    parts = []
    for pub in pubs[:2]:
        desc = ms_desc.replace(pub, wif(by_pub[pub]))
        r = await rpc("descriptorprocesspsbt", psbt, [desc])
        assert r["complete"] is False and "hex" not in r
        one = await rpc("analyzepsbt", r["psbt"])
        assert one["next"] == "signer" and len(one["inputs"][0]["missing"]["signatures"]) == 2
        parts.append(r["psbt"])
    combined = await rpc("combinepsbt", parts)
    assert len((await rpc("decodepsbt", combined))["inputs"][0]["partial_signatures"]) == 2
    assert (await rpc("analyzepsbt", combined))["next"] == "finalizer"
    fin = await rpc("finalizepsbt", combined, False)
    assert fin["complete"] is True and "psbt" in fin
    assert (await rpc("analyzepsbt", fin["psbt"]))["next"] == "extractor"
    fin = await rpc("finalizepsbt", combined)
    spend = await rpc("sendrawtransaction", fin["hex"])
    await rpc("generatetoaddress", 1, BURN)
    out = await rpc("gettxout", spend, 0)
    assert out["value"] == Decimal(ms_value - 3000) / 10**8 and out["scriptPubKey"]["address"] == dest.address


async def test_psbt_errors(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    assert await error_of(rpc, "decodepsbt", "garbage") == (-22, "TX decode failed invalid base64")
    assert await error_of(rpc, "decodepsbt", "AAAAAAAA") == (-22, "TX decode failed Invalid PSBT magic bytes: iostream error")
    assert await error_of(rpc, "combinepsbt", []) == (-8, "Parameter 'txs' cannot be empty")
    a = await rpc("createpsbt", [{"txid": "11" * 32, "vout": 0}], [{BURN: 1}])
    b = await rpc("createpsbt", [{"txid": "22" * 32, "vout": 0}], [{BURN: 1}])
    assert await error_of(rpc, "combinepsbt", [a, b]) == (-8, "PSBTs not compatible (different transactions)")
    assert await error_of(rpc, "joinpsbts", [a]) == (-8, "At least two PSBTs are required to join PSBTs.")
    assert await error_of(rpc, "joinpsbts", [a, a]) == (-8, f"Input {'11' * 32}:0 exists in multiple PSBTs")
    joined = await rpc("decodepsbt", await rpc("joinpsbts", [a, b]))
    assert len(joined["inputs"]) == 2 and len(joined["tx"]["vout"]) == 2
    raw = await rpc("createrawtransaction", [{"txid": "11" * 32, "vout": 0}], [{BURN: 1}])
    assert await rpc("converttopsbt", raw) == a
    decoded = await rpc("decodepsbt", a)
    assert decoded["tx"] == await rpc("decoderawtransaction", raw)
    assert "fee" not in decoded and decoded["inputs"] == [{}]
    assert (await rpc("analyzepsbt", a))["inputs"][0] == {"has_utxo": False, "is_final": False, "next": "updater"}
    help_text = await rpc("help")
    for name in (
        "createpsbt",
        "decodepsbt",
        "analyzepsbt",
        "combinepsbt",
        "finalizepsbt",
        "converttopsbt",
        "utxoupdatepsbt",
        "joinpsbts",
        "descriptorprocesspsbt",
    ):
        assert name in help_text
