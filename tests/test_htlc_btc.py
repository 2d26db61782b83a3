"""Unit tests of the Bitcoin HTLC: scripts, addresses, transactions, audit, extract-secret.

Spends are checked with Bitcoin Core's own script interpreter (libbitcoinkernel
through py-bitcoinkernel), so "valid" here means what consensus says, not what
our builder believes.  The node-level behaviour (mempool reject reasons,
non-final) is in test_htlc_btc_regtest.py.
"""

from __future__ import annotations

import hashlib
import secrets

import pbk
import pytest
from bitcoinlib.encoding import pubkeyhash_to_addr_bech32
from bitcoinlib.keys import Key

from bridge.core.errors import InputError, InsufficientFunds
from chains.bitcoin_tx import address_to_script
from chains.bitcoin_wallet import BtcKey, Utxo
from chains.btc.primitives import Tx, hash160, push_int
from htlc.audit import AuditError, audit
from htlc.bitcoin_script import TEMPLATE_P2SH_BIP199, p2sh_htlc_script, p2wsh_htlc_script
from htlc.bitcoin_tx import (
    SEQUENCE_LOCKTIME,
    SEQUENCE_RBF,
    HtlcCoin,
    build_claim,
    build_funding,
    build_refund,
    spend_htlc,
)
from htlc.secret import SecretNotFound, extract_secret

FLAGS = pbk.ScriptVerificationFlags.ALL & ~pbk.ScriptVerificationFlags.TAPROOT
FAKE_TXID = "ab" * 32


def consensus_ok(raw: bytes, index: int, script_pubkey: bytes, amount: int) -> bool:
    """Bitcoin Core's verdict on input ``index`` of ``raw`` spending ``script_pubkey``."""
    return bool(pbk.ScriptPubkey(script_pubkey).verify(amount, pbk.Transaction(raw), None, index, FLAGS))


@pytest.fixture(scope="module")
def keys():
    return {"claim": BtcKey.generate(), "refund": BtcKey.generate(), "wallet": BtcKey.generate()}


def p2wpkh_script_pubkey(pubkey: bytes) -> bytes:
    return b"\x00\x14" + hash160(pubkey)


@pytest.fixture
def secret():
    s = secrets.token_bytes(32)
    return s, hashlib.sha256(s).digest()


def p2wsh_coin(keys, hashlock, height=150, amount=1_000_000):
    script = p2wsh_htlc_script(hashlock, keys["claim"].pubkey, keys["refund"].pubkey, height)
    return HtlcCoin(FAKE_TXID, 1, amount, script)


def p2sh_coin(keys, hashlock, lock=1_700_000_000, amount=1_000_000):
    script = p2sh_htlc_script(hashlock, hash160(keys["claim"].pubkey), hash160(keys["refund"].pubkey), lock)
    return HtlcCoin(FAKE_TXID, 0, amount, script, TEMPLATE_P2SH_BIP199)


# --- scripts and addresses ----------------------------------------------------------------


def test_p2wsh_script_is_the_design_template_byte_for_byte():
    h, ck, rk = bytes(range(32)), Key(1).public_byte, Key(2).public_byte
    expected = "6382012088a820" + h.hex() + "8821" + ck.hex() + "6703a08601b17521" + rk.hex() + "68ac"
    assert p2wsh_htlc_script(h, ck, rk, 100_000).hex() == expected


def test_p2sh_script_is_the_bip199_decred_template():
    h, a, b = b"\x01" * 32, b"\xaa" * 20, b"\xbb" * 20
    expected = "6382012088a820" + h.hex() + "8876a914" + a.hex() + "6704" + (1_700_000_000).to_bytes(4, "little").hex() + "b17576a914" + b.hex() + "6888ac"
    assert p2sh_htlc_script(h, a, b, 1_700_000_000).hex() == expected


@pytest.mark.parametrize(
    "height, encoded",
    [
        (1, "51"),
        (16, "60"),
        (17, "0111"),
        (127, "017f"),
        (128, "028000"),
        (150, "029600"),
        (255, "02ff00"),
        (256, "020001"),
        (32767, "02ff7f"),
        (32768, "03008000"),
        (499_999_999, "04ff64cd1d"),
    ],
)
def test_refund_height_is_a_minimal_script_number(height, encoded):
    assert push_int(height).hex() == encoded
    script = p2wsh_htlc_script(b"\0" * 32, Key(1).public_byte, Key(2).public_byte, height)
    assert encoded in script.hex()
    assert audit(script).locktime == height


