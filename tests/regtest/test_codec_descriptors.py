"""Descriptor checksums, parsing for scantxoutset/generate*, and inference for ``desc`` fields."""

from __future__ import annotations

import pytest

from bridge.core.errors import InputError
from chains.btc.address import address_to_script, script_to_address
from devnets.regtest.descriptors import (
    InvalidDescriptor,
    descriptor_checksum,
    descsum_check,
    descsum_create,
    infer_descriptor,
    parse_descriptor,
)
from chains.btc.primitives import hash160, sha256

# Core's descriptor_tests.cpp checksum example (same script, private and public form).
CORE_PRV = (
    "sh(multi(2,[00000000/111'/222]xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuose"
    "XzU6rcxFLJ8HFsTjSyQbLYnMpCqE2VbFWc,xprv9uPDJpEQgRQfDcW7BkF7eTya6RPxXeJCqCJGHuCJ4GiRVLzkTXBAJMu2qaMWPrS7AANYqdq6v"
    "cBcBUdJCVVFceUvJFjaPdGZ2y9WACViL4L/0))"
)
CORE_PUB = (
    "sh(multi(2,[00000000/111'/222]xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY"
    "4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL,xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNL"
    "f9fq9MYo6oDaPPLPxSb7gwQN3ih19Zm4Y/0))"
)

PK1 = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
PK2 = "02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5"
PK_UNCOMPRESSED = "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8"
# BIP86: first receiving key of the test mnemonic, its internal key and the tweaked output.
BIP86_INTERNAL = "cc8a4bc64d897bddc5fbc2f670f7a8ba0b386779106cf1223c6fc5d7cd6fc115"
BIP86_OUTPUT = "a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c"
BIP86_ADDRESS = "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"


def test_core_checksum_examples():
    assert descriptor_checksum(CORE_PRV) == "ggrsrxfy"
    assert descriptor_checksum(CORE_PUB) == "tjg09x5t"
    assert descsum_check(CORE_PUB + "#tjg09x5t") == CORE_PUB
    assert descsum_create("raw(deadbeef)") == "raw(deadbeef)#" + descriptor_checksum("raw(deadbeef)")


@pytest.mark.parametrize(
    "desc, message",
    [
        (CORE_PUB + "#", "Expected 8 character checksum, not 0 characters"),
        (CORE_PUB + "#tjg09x5tq", "Expected 8 character checksum, not 9 characters"),
        (CORE_PUB + "#tjg09x5u", "Provided checksum 'tjg09x5u' does not match computed checksum 'tjg09x5t'"),
        (CORE_PUB + "#tjg09x5t#tjg09x5t", "Multiple '#' symbols"),
        ("raw(00)\u00e9", "Invalid characters in payload"),
    ],
)
def test_checksum_errors_use_cores_messages(desc, message):
    with pytest.raises(InvalidDescriptor) as exc:
        descsum_check(desc)
    assert exc.value.message == message and isinstance(exc.value, InputError)
    with pytest.raises(InvalidDescriptor):
        parse_descriptor(desc)


def test_scripts_of_each_supported_form():
    pk1, pk2 = bytes.fromhex(PK1), bytes.fromhex(PK2)
    p2wpkh = b"\x00\x14" + hash160(pk1)
    assert parse_descriptor(f"pk({PK1})") == [b"\x21" + pk1 + b"\xac"]
    assert parse_descriptor(f"pkh({PK1})") == [b"\x76\xa9\x14" + hash160(pk1) + b"\x88\xac"]
    assert parse_descriptor(f"wpkh({PK1})") == [p2wpkh]
    assert parse_descriptor(f"sh(wpkh({PK1}))") == [b"\xa9\x14" + hash160(p2wpkh) + b"\x87"]
    multi = b"\x51\x21" + pk1 + b"\x21" + pk2 + b"\x52\xae"
    assert parse_descriptor(f"multi(1,{PK1},{PK2})") == [multi]
    assert parse_descriptor(f"sortedmulti(1,{PK2},{PK1})") == [multi]
    assert parse_descriptor(f"sh(multi(1,{PK1},{PK2}))") == [b"\xa9\x14" + hash160(multi) + b"\x87"]
    assert parse_descriptor(f"wsh(multi(1,{PK1},{PK2}))") == [b"\x00\x20" + sha256(multi)]
    assert parse_descriptor(f"sh(wsh(pk({PK1})))") == [b"\xa9\x14" + hash160(b"\x00\x20" + sha256(b"\x21" + pk1 + b"\xac")) + b"\x87"]
    assert parse_descriptor("raw(6a0568656c6c6f)") == [bytes.fromhex("6a0568656c6c6f")]
    address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    assert parse_descriptor(descsum_create(f"addr({address})")) == [address_to_script(address)]
    assert parse_descriptor(f"[d34db33f/84'/1'/0']{PK1}".join(["wpkh(", ")"])) == [p2wpkh]
    combo = parse_descriptor(f"combo({PK1})")
    assert [script_to_address(s) for s in combo[1:]] == [
        script_to_address(s) for s in (parse_descriptor(f"pkh({PK1})")[0], p2wpkh, parse_descriptor(f"sh(wpkh({PK1}))")[0])
    ]
    assert len(parse_descriptor(f"combo({PK_UNCOMPRESSED})")) == 2


