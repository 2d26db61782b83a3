"""Wire-format codec: known vectors, bitcoinlib cross-checks, strictness, round trips."""

from __future__ import annotations

import pytest
from bitcoinlib.keys import Key
from bitcoinlib.transactions import Transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.btc.primitives import (
    COIN,
    NULL_HASH,
    REGTEST_BITS,
    REGTEST_GENESIS_BLOCK,
    REGTEST_GENESIS_HASH,
    Block,
    BlockHeader,
    DecodeError,
    OutPoint,
    Tx,
    TxIn,
    TxOut,
    bits_to_target,
    block_subsidy,
    coinbase_tx,
    hash256,
    merkle_root,
    push_int,
    read_compact_size,
    ser_compact_size,
    solve_regtest,
    target_to_difficulty,
    witness_commitment_script,
    witness_merkle_root,
)
from bridge.core.errors import InputError

# BIP143 "Native P2WPKH" example: unsigned form and the signed serialization.
BIP143_UNSIGNED = (
    "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffffef51e1b804cc89d1"
    "82d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99"
    "f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac11000000"
)
BIP143_SIGNED = (
    "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f00000000494830450221008b9d1dc2"
    "6ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3f9281a99f2b1c0a19c0489bc22ede944ccf4"
    "ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff"
    "02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4d"
    "be6a21b2d50ce2f0167faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a"
    "0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368da1ff3e292e7acafcdb"
    "3566bb0ad253f62fc70f07aeee635711000000"
)
# BIP143 "P2SH-P2WPKH" example, signed.
BIP143_P2SH_P2WPKH = (
    "01000000000101db6b1b20aa0fd7b23880be2ecbd4a98130974cf4748fb66092ac4d3ceb1a5477010000001716001479091972186c44"
    "9eb1ded22b78e40d009bdf0089feffffff02b8b4eb0b000000001976a914a457b684d7f0d539a46a45bbc043f35b59d0d96388ac0008"
    "af2f000000001976a914fd270b1ee6abcaea97fea7ad0402e8bd8ad6d77c88ac02473044022047ac8e878352d3ebbde1c94ce3a10d05"
    "7c24175747116f8288e5d794d12d482f0220217f36a485cae903c713331d877c1f64677e3622ad4010726870540656fe9dcb012103ad"
    "1d8e89212f0b92c74d23bb710c00662ad1470198ac48c43f7d6f93a2a2687392040000"
)


def bitcoinlib_segwit_tx() -> bytes:
    """A signed 1-in-2-out P2WPKH spend built by bitcoinlib."""
    key = Key("0c28fca386c7a227600b2fe50b7cae11ec86d3bf1fbe471be89827e19d72aa1d", network="testnet")
    tx = Transaction(network="testnet", witness_type="segwit", version=2)
    tx.add_input(prev_txid="11" * 32, output_n=1, keys=key.public(), value=100_000, witness_type="segwit")
    tx.add_output(60_000, key.address(encoding="bech32"))
    tx.add_output(39_000, key.address(encoding="bech32"))
    tx.sign([key])
    assert tx.verify()
    return tx.raw()


def test_regtest_genesis_block_hash_and_merkle_root():
    g = REGTEST_GENESIS_BLOCK
    assert g.hash == REGTEST_GENESIS_HASH
    assert g.header.merkle_root_hex == "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    assert g.compute_merkle_root() == g.header.merkle_root
    parsed = Block.parse(g.serialize())
    assert parsed.hash == REGTEST_GENESIS_HASH
    assert parsed.serialize() == g.serialize()
    assert (parsed.size, parsed.strippedsize, parsed.weight) == (285, 285, 1140)
    assert parsed.txs[0].is_coinbase and parsed.header.check_pow()


def test_bitcoinlib_segwit_tx_round_trips_with_matching_ids():
    raw = bitcoinlib_segwit_tx()
    tx = Tx.parse(raw)
    ref = Transaction.parse(raw, network="testnet")
    assert tx.serialize() == raw
    assert tx.txid == ref.txid
    assert tx.wtxid == hash256(raw)[::-1].hex() == tx.hash
    assert tx.vsize == ref.vsize and tx.size == len(raw) == ref.size
    assert tx.weight == ref.calc_weight_units()
    assert tx.has_witness and not tx.is_coinbase
    assert [o.value for o in tx.vout] == [60_000, 39_000]
    assert tx.vin[0].prevout == OutPoint.from_hex("11" * 32, 1)
    rebuilt = Tx(tx.version, tx.vin, tx.vout, tx.locktime)
    assert rebuilt.serialize() == raw and rebuilt.txid == tx.txid


