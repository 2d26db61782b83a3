"""HTLC costs on both chains: EVM gas of lock/claim/refund (ETH and ERC-20), BTC vsizes.

    python bench/htlc.py

Starts its own Anvil (free port, temp dir) and stops it afterwards.  Gas is the
receipt's ``gasUsed`` (after refunds), i.e. what the sender pays for.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sys
import tempfile
from pathlib import Path

from eth_account import Account

# Run as `python bench/htlc.py`, this folder is first on sys.path and this file's name
# would shadow the `htlc` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from chains.evm import EvmAdapter  # noqa: E402
from devnets.anvil import Anvil  # noqa: E402
from htlc.evm import ETH, Erc20, EvmHtlc  # noqa: E402
from devnets.controls import AnvilControls  # noqa: E402

#: Issue 4's goals for ETH swaps (gas per call).  A sender's first lock also pays once
#: for creating its nonce slot (20,000 for the 0 -> 1 store), which no layout avoids
#: while the id commits to a stored per-sender nonce.
EVM_GOALS = {"ETH lock (sender's first)": 65_000, "ETH lock": 65_000, "ETH claim": 50_000, "ETH refund": 45_000}
ONE_ETH = 10**18


async def _measure_evm(url: str) -> dict[str, int]:
    chain = await EvmAdapter.connect(url)
    try:
        accounts = [Account.create() for _ in range(3)]
        for acct in accounts:
            await AnvilControls(chain).set_balance(acct.address, 100 * ONE_ETH)
        sender, recipient, relayer = (a.key.to_0x_hex() for a in accounts)
        to = accounts[1].address
        htlc = await EvmHtlc.deploy(chain, sender)
        token = await Erc20.deploy(chain, sender, "TestToken", "Bench USD", "BUSD", 6)
        await token.mint(sender, accounts[0].address, 10**12)
        await token.approve(sender, htlc.address, 2**256 - 1)
        head = await chain.head()
        expiry = head.timestamp + 3600

        async def gas(tx_hash: str) -> int:
            return (await chain.receipt(tx_hash)).gas_used

        async def lock(asset: str, amount: int) -> tuple[bytes, bytes, int]:
            preimage = secrets.token_bytes(32)
            swap_id, tx = await htlc.lock(sender, to, asset, amount, hashlib.sha256(preimage).digest(), expiry)
            return swap_id, preimage, await gas(tx)

        figures: dict[str, int] = {}
        to_refund: dict[str, bytes] = {}
        for label, asset, amount in (("ETH", ETH, ONE_ETH), ("ERC-20", token.address, 10**6)):
            # The sender's very first lock also creates its nonce slot (a 0 -> 1 store).
            first_id, first_preimage, figures[f"{label} lock (sender's first)"] = await lock(asset, amount)
            claim_id, claim_preimage, figures[f"{label} lock"] = await lock(asset, amount)
            to_refund[label], _, _ = await lock(asset, amount)
            figures[f"{label} claim"] = await gas(await htlc.claim(relayer, claim_id, claim_preimage))
        await chain.rpc.call("evm_setNextBlockTimestamp", [expiry])
        await AnvilControls(chain).mine()
        for label, swap_id in to_refund.items():
            figures[f"{label} refund"] = await gas(await htlc.refund(relayer, swap_id))
        return dict(sorted(figures.items(), key=lambda kv: kv[0].startswith("ERC")))
    finally:
        await chain.close()


def evm_figures() -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="bench-anvil-") as tmp:
        node = Anvil(Path(tmp))
        node.start()
        try:
            return asyncio.run(_measure_evm(node.url))
        finally:
            node.stop()


def btc_figures() -> dict[str, int] | str:
    """vsize of the signed claim and refund of each Bitcoin HTLC template (one input, one P2WPKH output).

    Built offline with fixed keys: a transaction's vsize does not depend on the chain,
    only on its signatures' DER length (70-72 bytes), so a figure can vary by one vB.
    """
    from chains.bitcoin_wallet import BtcKey
    from htlc.bitcoin_script import TEMPLATE_P2SH_BIP199, TEMPLATE_P2WSH, p2sh_htlc_script, p2wsh_htlc_script
    from htlc.bitcoin_tx import HtlcCoin, build_claim, build_refund

    claimer, refunder = (BtcKey(hashlib.sha256(f"bench-btc-{n}".encode()).digest()) for n in range(2))
    secret = hashlib.sha256(b"bench secret").digest()
    hashlock = hashlib.sha256(secret).digest()
    scripts = {
        TEMPLATE_P2WSH: p2wsh_htlc_script(hashlock, claimer.pubkey, refunder.pubkey, 800_000 - 1),
        TEMPLATE_P2SH_BIP199: p2sh_htlc_script(hashlock, claimer.pubkey_hash, refunder.pubkey_hash, 800_000 - 1),
    }
    figures: dict[str, int] = {}
    for template, script in scripts.items():
        coin = HtlcCoin("00" * 32, 0, 1_000_000, script, template)
        figures[f"BTC {template} claim"] = build_claim(coin, secret, claimer, claimer.p2wpkh_script, 1).vsize
        figures[f"BTC {template} refund"] = build_refund(coin, refunder, refunder.p2wpkh_script, 1).vsize
    return figures


def main() -> int:
    print("EVM HTLC gas (receipt gasUsed)")
    for name, used in evm_figures().items():
        goal = EVM_GOALS.get(name)
        verdict = "" if goal is None else f"  goal <= {goal:,}: {'ok' if used <= goal else 'OVER'}"
        print(f"  {name:30} {used:>8,}{verdict}")
    btc = btc_figures()
    print("\nBitcoin HTLC transactions (vsize, vB)")
    if isinstance(btc, str):
        print(f"  {btc}")
    else:
        for name, vsize in btc.items():
            print(f"  {name:30} {vsize:>8,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