@pytest.mark.parametrize("height", [0, -5, 500_000_000, 2**32])
def test_refund_height_out_of_range_is_refused(height):
    with pytest.raises(InputError, match="height|positive|lock time"):
        p2wsh_htlc_script(b"\0" * 32, Key(1).public_byte, Key(2).public_byte, height)


def test_bad_parameters_are_refused_by_name():
    good = Key(1).public_byte
    with pytest.raises(InputError, match="hashlock must be 32 bytes"):
        p2wsh_htlc_script(b"\0" * 31, good, good, 200)
    with pytest.raises(InputError, match="claim pubkey .* not a compressed"):
        p2wsh_htlc_script(b"\0" * 32, b"\x04" + good[1:], good, 200)
    with pytest.raises(InputError, match="refund pubkey must be 33 bytes"):
        p2wsh_htlc_script(b"\0" * 32, good, Key(2).public_uncompressed_byte, 200)
    with pytest.raises(InputError, match="claim pubkey hash must be 20 bytes"):
        p2sh_htlc_script(b"\0" * 32, b"\0" * 21, b"\0" * 20, 200)


@pytest.mark.parametrize("network, hrp", [("regtest", "bcrt"), ("testnet", "tb"), ("mainnet", "bc")])
def test_p2wsh_address_per_network_matches_bitcoinlib_bech32(keys, secret, network, hrp):
    coin = p2wsh_coin(keys, secret[1])
    terms = audit(coin.script, network=network)
    assert terms.address.startswith(hrp + "1q")
    assert terms.address == pubkeyhash_to_addr_bech32(hashlib.sha256(coin.script).digest(), prefix=hrp)
    assert address_to_script(terms.address, network) == terms.script_pubkey


@pytest.mark.parametrize("network, first", [("regtest", "2"), ("testnet", "2"), ("mainnet", "3")])
def test_p2sh_address_uses_core_base58_prefixes(keys, secret, network, first):
    terms = audit(p2sh_coin(keys, secret[1]).script, network=network)
    assert terms.address[0] == first
    assert address_to_script(terms.address, network) == terms.script_pubkey


# --- claim and refund, judged by Bitcoin Core's interpreter -----------------------------------------


def test_claim_witness_layout_and_consensus(keys, secret):
    s, h = secret
    coin = p2wsh_coin(keys, h)
    spk = audit(coin.script).script_pubkey
    claim = build_claim(coin, s, keys["claim"], p2wpkh_script_pubkey(keys["claim"].pubkey), feerate=3)
    tx = Tx.parse(claim.raw)
    sig, preimage, branch, script = tx.vin[0].witness
    assert (preimage, branch, script) == (s, b"\x01", coin.script) and sig[-1] == 1
    assert tx.vin[0].sequence == SEQUENCE_RBF and tx.locktime == 0
    assert claim.fee == 3 * claim.vsize == coin.amount - tx.vout[0].value
    assert consensus_ok(claim.raw, 0, spk, coin.amount)


def test_refund_sets_locktime_and_non_final_sequence(keys, secret):
    coin = p2wsh_coin(keys, secret[1], height=321)
    spk = audit(coin.script).script_pubkey
    refund = build_refund(coin, keys["refund"], p2wpkh_script_pubkey(keys["refund"].pubkey), feerate=2)
    tx = Tx.parse(refund.raw)
    assert tx.locktime == 321 and tx.vin[0].sequence == SEQUENCE_LOCKTIME
    assert tx.vin[0].witness[1:] == (b"", coin.script)
    assert consensus_ok(refund.raw, 0, spk, coin.amount)


