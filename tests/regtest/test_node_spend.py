"""Spending on the embedded regtest node over real JSON-RPC: matured coinbase to P2WPKH and P2WSH,
hashlock and CLTV refund rules enforced by the kernel, with bitcoind's reject reasons."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from chains.btc import primitives as p
from node_helpers import (
    Coin,
    NodeError,
    Rpc,
    Wallet,
    fund,
    mature_coin,
    p2wsh,
    push,
    spend_p2wpkh,
    spend_p2wsh,
)

FEE = 1_000


@pytest.fixture
def rpc(regtest) -> Rpc:
    return Rpc(regtest.rpc_url, regtest.rpc_auth)


def htlc_script(hash_: bytes, claim: bytes, refund: bytes, refund_height: int) -> bytes:
    return b"\x63\x82\x01\x20\x88\xa8" + push(hash_) + b"\x88" + push(claim) + b"\x67" + p.push_int(refund_height) + b"\xb1\x75" + push(refund) + b"\x68\xac"


async def test_matured_coinbase_spent_to_p2wpkh_and_p2wsh(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await mature_coin(rpc, alice, burn.address)

    # Coinbase (P2WPKH) -> bob's P2WPKH + an HTLC P2WSH.
    secret = secrets.token_bytes(32)
    height = await rpc("getblockcount")
    script = htlc_script(hashlib.sha256(secret).digest(), bob.pubkey, alice.pubkey, height + 50)
    tx = spend_p2wpkh(alice, [coin], [(bob.script, 1_000_000), (p2wsh(script), 2_000_000), (alice.script, coin.value - 3_000_000 - FEE)])
    txid = await rpc("sendrawtransaction", tx.serialize().hex())
    assert txid == tx.txid
    assert txid in await rpc("getrawmempool")

    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    assert [t.txid for t in block.txs[1:]] == [txid]
    assert await rpc("getrawmempool") == []

    # Spend bob's P2WPKH output and claim the P2WSH with the right preimage.
    spend = spend_p2wpkh(bob, [Coin(txid, 0, 1_000_000)], [(bob.script, 1_000_000 - FEE)])
    claim = spend_p2wsh(Coin(txid, 1, 2_000_000), script, [(bob.script, 2_000_000 - FEE)], lambda d: [bob.sig(d), secret, b"\x01"])
    assert await rpc("sendrawtransaction", spend.serialize().hex()) == spend.txid
    assert await rpc("sendrawtransaction", claim.serialize().hex()) == claim.txid
    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    assert {t.txid for t in block.txs[1:]} == {spend.txid, claim.txid}
    found = await rpc("scantxoutset", "start", [f"addr({bob.address})"])
    assert {(u["txid"], u["vout"]) for u in found["unspents"]} == {(spend.txid, 0), (claim.txid, 0)}


async def test_hashlock_and_cltv_rules_enforced_with_bitcoinds_reasons(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    secret = secrets.token_bytes(32)
    refund_height = await rpc("getblockcount") + 5
    script = htlc_script(hashlib.sha256(secret).digest(), bob.pubkey, alice.pubkey, refund_height)
    funding = spend_p2wpkh(alice, [coin], [(p2wsh(script), coin.value - FEE)])
    await rpc("sendrawtransaction", funding.serialize().hex())
    await rpc("generatetoaddress", 1, burn.address)
    htlc = Coin(funding.txid, 0, coin.value - FEE)
    out = [(bob.script, htlc.value - FEE)]

    wrong = spend_p2wsh(htlc, script, out, lambda d: [bob.sig(d), secrets.token_bytes(32), b"\x01"])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", wrong.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "mandatory-script-verify-flag-failed (Script failed an OP_EQUALVERIFY operation)")

    # Refund before the lock height: the tx itself is not final yet.
    early = spend_p2wsh(htlc, script, [(alice.script, htlc.value - FEE)], lambda d: [alice.sig(d), b""], locktime=refund_height, sequence=0xFFFFFFFE)
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", early.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "non-final")

    # A final tx whose nLockTime is below the script's lock fails CLTV inside the script.
    low = spend_p2wsh(htlc, script, [(alice.script, htlc.value - FEE)], lambda d: [alice.sig(d), b""], locktime=await rpc("getblockcount"), sequence=0xFFFFFFFE)
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", low.serialize().hex())
    assert (err.value.code, err.value.message) == (-26, "mandatory-script-verify-flag-failed (Locktime requirement not satisfied)")

    # Once the tip reaches the lock height the refund can go in the next block: accepted and mined.
    await rpc("generatetoaddress", refund_height - await rpc("getblockcount"), burn.address)
    assert await rpc("sendrawtransaction", early.serialize().hex()) == early.txid
    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    assert early.txid in {t.txid for t in block.txs}


async def test_claim_with_right_preimage_is_mined(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    secret = secrets.token_bytes(32)
    script = htlc_script(hashlib.sha256(secret).digest(), bob.pubkey, alice.pubkey, 10_000)
    funding = spend_p2wpkh(alice, [coin], [(p2wsh(script), coin.value - FEE)])
    await rpc("sendrawtransaction", funding.serialize().hex())
    htlc = Coin(funding.txid, 0, coin.value - FEE)
    # Bad signature (alice signs bob's branch): the final CHECKSIG leaves false on the stack.
    forged = spend_p2wsh(htlc, script, [(bob.script, htlc.value - FEE)], lambda d: [alice.sig(d), secret, b"\x01"])
    with pytest.raises(NodeError) as err:
        await rpc("sendrawtransaction", forged.serialize().hex())
    assert err.value.message == ("mandatory-script-verify-flag-failed (Script evaluated without error but finished with a false/empty top stack element)")
    claim = spend_p2wsh(htlc, script, [(bob.script, htlc.value - FEE)], lambda d: [bob.sig(d), secret, b"\x01"])
    # The claim spends the unconfirmed funding tx: a chain of two in the mempool.
    assert await rpc("sendrawtransaction", claim.serialize().hex()) == claim.txid
    [block_hash] = await rpc("generatetoaddress", 1, burn.address)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    assert [t.txid for t in block.txs[1:]] == [funding.txid, claim.txid]


def _high_s(sig: bytes) -> bytes:
    """The same ECDSA signature with s replaced by n - s (valid for consensus, non-standard)."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    len_r = sig[3]
    r = sig[4 : 4 + len_r]
    s = int.from_bytes(sig[6 + len_r : 6 + len_r + sig[5 + len_r]], "big")
    s_bytes = (n - s).to_bytes(33, "big").lstrip(b"\x00")
    if s_bytes[0] & 0x80:
        s_bytes = b"\x00" + s_bytes
    body = b"\x02" + bytes([len(r)]) + r + b"\x02" + bytes([len(s_bytes)]) + s_bytes
    return b"\x30" + bytes([len(body)]) + body + sig[-1:]


