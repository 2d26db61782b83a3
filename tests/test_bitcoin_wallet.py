"""Keys, addresses, coin selection and signing, checked without a node.

Whether the node accepts what is built here is checked in test_bitcoin_integration.py.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal

import pytest
from bitcoinlib.keys import Key, Signature, verify
from bitcoinlib.transactions import Transaction

from bridge.core.errors import InputError, InsufficientFunds
from chains.bitcoin_tx import address_to_script, btc_to_sats
from chains.bitcoin_wallet import BtcKey, Utxo, build_payment
from chains.btc.primitives import Tx
from chains.btc.script import dust_threshold, p2wsh_script

# BIP173 test vector: the key whose hash160 is 751e76e8199196d454941c45d1b3a323f1433bd6.
VECTOR_PUBKEY = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"


def coin(key: BtcKey, value: int, n: int = 0, height: int | None = 1) -> Utxo:
    return Utxo(hashlib.sha256(bytes([n])).hexdigest(), n, value, key.p2wpkh_script, height)


def test_key_formats_round_trip():
    key = BtcKey.generate()
    assert BtcKey.from_hex(key.secret.hex()).pubkey == key.pubkey
    assert key.wif("regtest").startswith("c")  # Bitcoin Core's regtest WIF (0xef), not bitcoinlib's
    assert key.wif("mainnet")[0] in "KL"
    assert BtcKey.from_wif(key.wif("regtest")).secret == key.secret
    assert BtcKey.from_wif(key.wif("mainnet")).secret == key.secret
    assert len(key.pubkey) == 33 and key.pubkey[0] in (2, 3)
    assert key.secret.hex() not in repr(key)


def test_known_key_gives_known_addresses():
    one = BtcKey((1).to_bytes(32, "big"))
    assert one.pubkey.hex() == VECTOR_PUBKEY
    assert one.p2wpkh_address("mainnet") == "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    assert one.p2wpkh_address("regtest").startswith("bcrt1q")
    assert address_to_script(one.p2wpkh_address("regtest"), "regtest").hex() == "0014751e76e8199196d454941c45d1b3a323f1433bd6"


@pytest.mark.parametrize("bad", [b"\x00" * 32, b"\x01" * 31, bytes.fromhex("ff" * 32)])
def test_out_of_range_secrets_are_refused(bad):
    with pytest.raises(InputError):
        BtcKey(bad)


def test_bad_wif_is_refused():
    wif = BtcKey.generate().wif()
    with pytest.raises(InputError):
        BtcKey.from_wif(wif[:-1] + ("1" if wif[-1] != "1" else "2"))


def test_addresses_of_other_networks_are_refused():
    key = BtcKey.generate()
    with pytest.raises(InputError, match="not a regtest address"):
        address_to_script(key.p2wpkh_address("mainnet"), "regtest")
    with pytest.raises(InputError, match="not a regtest address"):
        address_to_script(key.p2wpkh_address("testnet"), "regtest")
    with pytest.raises(InputError):
        address_to_script("bcrt1qnotanaddress", "regtest")
    # Bitcoin Core's regtest legacy addresses use the testnet version bytes.
    assert address_to_script("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", "regtest")[:3] == b"\x76\xa9\x14"


def test_sign_digest_is_low_s_der_and_verifies():
    key = BtcKey.generate()
    digest = hashlib.sha256(b"bridge").digest()
    der = key.sign_digest(digest)
    assert der[0] == 0x30
    sig = Signature.parse_bytes(der + b"\x01")  # bitcoinlib parses script-form signatures (with sighash byte)
    assert sig.s <= 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
    assert verify(digest, sig, Key(key.pubkey))


def test_btc_amounts_convert_exactly():
    assert btc_to_sats(Decimal("50.00000000")) == 5_000_000_000
    assert btc_to_sats(Decimal("0.00000001")) == 1
    with pytest.raises(InputError):
        btc_to_sats(Decimal("0.000000001"))
    with pytest.raises(InputError):
        btc_to_sats(0.1)  # type: ignore[arg-type]


def test_dust_thresholds_match_bitcoin_core():
    key = BtcKey.generate()
    assert dust_threshold(key.p2wpkh_script) == 294
    assert dust_threshold(p2wsh_script(b"\x51")) == 330
    assert dust_threshold(b"\x76\xa9\x14" + bytes(20) + b"\x88\xac") == 546


def test_payment_with_change_is_signed_and_pays_its_feerate():
    key, dest = BtcKey.generate(), BtcKey.generate()
    signed = build_payment([key], [coin(key, 1_000_000, 0), coin(key, 20_000, 1)], [(dest.p2wpkh_address(), 300_000)], feerate=5)
    tx = Transaction.parse_hex(signed.raw_hex, network="regtest")
    assert tx.txid == signed.txid == Tx.parse(bytes.fromhex(signed.raw_hex)).txid
    # Largest-first: the one big coin covers it.
    assert [i.value_sats for i in signed.inputs] == [1_000_000]
    values = [o.value for o in tx.outputs]
    assert values[0] == 300_000 and signed.change_vout == 1
    assert sum(values) + signed.fee_sats == 1_000_000
    assert signed.fee_sats >= 5 * signed.vsize
    assert signed.fee_sats - 5 * signed.vsize <= 5  # estimate is at most one vbyte high
    for n, inp in enumerate(tx.inputs):
        inp.value = signed.inputs[n].value_sats
    assert tx.verify()


def test_change_below_dust_goes_to_the_fee():
    key, dest = BtcKey.generate(), BtcKey.generate()
    signed = build_payment([key], [coin(key, 100_000)], [(dest.p2wpkh_script, 100_000 - 110 * 2 - 200)], feerate=2)
    assert signed.change_vout is None
    assert len(Tx.parse(bytes.fromhex(signed.raw_hex)).vout) == 1


def test_refusals_name_the_problem():
    key, dest = BtcKey.generate(), BtcKey.generate()
    coins = [coin(key, 100_000)]
    with pytest.raises(InputError, match="dust"):
        build_payment([key], coins, [(dest.p2wpkh_address(), 293)], feerate=2)
    with pytest.raises(InputError, match="absurd"):
        build_payment([key], coins, [(dest.p2wpkh_address(), 10_000)], feerate=5_000)
    with pytest.raises(InputError, match="absurd"):
        build_payment([key], [coin(key, 10**9)], [(dest.p2wpkh_address(), 10_000)], feerate=900, max_fee=50_000)
    with pytest.raises(InputError, match="int sats"):
        build_payment([key], coins, [(dest.p2wpkh_address(), 0.001)], feerate=2)  # type: ignore[list-item]
    with pytest.raises(InsufficientFunds):
        build_payment([key], coins, [(dest.p2wpkh_address(), 100_000)], feerate=2)
    # A coin of another key is never spent.
    with pytest.raises(InsufficientFunds):
        build_payment([key], [coin(dest, 10**8)], [(dest.p2wpkh_address(), 1000)], feerate=2)


def test_several_keys_sign_their_own_inputs():
    a, b, dest = BtcKey.generate(), BtcKey.generate(), BtcKey.generate()
    signed = build_payment([a, b], [coin(a, 60_000, 0), coin(b, 50_000, 1)], [(dest.p2wpkh_address(), 100_000)], feerate=1)
    assert {u.script_pubkey for u in signed.inputs} == {a.p2wpkh_script, b.p2wpkh_script}
    tx = Transaction.parse_hex(signed.raw_hex, network="regtest")
    for n, inp in enumerate(tx.inputs):
        inp.value = signed.inputs[n].value_sats
    assert tx.verify()


@pytest.mark.parametrize("n_outputs", [1, 252, 253, 600])
def test_fee_estimate_never_undercuts_the_real_size(n_outputs):
    key = BtcKey.generate()
    coins = [coin(key, 10_000_000, n) for n in range(3)]
    signed = build_payment([key], coins, [(key.p2wpkh_script, 1_000)] * n_outputs, feerate=1)
    assert signed.vsize <= signed.fee_sats <= signed.vsize + 2