def test_taproot_key_path_matches_bip86():
    (script,) = parse_descriptor(f"tr({BIP86_INTERNAL})", "mainnet")
    assert script.hex() == "5120" + BIP86_OUTPUT
    assert script_to_address(script, "mainnet") == BIP86_ADDRESS
    # A compressed key stands for its x-only part; rawtr() skips the tweak.
    assert parse_descriptor(f"tr(02{BIP86_INTERNAL})", "mainnet") == [script]
    assert parse_descriptor(f"rawtr({BIP86_OUTPUT})") == [script]


@pytest.mark.parametrize(
    "desc, message",
    [
        ("foo(00)", "'foo(' is not a valid descriptor function"),
        ("nonsense", "'nonsense' is not a valid descriptor function"),
        ("addr(bcrt1qqqqq)", "Address is not valid"),
        ("addr(1BgGZ9tcN4rm9KBzDn7KprQz87SZ26SAMH)", "Address is not valid"),  # mainnet address on regtest
        ("raw(zz)", "Raw script is not hex"),
        ("sh(raw(00))", "Can only have raw() at top level"),
        (f"wsh(wpkh({PK1}))", "Can only have wpkh() at top level or inside sh()"),
        (f"sh(sh(pk({PK1})))", "Can only have sh() at top level"),
        (f"wsh(wsh(pk({PK1})))", "Can only have wsh() at top level or inside sh()"),
        (f"wpkh({PK_UNCOMPRESSED})", "Uncompressed keys are not allowed"),
        ("pk(02" + "00" * 32 + ")", "Pubkey '02" + "00" * 32 + "' is invalid"),
        (f"multi(0,{PK1})", "Multisig threshold cannot be 0, must be at least 1"),
        (f"multi(3,{PK1},{PK2})", "Multisig threshold cannot be larger than the number of keys; threshold is 3 but only 2 keys specified"),
        (f"multi(1,{PK1},{PK2},{PK1},{PK2})", "Cannot have 4 pubkeys in bare multisig; only at most 3 pubkeys"),
        ("pk(nothex)", "key 'nothex' is not valid"),
        (f"pk(d34db33f]{PK1})", "Key origin start '[ character expected but not found, got 'd' instead"),
        (f"pk([d34db33f]]{PK1})", "Multiple ']' characters found for a single pubkey"),
        (f"pk([d34db3]{PK1})", "Fingerprint is not 4 bytes (6 characters instead of 8 characters)"),
        (f"pk([d34db33g/1]{PK1})", "Fingerprint 'd34db33g' is not hex"),
    ],
)
def test_parse_errors(desc, message):
    with pytest.raises(InvalidDescriptor) as exc:
        parse_descriptor(desc)
    assert exc.value.message == message


def test_unsupported_forms_say_so():
    wif = "cMahea7zqjxrtgAbB7LSGbcQUr1uX1ojuat9jZodMN87JcbXMTcA"  # regtest WIF of private key 1
    for desc in (
        "wpkh(tpubD6NzVbkrYhZ4XgiXtGrdW5XDAPFCL9h7we1vwNCpn8tGbBcgfVYjXyhBo2Ag4pDh2oZL1nXyxQHXbdCo2Dm6wkT3X6FcHCYGpSn5XqVHbLY/0/*)",
        f"tr({BIP86_INTERNAL},pk({PK1}))",
        f"wpkh({wif})",
    ):
        with pytest.raises(InvalidDescriptor, match="not supported by the embedded regtest node"):
            parse_descriptor(desc)


def test_infer_descriptor_like_core():
    pk1 = bytes.fromhex(PK1)
    p2pkh = parse_descriptor(f"pkh({PK1})")[0]
    assert infer_descriptor(p2pkh) == descsum_create(f"addr({script_to_address(p2pkh)})")
    assert infer_descriptor(b"\x21" + pk1 + b"\xac") == descsum_create(f"pk({PK1})")
    multi = parse_descriptor(f"multi(1,{PK1},{PK2})")[0]
    assert infer_descriptor(multi) == descsum_create(f"multi(1,{PK1},{PK2})")
    assert infer_descriptor(bytes.fromhex("6a0568656c6c6f")) == descsum_create("raw(6a0568656c6c6f)")
    tr = parse_descriptor(f"tr({BIP86_INTERNAL})")[0]
    assert infer_descriptor(tr) == descsum_create(f"rawtr({BIP86_OUTPUT})")
    bad_x = b"\x51\x20" + b"\x00" * 32  # not on the curve: only an address can be shown
    assert infer_descriptor(bad_x) == descsum_create(f"addr({script_to_address(bad_x)})")
    assert infer_descriptor(b"") == descsum_create("raw()")
    # Every inferred descriptor parses back to the same script.
    for script in (p2pkh, multi, tr, b"\x21" + pk1 + b"\xac", bytes.fromhex("6a0568656c6c6f")):
        assert parse_descriptor(infer_descriptor(script)) == [script]