def test_consensus_rejects_wrong_preimage_long_preimage_and_early_locktime(keys, secret):
    s, h = secret
    coin = p2wsh_coin(keys, h, height=321)
    spk, dest = audit(coin.script).script_pubkey, p2wpkh_script_pubkey(keys["wallet"].pubkey)
    wrong = spend_htlc(coin, keys["claim"], [secrets.token_bytes(32), b"\x01"], dest, 2)
    long = spend_htlc(coin, keys["claim"], [s + b"\0", b"\x01"], dest, 2)
    early = spend_htlc(coin, keys["refund"], [b""], dest, 2, locktime=320, sequence=SEQUENCE_LOCKTIME)
    final_seq = spend_htlc(coin, keys["refund"], [b""], dest, 2, locktime=321, sequence=0xFFFFFFFF)
    thief = spend_htlc(coin, keys["wallet"], [s, b"\x01"], dest, 2)
    for tx in (wrong, long, early, final_seq, thief):
        assert not consensus_ok(tx.raw, 0, spk, coin.amount)


def test_builders_refuse_spends_the_script_would_reject(keys, secret):
    s, h = secret
    coin = p2wsh_coin(keys, h)
    dest = p2wpkh_script_pubkey(keys["wallet"].pubkey)
    with pytest.raises(InputError, match="does not match the HTLC's hashlock"):
        build_claim(coin, secrets.token_bytes(32), keys["claim"], dest, 2)
    with pytest.raises(InputError, match="preimage must be 32 bytes, got 33"):
        build_claim(coin, s + b"\0", keys["claim"], dest, 2)
    with pytest.raises(InputError, match="claim key is not"):
        build_claim(coin, s, keys["refund"], dest, 2)
    with pytest.raises(InputError, match="refund key is not"):
        build_refund(coin, keys["claim"], dest, 2)


def test_p2sh_bip199_claim_and_refund(keys, secret):
    s, h = secret
    coin = p2sh_coin(keys, h)
    spk = audit(coin.script).script_pubkey
    dest = p2wpkh_script_pubkey(keys["wallet"].pubkey)
    claim = build_claim(coin, s, keys["claim"], dest, 2)
    refund = build_refund(coin, keys["refund"], dest, 2)
    assert consensus_ok(claim.raw, 0, spk, coin.amount)
    assert consensus_ok(refund.raw, 0, spk, coin.amount)
    # scriptSig: <sig> <pubkey> <secret> OP_1 <redeem> / <sig> <pubkey> OP_0 <redeem>
    claim_sig = Tx.parse(claim.raw).vin[0].script_sig
    assert (b"\x21" + keys["claim"].pubkey + b"\x20" + s + b"\x51\x4c" + bytes([len(coin.script)]) + coin.script) in claim_sig
    refund_tx = Tx.parse(refund.raw)
    assert refund_tx.vin[0].script_sig.endswith(b"\x00\x4c" + bytes([len(coin.script)]) + coin.script)
    assert refund_tx.locktime == 1_700_000_000
    wrong = spend_htlc(coin, keys["claim"], [secrets.token_bytes(32), b"\x01"], dest, 2)
    assert not consensus_ok(wrong.raw, 0, spk, coin.amount)


# --- fees, dust -------------------------------------------------------------------------------


def test_claim_that_would_leave_dust_is_refused(keys, secret):
    s, h = secret
    coin = p2wsh_coin(keys, h, amount=3_000)
    dest = p2wpkh_script_pubkey(keys["wallet"].pubkey)
    with pytest.raises(InputError, match="would be dust"):
        build_claim(p2wsh_coin(keys, h, amount=400), s, keys["claim"], dest, 1, max_fee=1_000)
    with pytest.raises(InputError, match=r"more than 10% of the 3000 sat"):
        build_claim(coin, s, keys["claim"], dest, 5)
    with pytest.raises(InputError, match="exceeds the configured maximum 500 sat"):
        build_claim(p2wsh_coin(keys, h, amount=1_000_000), s, keys["claim"], dest, 5, max_fee=500)
    with pytest.raises(InputError, match="feerate must be a whole number"):
        build_claim(p2wsh_coin(keys, h), s, keys["claim"], dest, 0)


# --- funding ---------------------------------------------------------------------------------


def wallet_coins(keys, *amounts):
    spk = p2wpkh_script_pubkey(keys["wallet"].pubkey)
    return [Utxo(f"{n + 1:02x}" * 32, n, amount, spk, height=1) for n, amount in enumerate(amounts)]


