"""The codec checked against Bitcoin Core's own code (libbitcoinkernel through ``pbk``): its
transaction deserializer agrees with ``Tx.parse`` on mutated inputs, and blocks assembled with
``coinbase_tx`` / ``witness_commitment_script`` / ``solve_regtest`` are connected by the kernel."""

from __future__ import annotations

import pbk
import pytest
from bitcoinlib.keys import Key
from bitcoinlib.transactions import Transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.btc import primitives as p

from test_codec_primitives import BIP143_P2SH_P2WPKH, BIP143_SIGNED, bitcoinlib_segwit_tx

SEEDS = [bitcoinlib_segwit_tx(), bytes.fromhex(BIP143_SIGNED), bytes.fromhex(BIP143_P2SH_P2WPKH), p.REGTEST_GENESIS_BLOCK.txs[0].serialize()]


def core_txid(raw: bytes) -> str | None:
    """Core's reading of ``raw`` as one whole transaction (pbk ignores trailing bytes, so compare lengths)."""
    try:
        tx = pbk.Transaction(raw)
    except RuntimeError:
        return None
    return str(tx.txid) if bytes(tx) == raw else None


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["set", "delete", "insert"]))
        if kind == "set":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=3))
        if not data:
            break
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(mutated())
def test_parser_accepts_exactly_what_core_accepts(raw):
    try:
        mine = p.Tx.parse(raw).txid
    except p.DecodeError:
        mine = None
    assert mine == core_txid(raw)


@pytest.fixture
def chainman(tmp_path):
    params = pbk.ChainParameters(pbk.ChainType.REGTEST)
    opts = pbk.ContextOptions()
    opts.set_chainparams(params)
    context = pbk.Context(opts)
    cm_opts = pbk.ChainstateManagerOptions(context, str(tmp_path), str(tmp_path / "blocks"))
    manager = pbk.ChainstateManager(cm_opts)
    yield manager
    del manager


def test_kernel_connects_blocks_built_by_the_codec(chainman):
    key = Key(0x1234, network="testnet")
    payout = b"\x00\x14" + key.hash160
    tip = p.REGTEST_GENESIS_BLOCK
    now = tip.header.time

    def submit(txs: list[p.Tx], height: int, coinbase_extra: int = 0) -> p.Block:
        nonlocal now
        now += 1
        commitment = p.witness_commitment_script([t.wtxid_bytes for t in txs]) if txs else None
        fees = coinbase_extra
        cb = p.coinbase_tx(height, payout, p.block_subsidy(height) + fees, witness_commitment=commitment)
        body = [cb, *txs]
        header = p.BlockHeader(0x20000000, tip.hash_bytes, p.merkle_root([t.txid_bytes for t in body]), now, p.REGTEST_BITS, 0)
        block = p.Block(p.solve_regtest(header), body)
        core_block = pbk.Block(block.serialize())
        assert str(core_block.block_hash) == block.hash
        assert [str(t.txid) for t in core_block.transactions] == [t.txid for t in body]
        try:
            chainman.process_block(core_block)
        except pbk.ProcessBlockException:
            pass
        return block

    coinbases = []
    for height in range(1, 102):  # heights 1..16 use OP_N in the BIP34 push, 17+ a CScriptNum push
        tip = submit([], height)
        coinbases.append(tip.txs[0])
    chain = chainman.get_active_chain()
    assert chain.height == 101 and str(chain.block_tree_entries[101].block_hash) == tip.hash

    matured = coinbases[0]
    spend = Transaction(network="testnet", witness_type="segwit", version=2)
    spend.add_input(prev_txid=matured.txid, output_n=0, keys=key.public(), value=matured.vout[0].value, witness_type="segwit")
    spend.add_output(matured.vout[0].value - 3000, key.address(encoding="bech32"))
    spend.sign([key])
    spend_tx = p.Tx.parse(spend.raw())
    tip = submit([spend_tx], 102, coinbase_extra=3000)
    assert chainman.get_active_chain().height == 102
    assert str(chainman.get_active_chain().block_tree_entries[102].block_hash) == tip.hash

    # A coinbase claiming one satoshi too many is refused: the chain stays where it was.
    rejected = submit([], 103, coinbase_extra=1)
    assert chainman.get_active_chain().height == 102
    assert str(chainman.get_active_chain().block_tree_entries[102].block_hash) != rejected.hash
