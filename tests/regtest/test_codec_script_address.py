"""Script asm/classification/policy and address codecs against Core's and the BIPs' vectors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.errors import InputError
from chains.btc.address import (
    InvalidAddress,
    address_to_script,
    b58check_decode,
    b58check_encode,
    bech32_decode,
    decode_destination,
    locate_errors,
    script_to_address,
)
from chains.btc.primitives import OutPoint, Tx, TxIn, TxOut, hash160, push_int
from chains.btc.script import (
    assemble,
    classify,
    disassemble,
    dust_threshold,
    has_valid_ops,
    is_standard_output,
    parse_script,
    standard_tx_reject_reason,
)

PK1 = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
PK2 = bytes.fromhex("02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5")
H20 = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")
H32 = bytes.fromhex("1863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262")
P2PKH = b"\x76\xa9\x14" + H20 + b"\x88\xac"
P2SH = b"\xa9\x14" + H20 + b"\x87"
P2WPKH = b"\x00\x14" + H20
P2WSH = b"\x00\x20" + H32
P2TR = b"\x51\x20" + H32
MULTI_1_OF_2 = b"\x51\x21" + PK1 + b"\x21" + PK2 + b"\x52\xae"

# BIP143's signed P2PK scriptSig (DER signature + SIGHASH_ALL).
SIG_ALL = bytes.fromhex(
    "30450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01"
)


def test_asm_matches_core_for_common_scripts():
    assert disassemble(P2PKH) == f"OP_DUP OP_HASH160 {H20.hex()} OP_EQUALVERIFY OP_CHECKSIG"
    assert disassemble(P2WSH) == f"0 {H32.hex()}"
    assert disassemble(P2TR) == f"1 {H32.hex()}"
    assert disassemble(MULTI_1_OF_2) == f"1 {PK1.hex()} {PK2.hex()} 2 OP_CHECKMULTISIG"
    assert disassemble(b"\x6a\x05hello") == "OP_RETURN 68656c6c6f"
    assert disassemble(bytes.fromhex("6a0401020304")) == "OP_RETURN 67305985"
    assert disassemble(bytes.fromhex("6a0181")) == "OP_RETURN -1"
    cltv = push_int(500) + b"\xb1\x75" + b"\x21" + PK1 + b"\xac"
    assert disassemble(cltv) == f"500 OP_CHECKLOCKTIMEVERIFY OP_DROP {PK1.hex()} OP_CHECKSIG"
    assert disassemble(b"\x4f\x00\x60\xb2\xba\xc0\xff") == "-1 0 16 OP_CHECKSEQUENCEVERIFY OP_CHECKSIGADD OP_UNKNOWN OP_INVALIDOPCODE"
    assert disassemble(b"") == ""


def test_asm_marks_truncated_pushes_with_error():
    assert disassemble(b"\x76\x4c") == "OP_DUP [error]"
    assert disassemble(b"\x02\x01") == "[error]"
    assert disassemble(b"\x4d\x05\x00ab") == "[error]"
    assert parse_script(b"\x76\x02\x01") == [(0x76, None), (0x02, None)]
    assert parse_script(b"\x4c\x01\xff\x00") == [(0x4C, b"\xff"), (0x00, b"")]


def test_script_sig_asm_decodes_sighash_types():
    script_sig = bytes((len(SIG_ALL),)) + SIG_ALL + b"\x21" + PK1
    assert disassemble(script_sig, sighash_decode=True) == f"{SIG_ALL[:-1].hex()}[ALL] {PK1.hex()}"
    acp = SIG_ALL[:-1] + b"\x83"
    assert disassemble(bytes((len(acp),)) + acp, sighash_decode=True) == f"{SIG_ALL[:-1].hex()}[SINGLE|ANYONECANPAY]"
    # Without decoding, or with an undefined type, the push stays plain hex.
    assert disassemble(script_sig) == f"{SIG_ALL.hex()} {PK1.hex()}"
    odd = SIG_ALL[:-1] + b"\x04"
    assert disassemble(bytes((len(odd),)) + odd, sighash_decode=True) == odd.hex()


@pytest.mark.parametrize(
    "script, kind",
    [
        (P2PKH, "pubkeyhash"),
        (P2SH, "scripthash"),
        (P2WPKH, "witness_v0_keyhash"),
        (P2WSH, "witness_v0_scripthash"),
        (P2TR, "witness_v1_taproot"),
        (b"\x52\x02\xab\xcd", "witness_unknown"),
        (b"\x51\x02\x4e\x73", "anchor"),
        (b"\x00\x03abc", "nonstandard"),
        (b"\x21" + PK1 + b"\xac", "pubkey"),
        (MULTI_1_OF_2, "multisig"),
        (b"\x6a", "nulldata"),
        (b"\x6a\x05hello\x51", "nulldata"),
        (b"\x6a\x76", "nonstandard"),
        (b"\x51", "nonstandard"),
        (b"\x52\x21" + PK1 + b"\x51\xae", "nonstandard"),  # m > n
    ],
)
def test_classify_uses_cores_type_names(script, kind):
    assert classify(script) == kind


def test_standard_outputs_and_dust_thresholds():
    assert dust_threshold(P2PKH) == 546
    assert dust_threshold(P2WPKH) == 294
    assert dust_threshold(P2WSH) == dust_threshold(P2TR) == 330
    assert dust_threshold(b"\x6a\x01\x01") == 0
    assert is_standard_output(MULTI_1_OF_2) and is_standard_output(b"\x6a" + b"\x4c\x50" + bytes(80))
    assert not is_standard_output(b"\x6a" + b"\x4c\x51" + bytes(81))
    assert not is_standard_output(b"\x00\x03abc")
    assert has_valid_ops(P2TR) and not has_valid_ops(b"\x02\x01") and not has_valid_ops(b"\xba")


def test_standard_tx_reject_reasons():
    vin = [TxIn(OutPoint(b"\x01" * 32, 0), b"", 0xFFFFFFFD, (b"\x02" * 72, PK1))]
    ok = Tx(2, vin, [TxOut(10_000, P2WPKH), TxOut(20_000, P2TR)], 0)
    assert standard_tx_reject_reason(ok) is None
    assert standard_tx_reject_reason(Tx(4, vin, ok.vout, 0)) == "version"
    assert standard_tx_reject_reason(Tx(2, vin, [TxOut(293, P2WPKH), TxOut(10_000, P2TR)], 0)) == "dust"
    assert standard_tx_reject_reason(Tx(2, vin, [TxOut(0, b"\x6a"), TxOut(0, b"\x6a"), TxOut(9_999, P2TR)], 0)) == "multi-op-return"
    assert standard_tx_reject_reason(Tx(2, vin, [TxOut(1000, b"\x00\x03abc")], 0)) == "scriptpubkey"
    assert standard_tx_reject_reason(Tx(2, [vin[0]._replace(script_sig=b"\x76")], ok.vout, 0)) == "scriptsig-not-pushonly"
    assert standard_tx_reject_reason(Tx(2, vin, [TxOut(1000, b"\x51\x02\x4e\x73")], 0)) == "tx-size-small"


def test_regtest_addresses_round_trip():
    expected = {  # cross-checked with bitcoinlib.encoding
        P2PKH: "mrCDrCybB6J1vRfbwM5hemdJz73FwDBC8r",
        P2SH: "2N3vVYSK5XRgVSGWy21PnsRmBUywSQNdCsf",
        P2WPKH: "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        P2TR: "bcrt1prp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qg74mmc",
    }
    for script, address in expected.items():
        assert script_to_address(script, "regtest") == address
        assert address_to_script(address, "regtest") == script
    assert script_to_address(b"\x21" + PK1 + b"\xac", "regtest") is None
    assert script_to_address(MULTI_1_OF_2, "regtest") is None
    assert script_to_address(b"\x6a", "regtest") is None
    assert script_to_address(P2PKH, "mainnet") == "1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH"
    assert address_to_script(script_to_address(P2WSH, "testnet"), "signet") == P2WSH
    assert address_to_script("bcrt1pfeesnyr2tx", "regtest") == b"\x51\x02\x4e\x73"


# BIP350 / Core rpc_validateaddress valid vectors (mainnet).
VALID_MAINNET = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3", "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    ("bc1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvses7epu4h", "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0", "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
    ("bc1pfeessrawgf", "51024e73"),
]


@pytest.mark.parametrize("address, script_hex", VALID_MAINNET)
def test_bip350_valid_addresses(address, script_hex):
    assert address_to_script(address, "mainnet").hex() == script_hex
    assert script_to_address(bytes.fromhex(script_hex), "mainnet") == address.lower()


INVALID_MAINNET = [
    ("BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "Version 1+ witness address must use Bech32m checksum", []),
    ("bc1rw5uspcuh", "Version 1+ witness address must use Bech32m checksum", []),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "Invalid Bech32 v0 address program size (16 bytes), per BIP141", []),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "Version 1+ witness address must use Bech32m checksum", []),
    ("bc1gmk9yu", "Empty Bech32 data section", []),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "Version 1+ witness address must use Bech32m checksum", []),
    ("bc1qfysxzmfq2phhyarvv9hxgtjgfazycwjypqqqfm706a", "Version 0 witness address must use Bech32 checksum", []),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "Invalid Bech32 address witness version", []),
    ("bc1pw5dgrnzv", "Invalid Bech32 address program size (1 byte)", []),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "Invalid Bech32 address program size (41 bytes)", []),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "Invalid padding in Bech32 data section", []),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "Invalid Bech32 checksum", [41]),
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3t4", "Invalid character or mixed case", [40]),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "Invalid or unsupported Segwit (Bech32) or Base58 encoding.", []),
    ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "Invalid or unsupported prefix for Segwit (Bech32) address (expected bc, got bcrt).", []),
]


@pytest.mark.parametrize("address, error, locations", INVALID_MAINNET)
def test_invalid_addresses_get_cores_reasons(address, error, locations):
    assert decode_destination(address, "mainnet") == (None, error, locations)
    with pytest.raises(InvalidAddress) as exc:
        address_to_script(address, "mainnet")
    assert exc.value.message == error and isinstance(exc.value, InputError)
    assert exc.value.error_locations == locations


def test_regtest_specific_address_errors():
    good = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    assert locate_errors(good[:-3] + "q" + good[-2:]) == ("Invalid Bech32 checksum", [len(good) - 3])
    two = good[:12] + ("q" if good[12] != "q" else "p") + good[13:20] + ("q" if good[20] != "q" else "p") + good[21:]
    assert locate_errors(two) == ("Invalid Bech32 checksum", [12, 20])
    assert decode_destination("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "regtest")[1] == "Invalid or unsupported Segwit (Bech32) or Base58 encoding."
    mainnet_p2pkh = script_to_address(P2PKH, "mainnet")
    assert decode_destination(mainnet_p2pkh, "regtest")[1] == "Invalid or unsupported Base58-encoded address."
    broken = mainnet_p2pkh[:-1] + ("a" if mainnet_p2pkh[-1] != "a" else "b")
    assert decode_destination(broken, "mainnet")[1] == "Invalid checksum or length of Base58 address (P2PKH or P2SH)"
    short = b58check_encode(b"\x6f" + H20[:19])
    assert decode_destination(short, "regtest")[1] == "Invalid length for Base58 address (P2PKH or P2SH)"
    assert decode_destination("bcrt1", "regtest")[1] == "Invalid separator position"
    assert decode_destination("bcrtqqqq", "regtest")[1] == "Missing separator"
    assert decode_destination("bcrt1qb508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest") == (None, "Invalid Base 32 character", [6])


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["regtest", "mainnet", "testnet"]),
    st.one_of(
        st.binary(min_size=20, max_size=20).map(lambda h: b"\x76\xa9\x14" + h + b"\x88\xac"),
        st.binary(min_size=20, max_size=20).map(lambda h: b"\xa9\x14" + h + b"\x87"),
        st.binary(min_size=20, max_size=20).map(lambda h: b"\x00\x14" + h),
        st.binary(min_size=32, max_size=32).map(lambda h: b"\x00\x20" + h),
        st.tuples(st.integers(1, 16), st.binary(min_size=2, max_size=40)).map(lambda vp: bytes((0x50 + vp[0], len(vp[1]))) + vp[1]),
    ),
)
def test_address_round_trip(net, script):
    address = script_to_address(script, net)
    assert address is not None
    assert address_to_script(address, net) == script
    assert bech32_decode(address) is not None or b58check_decode(address, 21) is not None


def test_assemble_builds_what_disassemble_reads():
    script = assemble("OP_SHA256", b"\x11" * 32, "OP_EQUALVERIFY", b"\x21" * 33, "CHECKSIG")
    assert disassemble(script) == f"OP_SHA256 {'11' * 32} OP_EQUALVERIFY {'21' * 33} OP_CHECKSIG"
    assert hash160(PK1).hex() == "751e76e8199196d454941c45d1b3a323f1433bd6"


# BIP173 / BIP350 checksum-only test strings.
BECH32_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BECH32M_VALID = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11" + "l" * 83 + "udsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
BECH32_INVALID = [
    " 1nwldj5",
    "\x7f1axkwrx",
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",
    "1pzry9x0s0muk",
    "x1b4n0q5v",
    "li1dgmt3",
    "A1G7SGD8",
    "10a06t8",
    "1qzzfhee",
]


def test_bip173_bip350_checksum_vectors():
    from chains.btc.address import Encoding

    for text in BECH32_VALID:
        assert bech32_decode(text)[0] is Encoding.BECH32, text
    for text in BECH32M_VALID:
        assert bech32_decode(text)[0] is Encoding.BECH32M, text
    for text in BECH32_INVALID:
        assert bech32_decode(text) is None, text
    assert (
        address_to_script("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7", "testnet").hex()
        == "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"
    )
