"""Contracts every devnet has: the HTLC and a test stablecoin minted to the test accounts.

Recorded in devnet.json under ``contracts`` and in ``htlc-evm.json`` (what
``bridgectl htlc evm-*`` reads), so swaps and hand debugging find them.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The devnet's ERC-20: 6 decimals like USDC/USDT, so decimal handling is exercised.
TOKEN_SYMBOL = "TUSD"
TOKEN_DECIMALS = 6
TOKEN_MINT_PER_ACCOUNT = 1_000_000 * 10**TOKEN_DECIMALS


async def deploy_contracts(rpc_url: str, accounts: list[dict], recorded: dict | None, data_dir: Path) -> dict:
    from chains.evm import EvmAdapter
    from htlc.evm import Erc20, EvmHtlc

    deployer = accounts[0]["private_key"]
    async with await EvmAdapter.connect(rpc_url) as chain:
        if recorded and await chain.code(recorded["htlc"]) and await chain.code(recorded["tokens"][TOKEN_SYMBOL]["address"]):
            return recorded  # still there (Anvil's state survives down/up)
        htlc = await EvmHtlc.deploy(chain, deployer)
        token = await Erc20.deploy(chain, deployer, "TestToken", "Test USD", TOKEN_SYMBOL, TOKEN_DECIMALS)
        for acct in accounts:
            txhash = await token.mint(deployer, acct["address"], TOKEN_MINT_PER_ACCOUNT)
        await chain.wait_for_confirmations(txhash, 1)
        chain_id = await chain.chain_id_int()
    contracts = {"htlc": htlc.address, "tokens": {TOKEN_SYMBOL: {"address": token.address, "decimals": TOKEN_DECIMALS}}}
    (Path(data_dir) / "htlc-evm.json").write_text(
        json.dumps({"chain_id": chain_id, "htlc": htlc.address, "tokens": {"TestToken": token.address}}, indent=2) + "\n"
    )
    return contracts