def test_funding_selects_largest_first_pays_change_and_signs_every_input(keys, secret):
    coin = p2wsh_coin(keys, secret[1])
    htlc_spk = audit(coin.script).script_pubkey
    coins = wallet_coins(keys, 60_000, 700_000, 500_000)
    funding = build_funding(coins, [keys["wallet"]], htlc_spk, 1_000_000, feerate=4)
    tx = Tx.parse(bytes.fromhex(funding.raw_hex))
    assert [(i.prevout.txid_hex, i.prevout.n) for i in tx.vin] == [(coins[1].txid, 1), (coins[2].txid, 2)]
    assert tx.vout[0].value == 1_000_000 and tx.vout[0].script_pubkey == htlc_spk
    assert tx.vout[1].script_pubkey == coins[0].script_pubkey
    assert sum(o.value for o in tx.vout) + funding.fee_sats == 1_200_000
    assert 4 * funding.vsize <= funding.fee_sats
    for n, u in enumerate((coins[1], coins[2])):
        assert consensus_ok(bytes.fromhex(funding.raw_hex), n, u.script_pubkey, u.value_sats)
    terms = audit(coin.script, bytes.fromhex(funding.raw_hex))
    assert (terms.funding_txid, terms.output_index, terms.amount) == (funding.txid, 0, 1_000_000)


def test_funding_leaves_dust_change_to_the_fee(keys, secret):
    htlc_spk = audit(p2wsh_coin(keys, secret[1]).script).script_pubkey
    funding = build_funding(wallet_coins(keys, 100_000 + 300), [keys["wallet"]], htlc_spk, 100_000, feerate=1)
    tx = Tx.parse(bytes.fromhex(funding.raw_hex))
    assert len(tx.vout) == 1 and funding.fee_sats == 300


def test_funding_refusals(keys, secret):
    htlc_spk = audit(p2wsh_coin(keys, secret[1]).script).script_pubkey
    with pytest.raises(InsufficientFunds, match="cannot pay 100000 sat"):
        build_funding(wallet_coins(keys, 50_000, 50_000), [keys["wallet"]], htlc_spk, 100_000, 2)
    with pytest.raises(InputError, match="HTLC amount of 329 sat would be dust"):
        build_funding(wallet_coins(keys, 50_000), [keys["wallet"]], htlc_spk, 329, 2)
    with pytest.raises(InsufficientFunds):  # coins of another key are not ours to spend
        build_funding(wallet_coins(keys, 50_000), [keys["claim"]], htlc_spk, 10_000, 2)
    with pytest.raises(InputError, match="more than 10%"):
        build_funding(wallet_coins(keys, 50_000), [keys["wallet"]], htlc_spk, 1_000, 20)


# --- audit -------------------------------------------------------------------------------------


def test_audit_reports_terms(keys, secret):
    coin = p2wsh_coin(keys, secret[1], height=777)
    t = audit(coin.script)
    assert (t.template, t.hashlock, t.claim_pubkey, t.refund_pubkey) == ("p2wsh", secret[1], keys["claim"].pubkey, keys["refund"].pubkey)
    assert (t.locktime, t.lock_kind, t.claim_pubkey_hash) == (777, "height", hash160(keys["claim"].pubkey))
    p = audit(p2sh_coin(keys, secret[1]).script)
    assert (p.template, p.claim_pubkey, p.refund_pubkey_hash, p.lock_kind) == ("p2sh-bip199", None, hash160(keys["refund"].pubkey), "time")
    assert p.to_dict()["hashlock"] == secret[1].hex()


def _refused(script: bytes) -> AuditError:
    with pytest.raises(AuditError) as info:
        audit(script)
    return info.value


