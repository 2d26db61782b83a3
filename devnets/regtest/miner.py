"""Block assembly for regtest: BIP34 coinbase, witness commitment, MTP-respecting time, regtest PoW."""

from __future__ import annotations

from chains.btc import primitives as p

MAX_BLOCK_WEIGHT = 4_000_000
COINBASE_RESERVED_WEIGHT = 4_000  # Core's default -blockreservedweight room for the coinbase
BLOCK_VERSION = 0x20000000  # version bits top bits, no deployments signalled


def assemble(
    prev_hash: str,
    height: int,
    prev_mtp: int,
    now: int,
    payout_script: bytes,
    txs: list[p.Tx],
    fees: int,
) -> p.Block:
    """A solved block on ``prev_hash`` paying subsidy + ``fees`` to ``payout_script``."""
    # Like Core's miner, always commit to witnesses once segwit is active (it is from genesis on regtest).
    commitment = p.witness_commitment_script([tx.wtxid_bytes for tx in txs])
    coinbase = p.coinbase_tx(
        height,
        payout_script,
        p.block_subsidy(height) + fees,
        witness_commitment=commitment,
    )
    all_txs = [coinbase, *txs]
    header = p.BlockHeader(
        BLOCK_VERSION,
        bytes.fromhex(prev_hash)[::-1],
        p.merkle_root([tx.txid_bytes for tx in all_txs]),
        max(now, prev_mtp + 1),
        p.REGTEST_BITS,
        0,
    )
    return p.Block(p.solve_regtest(header), all_txs)