def test_bip143_examples():
    signed = Tx.parse(bytes.fromhex(BIP143_SIGNED))
    unsigned = Tx.parse(bytes.fromhex(BIP143_UNSIGNED))
    assert signed.serialize().hex() == BIP143_SIGNED
    assert signed.locktime == 0x11 and signed.version == 1
    assert signed.vin[0].witness == () and len(signed.vin[1].witness) == 2
    assert signed.vin[1].witness[1].hex() == "025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357"
    assert signed.vin[0].sequence == 0xFFFFFFEE
    # Only input 0's scriptSig differs from the unsigned form in the stripped serialization.
    assert signed.vout == unsigned.vout and signed.vin[1].prevout == unsigned.vin[1].prevout
    assert Tx(1, [unsigned.vin[0]._replace(script_sig=signed.vin[0].script_sig), unsigned.vin[1]], unsigned.vout, 0x11).serialize() == signed.serialize(
        witness=False
    )
    assert not unsigned.has_witness and unsigned.wtxid == unsigned.txid
    nested = Tx.parse(bytes.fromhex(BIP143_P2SH_P2WPKH))
    assert nested.txid == Transaction.parse(bytes.fromhex(BIP143_P2SH_P2WPKH)).txid
    assert nested.vin[0].script_sig.hex() == "16001479091972186c449eb1ded22b78e40d009bdf0089"


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda raw: raw + b"\x00", "trailing bytes after transaction"),
        (lambda raw: raw[:-1], "truncated data"),
        (lambda raw: raw[:50], "truncated data"),
        (lambda raw: raw[:5] + b"\x02" + raw[6:], "Unknown transaction optional data"),
        (lambda raw: raw[:5] + b"\x03" + raw[6:], "Unknown transaction optional data"),
        (lambda raw: b"", "truncated data"),
    ],
)
def test_malformed_transactions_raise_decode_error(mutate, reason):
    raw = bitcoinlib_segwit_tx()
    with pytest.raises(DecodeError) as exc:
        Tx.parse(mutate(raw))
    assert exc.value.message == "TX decode failed"
    assert isinstance(exc.value, InputError)
    assert exc.value.reason == reason


def test_witness_flag_with_all_empty_witnesses_is_rejected():
    tx = Tx(2, [TxIn(OutPoint(b"\x22" * 32, 0), b"", 0xFFFFFFFF, ())], [TxOut(1000, b"\x51")], 0)
    legacy = tx.serialize()
    # Force the extended form: marker/flag, then an empty witness stack for the only input.
    extended = legacy[:4] + b"\x00\x01" + legacy[4:-4] + b"\x00" + legacy[-4:]
    with pytest.raises(DecodeError, match="TX decode failed") as exc:
        Tx.parse(extended)
    assert exc.value.reason == "Superfluous witness record"


def test_non_canonical_compact_size_is_rejected():
    assert read_compact_size(b"\xfd\xfd\x00", 0) == (0xFD, 3)
    with pytest.raises(DecodeError, match="TX decode failed"):
        read_compact_size(b"\xfd\x10\x00", 0)
    with pytest.raises(DecodeError):
        read_compact_size(b"\xfe\x00\x00\x00\x04", 0)  # above MAX_SIZE
    for n in (0, 0xFC, 0xFD, 0xFFFF, 0x10000, 0x01FFFFFF):
        assert read_compact_size(ser_compact_size(n), 0) == (n, len(ser_compact_size(n)))


def test_merkle_root_duplicates_the_last_hash():
    a, b, c = (hash256(bytes([i])) for i in range(3))
    assert merkle_root([a]) == a
    assert merkle_root([a, b]) == hash256(a + b)
    assert merkle_root([a, b, c]) == hash256(hash256(a + b) + hash256(c + c))
    assert merkle_root([]) == NULL_HASH
    assert witness_merkle_root([b]) == hash256(NULL_HASH + b)