def test_audit_refusals_name_the_first_differing_byte(keys, secret):
    script = p2wsh_coin(keys, secret[1], height=150).script
    # OP_SIZE 33: a 33-byte preimage would pass on Bitcoin but not on the EVM leg.
    e = _refused(script[:3] + b"\x21" + script[4:])
    assert e.position == 3 and "the secret size 32" in e.reason
    e = _refused(script[:4] + b"\x87" + script[5:])
    assert e.position == 4 and "expected OP_EQUALVERIFY (0x88), found 0x87 (OP_EQUAL)" in e.reason
    e = _refused(script + b"\x61")
    assert e.position == len(script) and "unexpected trailing bytes (1) after the final OP_CHECKSIG, starting with 0x61 (OP_NOP)" in e.reason
    lock_at = 3 + 1 + 1 + 1 + 33 + 1 + 34 + 1
    e = _refused(script[:lock_at] + b"\x03\x96\x00\x00" + script[lock_at + 3 :])
    assert e.position == lock_at and "not minimally encoded" in e.reason
    e = _refused(script[:lock_at] + b"\x4c\x02\x96\x00" + script[lock_at + 3 :])
    assert e.position == lock_at and "1 to 5 bytes" in e.reason
    e = _refused(script[:-1])
    assert "script ends at byte" in e.reason
    e = _refused(b"\x51")
    assert e.position == 0 and e.template is None
    e = _refused(script[:lock_at] + push_int(1_700_000_000) + script[lock_at + 3 :])
    assert e.position == lock_at and "not a block height" in e.reason


def test_audit_refuses_a_key_that_is_not_a_point(keys, secret):
    script = bytearray(p2wsh_coin(keys, secret[1]).script)
    script[41] = 0x04  # the claim key's prefix: uncompressed marker in a 33-byte push
    e = _refused(bytes(script))
    assert e.position == 41 and "not a compressed secp256k1 public key" in e.reason


def test_audit_with_funding_tx_that_does_not_pay_it(keys, secret):
    coin = p2wsh_coin(keys, secret[1])
    other = p2wsh_coin(keys, hashlib.sha256(b"other").digest())
    funding = build_funding(wallet_coins(keys, 200_000), [keys["wallet"]], audit(other.script).script_pubkey, 100_000, 2)
    with pytest.raises(AuditError, match="pays nothing to the HTLC address bcrt1q"):
        audit(coin.script, bytes.fromhex(funding.raw_hex))
    with pytest.raises(AuditError, match="funding transaction: TX decode failed: truncated data"):
        audit(coin.script, bytes.fromhex(funding.raw_hex)[:-5])


# --- extract-secret ---------------------------------------------------------------------------


def test_extract_secret_from_witness_and_scriptsig(keys, secret):
    s, h = secret
    dest = p2wpkh_script_pubkey(keys["wallet"].pubkey)
    assert extract_secret(build_claim(p2wsh_coin(keys, h), s, keys["claim"], dest, 2).raw, h) == s
    assert extract_secret(build_claim(p2sh_coin(keys, h), s, keys["claim"], dest, 2).raw, h) == s


def test_extract_secret_says_when_it_is_not_there(keys, secret):
    s, h = secret
    dest = p2wpkh_script_pubkey(keys["wallet"].pubkey)
    refund = build_refund(p2wsh_coin(keys, h), keys["refund"], dest, 2)
    with pytest.raises(SecretNotFound, match=f"reveals no 32-byte preimage of {h.hex()}"):
        extract_secret(refund.raw, h)
    claim = build_claim(p2wsh_coin(keys, h), s, keys["claim"], dest, 2)
    with pytest.raises(SecretNotFound):
        extract_secret(claim.raw, hashlib.sha256(b"another swap").digest())
    with pytest.raises(InputError, match="truncated"):
        extract_secret(claim.raw[:10], h)


def test_a_plain_bitcoinlib_key_signs_too_and_rbf_can_be_off(secret):
    s, h = secret
    claimer, refunder = Key(), Key()
    coin = HtlcCoin(FAKE_TXID, 0, 500_000, p2wsh_htlc_script(h, claimer.public_byte, refunder.public_byte, 999))
    claim = build_claim(coin, s, claimer, b"\x00\x14" + hash160(claimer.public_byte), 2, rbf=False)
    assert Tx.parse(claim.raw).vin[0].sequence == 0xFFFFFFFF
    assert consensus_ok(claim.raw, 0, audit(coin.script).script_pubkey, coin.amount)
    with pytest.raises(InputError, match="private key"):
        build_claim(coin, s, Key(claimer.public_hex), b"\x00\x14" + hash160(claimer.public_byte), 2)


