"""The node's own indexes follow the kernel through a reorg exactly (in-process, no RPC):
a block spending an output created inside itself is undone to the very UTXO set before it."""

from __future__ import annotations

from node_helpers import Coin, Wallet, spend_p2wpkh

from devnets.regtest import RegtestNode

FEE = 1_000


def utxo_set(node: RegtestNode) -> set[tuple]:
    return set(node.chain.store.db.execute("SELECT txid, vout, value, script, height, coinbase FROM utxo"))


async def test_reorg_undoes_a_block_with_an_in_block_chain(tmp_path) -> None:
    node = RegtestNode(tmp_path / "node")
    node.open()
    try:
        alice = Wallet.new()
        block, _ = node.mine(alice.script)
        for _ in range(100):
            node.mine(b"\x51")
        cb = block.txs[0]
        parent = spend_p2wpkh(alice, [Coin(cb.txid, 0, cb.vout[0].value)], [(alice.script, cb.vout[0].value - FEE)])
        child = spend_p2wpkh(alice, [Coin(parent.txid, 0, cb.vout[0].value - FEE)], [(alice.script, cb.vout[0].value - 2 * FEE)])
        node.accept_tx(parent)
        node.accept_tx(child)
        before = utxo_set(node)
        mined, outcome = node.mine(b"\x51")
        mined_height = node.chain.height
        assert outcome.valid and [t.txid for t in mined.txs[1:]] == [parent.txid, child.txid]
        assert node.chain.store.coin(child.txid, 0) is not None
        assert node.chain.store.coin(parent.txid, 0) is None

        node.replace_tip(1, b"\x52")
        after = utxo_set(node)
        branch = {row for row in after if row[3] == b"\x52"}
        assert len(branch) == 2 and after - branch == before
        assert node.chain.store.tx_location(parent.txid) is None
        assert list(node.mempool.entries) == [parent.txid, child.txid]
        assert node.chain.height == mined_height + 1  # the branch is one block longer
    finally:
        node.close()
