"""The serialized-block scanner on blocks built here (the node's own blocks are compared in
test_bitcoin_integration.py)."""

from __future__ import annotations

import pytest

from bridge.core.errors import InputError
from chains.bitcoin_block import block_header, outpoint_key, scan_block
from chains.bitcoin_wallet import BtcKey, Utxo, build_payment
from chains.btc.primitives import Tx, ser_compact_size


def make_block(raw_txs: list[bytes]) -> bytes:
    header = (2).to_bytes(4, "little") + bytes.fromhex("11" * 32) + bytes(32) + (1_700_000_000).to_bytes(4, "little") + bytes(8)
    return header + ser_compact_size(len(raw_txs)) + b"".join(raw_txs)


def chain_of_payments():
    a, b, c = BtcKey.generate(), BtcKey.generate(), BtcKey.generate()
    fund = build_payment([a], [Utxo("cd" * 32, 3, 1_000_000, a.p2wpkh_script, 1)], [(b.p2wpkh_script, 500_000)], feerate=1)
    spend = build_payment([b], [Utxo(fund.txid, 0, 500_000, b.p2wpkh_script, 2)], [(c.p2wpkh_script, 400_000)], feerate=1)
    other = build_payment([c], [Utxo("ef" * 32, 0, 90_000, c.p2wpkh_script, 1)], [(a.p2wpkh_script, 50_000)], feerate=1)
    return (a, b, c), [bytes.fromhex(t.raw_hex) for t in (fund, other, spend)], [fund.txid, other.txid, spend.txid]


def scan(block: bytes, scripts=None, outpoints=None) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    scan_block(block, scripts, outpoints, lambda i, tx: found.append((i, tx.txid)))
    return found


def test_every_transaction_with_its_txid_and_fields():
    _, raws, txids = chain_of_payments()
    block = make_block(raws)
    txs = []
    scan_block(block, None, None, lambda i, tx: txs.append(tx))
    assert [t.txid for t in txs] == txids == [Tx.parse(r).txid for r in raws]
    first = txs[0]
    assert first["vin"][0]["txid"] == "cd" * 32 and first["vin"][0]["vout"] == 3
    assert len(first["vin"][0]["txinwitness"]) == 2
    assert first["vout"][0]["n"] == 0 and first["vout"][0]["value"] * 100_000_000 == 500_000
    assert bytes.fromhex(first["hex"]) == raws[0] == first.raw
    assert block_header(block)[1] == "11" * 32


def test_a_watched_script_finds_its_funding_and_later_spend():
    (_, b, _), raws, txids = chain_of_payments()
    block = make_block(raws)
    assert scan(block, scripts={b.p2wpkh_script}, outpoints=set()) == [(0, txids[0]), (2, txids[2])]
    assert scan(block, scripts=frozenset(), outpoints={outpoint_key("ef" * 32, 0)}) == [(1, txids[1])]
    assert scan(block, scripts=frozenset(), outpoints=set()) == []


@pytest.mark.parametrize("cut", [81, 120, -3])
def test_truncated_block_is_refused(cut):
    _, raws, _ = chain_of_payments()
    with pytest.raises(InputError, match="malformed"):
        scan(make_block(raws)[:cut])