# --- interoperability: a real decred/atomicswap (btcatomicswap, testnet) initiation -------------------

DECRED_SECRET = "58febdffd0dd5c141d27c45d8fb1a962e2e9a4eb991fac2da0bca56bd99736ca"
DECRED_CONTRACT = (
    "6382012088a82029bc7db3f1809b2bbd2091e5225d7dc2660826a78b8b734b8783cf2ae3830db88876a914d71c92b78069af7047d0a6c3"
    "67be634aeb5ad6ac6704ab0d045bb17576a91499c51785eb8ed83a06e495aee769f687616cdd4f6888ac"
)
DECRED_CONTRACT_TX = (
    "0200000000010156901f407052d8c5185a54246e764d8304574aae13847c71ea5a2afb73d9e8e80000000017160014253584f1f207ff24"
    "4c2d9dd10f2508b265f31395feffffff028a1be8020000000017a9144a0de4a6e8e5a52c7c249890a00c8bafa217510b8750d412000000"
    "000017a914f0a2561a9fd9de1ce4ee98f70de86ae3312f4873870247304402202761c014d6a3c69584d437153e0eb75f12e21f06ea2678"
    "18bb7eca933ed892ef02201fd5ed6e24ae6fb684386a58cfcbbfde0ae1e16260bc52d3ce7e79a5e9ab98d80121031be3ad72917139bda0"
    "c3b4c3aa0e405772bb1b10168104604b4140eb7bf6338200000000"
)
DECRED_REFUND_TX = (
    "0200000001d82f1c4a209385a503dfe519ac050f14f98983e62406bb6e5203fc2c4d957da301000000cf483045022100c367297bef6e53"
    "b5de7522c396979eac70e7d9eb62adf727083cf3ef777192c402201f799215dd284f2d3d3a6fd10453b83b28ac01e43e6e5a1ef5ef39b9"
    "7b35c0cf0121028d69b6cdc4c6ed23170c0918388a6c9b27811372db9954d898affbcd40ede697004c616382012088a82029bc7db3f180"
    "9b2bbd2091e5225d7dc2660826a78b8b734b8783cf2ae3830db88876a914d71c92b78069af7047d0a6c367be634aeb5ad6ac6704ab0d04"
    "5bb17576a91499c51785eb8ed83a06e495aee769f687616cdd4f6888ac000000000127d31200000000001976a914063f138942d2b2af93"
    "5c678c2a99ae9470d8908e88acab0d045b"
)


def test_audit_accepts_a_decred_atomicswap_contract_and_its_funding():
    t = audit(bytes.fromhex(DECRED_CONTRACT), bytes.fromhex(DECRED_CONTRACT_TX), network="testnet")
    assert (t.template, t.address) == ("p2sh-bip199", "2NFBadefP7PrqDWyyjfJZbvpJrs1Tx8BSke")
    assert t.hashlock == hashlib.sha256(bytes.fromhex(DECRED_SECRET)).digest()
    assert (t.claim_pubkey_hash.hex(), t.refund_pubkey_hash.hex()) == ("d71c92b78069af7047d0a6c367be634aeb5ad6ac", "99c51785eb8ed83a06e495aee769f687616cdd4f")
    assert (t.locktime, t.lock_kind) == (1_526_992_299, "time")  # 2018-05-22 12:31:39 UTC
    assert (t.funding_txid, t.output_index, t.amount) == ("a37d954d2cfc03526ebb0624e68389f9140f05ac19e5df03a58593204a1c2fd8", 1, 1_234_000)


def test_decred_refund_parses_verifies_and_reveals_no_secret():
    raw = bytes.fromhex(DECRED_REFUND_TX)
    tx = Tx.parse(raw)
    assert tx.txid == "bda4c504b8ce4df6ac50e4914d16421c50ba4defb916e1142b5bcad25efede97"
    assert tx.serialize() == raw and tx.locktime == 1_526_992_299
    spk = audit(bytes.fromhex(DECRED_CONTRACT), network="testnet").script_pubkey
    assert consensus_ok(raw, 0, spk, 1_234_000)
    with pytest.raises(SecretNotFound):
        extract_secret(raw, audit(bytes.fromhex(DECRED_CONTRACT)).hashlock)
