"""bitcoind JSON shapes: decoderawtransaction, decodescript, validateaddress, amounts."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from bitcoinlib.transactions import Transaction

from chains.btc.address import script_to_address
from devnets.regtest.decode import (
    InvalidAmount,
    SpentOutput,
    amount_to_btc,
    btc_to_sats,
    decode_hex_tx,
    script_to_json,
    tx_to_json,
    validate_address_json,
)
from devnets.regtest.descriptors import descsum_create, parse_descriptor
from chains.btc.primitives import COIN, REGTEST_GENESIS_BLOCK, DecodeError, Tx, TxOut, coinbase_tx, hash160

from test_codec_primitives import BIP143_SIGNED, bitcoinlib_segwit_tx

PK1 = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
PK2 = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"


def test_decoderawtransaction_shape_and_values():
    raw = bitcoinlib_segwit_tx()
    tx = decode_hex_tx(raw.hex())
    out = tx_to_json(tx, "regtest", include_hex=True)
    assert list(out) == ["txid", "hash", "version", "size", "vsize", "weight", "locktime", "vin", "vout", "hex"]
    ref = Transaction.parse(raw, network="testnet")
    assert out["txid"] == ref.txid and out["hex"] == raw.hex() and out["vsize"] == ref.vsize
    (vin,) = out["vin"]
    assert list(vin) == ["txid", "vout", "scriptSig", "txinwitness", "sequence"]
    assert vin["txid"] == "11" * 32 and vin["vout"] == 1 and vin["scriptSig"] == {"asm": "", "hex": ""}
    assert len(vin["txinwitness"]) == 2 and vin["sequence"] == 0xFFFFFFFF
    first = out["vout"][0]
    assert first["value"] == Decimal("0.00060000") and str(first["value"]) == "0.00060000" and first["n"] == 0
    spk = first["scriptPubKey"]
    assert list(spk) == ["asm", "desc", "hex", "address", "type"]
    assert spk["type"] == "witness_v0_keyhash" and spk["address"].startswith("bcrt1q")
    assert spk["desc"] == descsum_create(f"addr({spk['address']})")
    assert spk["asm"] == "0 " + spk["hex"][4:]


def test_coinbase_inputs_and_p2pk_outputs():
    out = tx_to_json(REGTEST_GENESIS_BLOCK.txs[0])
    assert list(out["vin"][0]) == ["coinbase", "sequence"]
    spk = out["vout"][0]["scriptPubKey"]
    assert spk["type"] == "pubkey" and "address" not in spk and spk["desc"].startswith("pk(04678afdb0")
    assert out["vout"][0]["value"] == Decimal("50.00000000")
    cb = coinbase_tx(5, bytes.fromhex("0014" + "11" * 20), 50 * COIN, witness_commitment=b"\x6a\x24\xaa\x21\xa9\xed" + bytes(32))
    vin = tx_to_json(cb)["vin"][0]
    assert list(vin) == ["coinbase", "txinwitness", "sequence"] and vin["txinwitness"] == ["00" * 32]


def test_getblock_verbosity_3_prevout_and_fee():
    tx = decode_hex_tx(bitcoinlib_segwit_tx().hex())
    spent = SpentOutput(TxOut(100_000, bytes.fromhex("0014" + "22" * 20)), 101, True)
    out = tx_to_json(tx, "regtest", prevouts=[spent], include_hex=True, block_hash="ab" * 32)
    assert list(out)[-4:] == ["vout", "fee", "blockhash", "hex"]
    assert out["fee"] == Decimal("0.00001000")
    prevout = out["vin"][0]["prevout"]
    assert list(prevout) == ["generated", "height", "value", "scriptPubKey"]
    assert prevout == {"generated": True, "height": 101, "value": Decimal("0.00100000"), "scriptPubKey": prevout["scriptPubKey"]}
    assert list(out["vin"][0])[-2:] == ["prevout", "sequence"]
    assert "prevout" not in tx_to_json(tx, prevouts=[spent], include_prevout=False)["vin"][0]


def test_scriptsig_asm_shows_sighash_in_decoded_tx():
    out = tx_to_json(decode_hex_tx(BIP143_SIGNED))
    assert out["vin"][0]["scriptSig"]["asm"].endswith("[ALL]")


def test_decode_hex_tx_is_strict_and_reads_legacy_zero_input_form():
    zero_in = Tx(2, [], [TxOut(1000, bytes.fromhex("0014" + "33" * 20))], 0)
    decoded = decode_hex_tx(zero_in.hex())
    assert decoded.vin == () and decoded.vout == zero_in.vout
    for bad in ("zz", "0", "00 11", "0x00", "", BIP143_SIGNED + "00"):
        with pytest.raises(DecodeError) as exc:
            decode_hex_tx(bad)
        assert exc.value.message == "TX decode failed"


def test_decodescript_shapes():
    p2pkh = parse_descriptor(f"pkh({PK1})")[0]
    out = script_to_json(p2pkh)
    assert list(out) == ["asm", "desc", "address", "type", "p2sh", "segwit"]
    assert out["p2sh"] == script_to_address(b"\xa9\x14" + hash160(p2pkh) + b"\x87")
    segwit = out["segwit"]
    assert list(segwit) == ["asm", "desc", "hex", "address", "type", "p2sh-segwit"]
    assert segwit["type"] == "witness_v0_keyhash" and segwit["hex"] == "0014" + p2pkh[3:23].hex()

    multi = parse_descriptor(f"multi(1,{PK1},{PK2})")[0]
    out = script_to_json(multi)
    assert out["desc"] == descsum_create(f"multi(1,{PK1},{PK2})") and "address" not in out
    assert out["segwit"]["desc"] == descsum_create(f"wsh(multi(1,{PK1},{PK2}))")
    assert out["segwit"]["type"] == "witness_v0_scripthash"

    p2wpkh = parse_descriptor(f"wpkh({PK1})")[0]
    assert list(script_to_json(p2wpkh)) == ["asm", "desc", "address", "type", "p2sh"]
    for no_wrap in (parse_descriptor(f"tr({PK1})")[0], bytes.fromhex("6a0568656c6c6f"), parse_descriptor(f"sh(wpkh({PK1}))")[0]):
        assert "p2sh" not in script_to_json(no_wrap)

    htlc = bytes.fromhex("a820" + "11" * 32 + "8821" + PK1 + "ac")  # SHA256 <h> EQUALVERIFY <pk> CHECKSIG
    out = script_to_json(htlc)
    assert out["type"] == "nonstandard" and out["desc"] == descsum_create(f"raw({htlc.hex()})")
    assert out["asm"] == f"OP_SHA256 {'11' * 32} OP_EQUALVERIFY {PK1} OP_CHECKSIG"
    assert out["segwit"]["type"] == "witness_v0_scripthash"
    empty = script_to_json(b"")
    assert list(empty) == ["asm", "desc", "type", "p2sh", "segwit"]
    assert empty["desc"] == descsum_create("raw()") and empty["type"] == "nonstandard"


def test_validateaddress_shapes():
    valid = validate_address_json("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
    assert valid == {
        "isvalid": True,
        "address": "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        "scriptPubKey": "0014751e76e8199196d454941c45d1b3a323f1433bd6",
        "isscript": False,
        "iswitness": True,
        "witness_version": 0,
        "witness_program": "751e76e8199196d454941c45d1b3a323f1433bd6",
    }
    assert validate_address_json("mrCDrCybB6J1vRfbwM5hemdJz73FwDBC8r") == {
        "isvalid": True,
        "address": "mrCDrCybB6J1vRfbwM5hemdJz73FwDBC8r",
        "scriptPubKey": "76a914751e76e8199196d454941c45d1b3a323f1433bd688ac",
        "isscript": False,
        "iswitness": False,
    }
    invalid = validate_address_json("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt081")
    assert list(invalid) == ["isvalid", "error_locations", "error"] and invalid["isvalid"] is False


@pytest.mark.parametrize(
    "value, sats",
    [
        (1, COIN),
        ("0.00000001", 1),
        (Decimal("21000000"), 21_000_000 * COIN),
        ("1e-8", 1),
        (0.1, 10_000_000),
        ("0.100000000", 10_000_000),
        (Decimal("5.00000000"), 5 * COIN),
        ("0", 0),
    ],
)
def test_amounts_accepted_like_bitcoind(value, sats):
    assert btc_to_sats(value) == sats


@pytest.mark.parametrize(
    "value, message",
    [
        ("0.000000001", "Invalid amount"),
        ("abc", "Invalid amount"),
        (".5", "Invalid amount"),
        ("01", "Invalid amount"),
        ("1e400", "Invalid amount"),
        ("-0.1", "Amount out of range"),
        (-1, "Amount out of range"),
        ("21000000.00000001", "Amount out of range"),
        (None, "Amount is not a number or string"),
        (True, "Amount is not a number or string"),
        ([1], "Amount is not a number or string"),
    ],
)
def test_amounts_refused_like_bitcoind(value, message):
    with pytest.raises(InvalidAmount) as exc:
        btc_to_sats(value)
    assert exc.value.message == message


def test_amount_to_btc_has_eight_decimals_and_serialises_exactly():
    assert str(amount_to_btc(1)) == "0.00000001"
    assert str(amount_to_btc(50 * COIN)) == "50.00000000"
    assert str(amount_to_btc(0)) == "0.00000000" and amount_to_btc(0) == 0
    assert str(amount_to_btc(-1)) == "-0.00000001"
    # What an RPC layer's encoder does with it: the raw number text, exactly 8 decimals.
    assert json.dumps({"v": amount_to_btc(123_456_789)}, default=str) == '{"v": "1.23456789"}'
    assert amount_to_btc(123_456_789) + amount_to_btc(1) == Decimal("1.23456790")