async def test_policy_only_script_rules(rpc: Rpc) -> None:
    alice, bob, burn = Wallet.new(), Wallet.new(), Wallet.new()
    coin = await fund(rpc, alice, burn.address)
    secret = secrets.token_bytes(32)
    script = htlc_script(hashlib.sha256(secret).digest(), bob.pubkey, alice.pubkey, 10_000)
    funding = spend_p2wpkh(alice, [coin], [(p2wsh(script), coin.value - FEE)])
    await rpc("sendrawtransaction", funding.serialize().hex())
    htlc = Coin(funding.txid, 0, coin.value - FEE)
    out = [(bob.script, htlc.value - FEE)]

    async def refused(tx) -> str:
        with pytest.raises(NodeError) as err:
            await rpc("sendrawtransaction", tx.serialize().hex())
        assert err.value.code == -26
        return err.value.message

    # Consensus-valid, but bitcoind's standard flags refuse them.
    non_minimal_if = spend_p2wsh(htlc, script, out, lambda d: [bob.sig(d), secret, b"\x02"])
    assert await refused(non_minimal_if) == "non-mandatory-script-verify-flag (OP_IF/NOTIF argument must be minimal)"
    high_s = spend_p2wsh(htlc, script, out, lambda d: [_high_s(bob.sig(d)), secret, b"\x01"])
    assert await refused(high_s) == ("non-mandatory-script-verify-flag (Non-canonical signature: S value is unnecessarily high)")
    big_item = spend_p2wsh(htlc, script, out, lambda d: [bob.sig(d), secret + bytes(60), b"\x01"])
    assert await refused(big_item) == "bad-witness-nonstandard"
    good = spend_p2wsh(htlc, script, out, lambda d: [bob.sig(d), secret, b"\x01"])
    assert await rpc("sendrawtransaction", good.serialize().hex()) == good.txid