def test_pow_constants_and_difficulty():
    assert bits_to_target(REGTEST_BITS) == 0x7FFFFF << (8 * 29)
    assert bits_to_target(0x1D00FFFF) == 0xFFFF << (8 * 26)
    assert target_to_difficulty(0x1D00FFFF) == 1.0
    assert target_to_difficulty(REGTEST_BITS) == pytest.approx(4.656542373906925e-10, rel=1e-15)


def test_block_subsidy_halves_every_150_blocks():
    assert block_subsidy(0) == block_subsidy(149) == 50 * COIN
    assert block_subsidy(150) == 25 * COIN
    assert block_subsidy(300) == 1_250_000_000
    assert block_subsidy(150 * 64) == 0


def test_coinbase_height_push_is_core_script_int():
    assert coinbase_tx(1, b"\x51", 50 * COIN).vin[0].script_sig == b"\x51\x00"
    assert coinbase_tx(16, b"\x51", 1).vin[0].script_sig == b"\x60\x00"
    assert coinbase_tx(17, b"\x51", 1).vin[0].script_sig == b"\x01\x11\x00"
    assert coinbase_tx(128, b"\x51", 1).vin[0].script_sig == b"\x02\x80\x00\x00"
    assert coinbase_tx(500, b"\x51", 1, extra_nonce=b"\xab\xcd").vin[0].script_sig == b"\x02\xf4\x01\x00\x02\xab\xcd"
    assert push_int(0) == b"\x00" and push_int(-1) == b"\x4f"
    with pytest.raises(InputError):
        coinbase_tx(1, b"\x51", 1, extra_nonce=b"x" * 100)


def test_mined_block_with_witness_commitment_is_consistent():
    spend = Tx.parse(bitcoinlib_segwit_tx())
    commitment = witness_commitment_script([spend.wtxid_bytes])
    cb = coinbase_tx(101, bytes.fromhex("0014" + "33" * 20), 50 * COIN + 1000, witness_commitment=commitment)
    assert cb.is_coinbase and cb.vin[0].witness == (NULL_HASH,) and cb.vout[1].value == 0
    assert commitment.hex().startswith("6a24aa21a9ed") and len(commitment) == 38
    txs = [cb, spend]
    header = BlockHeader(0x20000000, REGTEST_GENESIS_BLOCK.hash_bytes, merkle_root([t.txid_bytes for t in txs]), 1_700_000_000, REGTEST_BITS, 0)
    solved = solve_regtest(header)
    assert solved.check_pow() and solved.merkle_root == header.merkle_root
    block = Block(solved, txs)
    again = Block.parse(block.serialize())
    assert again.hash == block.hash and again.serialize() == block.serialize()
    assert again.strippedsize == len(block.serialize(witness=False))
    assert again.weight == again.strippedsize * 3 + again.size
    assert again.txs[1].txid == spend.txid
    with pytest.raises(DecodeError, match="Block decode failed"):
        Block.parse(block.serialize() + b"\x00")


scripts = st.binary(max_size=80)
txins = st.builds(
    TxIn,
    st.builds(OutPoint, st.binary(min_size=32, max_size=32), st.integers(0, 0xFFFFFFFF)),
    scripts,
    st.integers(0, 0xFFFFFFFF),
    st.lists(st.binary(max_size=80), max_size=4).map(tuple),
)
txouts = st.builds(TxOut, st.integers(-(2**63), 2**63 - 1), scripts)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.lists(txins, min_size=1, max_size=4), st.lists(txouts, max_size=4), st.integers(0, 0xFFFFFFFF))
def test_serialize_parse_round_trip(version, vin, vout, locktime):
    tx = Tx(version, vin, vout, locktime)
    parsed = Tx.parse(tx.serialize())
    assert parsed.serialize() == tx.serialize()
    assert (parsed.version, parsed.vin, parsed.vout, parsed.locktime) == (version, tuple(vin), tuple(vout), locktime)
    assert parsed.txid == tx.txid and parsed.wtxid == tx.wtxid
    assert parsed.serialize(witness=False) == tx.serialize(witness=False)
    assert parsed.vsize == tx.vsize


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_parser(data):
    try:
        tx = Tx.parse(data)
    except DecodeError:
        return
    assert tx.serialize() == data
