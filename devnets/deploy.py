"""Contracts every devnet has: the HTLC, a test stablecoin minted to the test accounts, and the
collateral bridge with the devnet committee (``keys.committee_test_keys``, 3 of 4), and its price
oracle with BTC/USD and ETH/USD feeds the devnet can move (``bridgectl devnet price``).

Recorded in devnet.json under ``contracts`` and in ``htlc-evm.json`` (what
``bridgectl htlc evm-*`` reads), so swaps and hand debugging find them; the bridge's description
in ``committee.json`` (``bridge.committee.config``) and the attesters' keys in
``committee/attester-<i>.key`` (devnet keys: never anywhere else).
"""

from __future__ import annotations

import json
from pathlib import Path

#: The bridge's release caps per day on the devnet, in base units.
BRIDGE_CAPS = {"ETH": 1_000 * 10**18, "TUSD": 10_000_000 * 10**6}
#: The devnet's grace window for a replaced committee, and how long a RELEASE is valid.
BRIDGE_GRACE = 3600
BRIDGE_RELEASE_TTL = 3600
#: The depositor's refund path of a devnet deposit address opens this many blocks after the
#: deposit (short, so tests and the demo can show it; on mainnet it is months).
BTC_REFUND_DELAY = 20
#: The devnet's ERC-20: 6 decimals like USDC/USDT, so decimal handling is exercised.
TOKEN_SYMBOL = "TUSD"
TOKEN_DECIMALS = 6
TOKEN_MINT_PER_ACCOUNT = 1_000_000 * 10**TOKEN_DECIMALS
#: Margin: collateral value is cut by these (bps) before it counts; an account below 110% health
#: can be liquidated, a borrow must leave 125%; a price counts for an hour.
BRIDGE_HAIRCUTS = {"BTC": 2000, "ETH": 1000, TOKEN_SYMBOL: 0}
BRIDGE_LIQUIDATION_BPS = 11_000
BRIDGE_INITIAL_BPS = 12_500
BRIDGE_MAX_PRICE_AGE = 3600


async def deploy_contracts(rpc_url: str, accounts: list[dict], recorded: dict | None, data_dir: Path) -> dict:
    from chains.evm import EvmAdapter
    from htlc.evm import Erc20, EvmHtlc

    deployer = accounts[0]["private_key"]
    async with await EvmAdapter.connect(rpc_url) as chain:
        chain_id = await chain.chain_id_int()
        if recorded and await chain.code(recorded["htlc"]) and await chain.code(recorded["tokens"][TOKEN_SYMBOL]["address"]):
            contracts = recorded
        else:
            htlc = await EvmHtlc.deploy(chain, deployer)
            token = await Erc20.deploy(chain, deployer, "TestToken", "Test USD", TOKEN_SYMBOL, TOKEN_DECIMALS)
            for acct in accounts:
                txhash = await token.mint(deployer, acct["address"], TOKEN_MINT_PER_ACCOUNT)
            await chain.wait_for_confirmations(txhash, 1)
            contracts = {"htlc": htlc.address, "tokens": {TOKEN_SYMBOL: {"address": token.address, "decimals": TOKEN_DECIMALS}}}
        if not (contracts.get("bridge") and await chain.code(contracts["bridge"]) and (Path(data_dir) / "committee.json").exists()):
            contracts = {**contracts, "bridge": await deploy_bridge(chain, deployer, chain_id, contracts, Path(data_dir))}
    (Path(data_dir) / "htlc-evm.json").write_text(
        json.dumps({"chain_id": chain_id, "htlc": contracts["htlc"], "tokens": {"TestToken": contracts["tokens"][TOKEN_SYMBOL]["address"]}}, indent=2) + "\n"
    )
    return contracts


async def deploy_bridge(chain, deployer: str, chain_id: int, contracts: dict, data_dir: Path) -> str:
    """Deploy the bridge with the devnet committee; write committee.json and the attesters' keys."""
    from bridge.committee.btc_deposits import BtcTerms
    from bridge.committee.config import ETH_ADDRESS, BridgeConfig
    from bridge.custody.scripts import CustodyPolicy, refund_pubkey_of_evm_key
    from bridge.committee.contract import MarginTerms
    from bridge.committee.deploy import deploy_bridge as deploy_with_oracle
    from bridge.committee.oracle import deploy_devnet_feeds
    from bridge.committee.messages import Committee
    from devnets.keys import COMMITTEE_THRESHOLD, committee_test_keys, evm_test_keys

    keys = committee_test_keys()
    committee = Committee(0, tuple(bytes.fromhex(k.address[2:]) for k in keys), COMMITTEE_THRESHOLD)
    assets = {"ETH": (ETH_ADDRESS, 18), TOKEN_SYMBOL: (contracts["tokens"][TOKEN_SYMBOL]["address"], TOKEN_DECIMALS)}
    guardian = evm_test_keys(1)[0].address
    policy = CustodyPolicy.of([refund_pubkey_of_evm_key(k.private_key) for k in keys], COMMITTEE_THRESHOLD, BTC_REFUND_DELAY, "regtest")
    btc_terms = BtcTerms(policy)
    token = assets[TOKEN_SYMBOL][0]
    feeds = await deploy_devnet_feeds(chain, deployer, {TOKEN_SYMBOL: (bytes.fromhex(token[2:]), f"{TOKEN_SYMBOL} / USD", 1)})
    margin = MarginTerms(
        release_ttl=BRIDGE_RELEASE_TTL,
        liquidation_bps=BRIDGE_LIQUIDATION_BPS,
        initial_bps=BRIDGE_INITIAL_BPS,
        max_price_age=BRIDGE_MAX_PRICE_AGE,
        min_btc_withdrawal=btc_terms.min_deposit,
        haircuts=BRIDGE_HAIRCUTS,
    )
    bridge, oracle = await deploy_with_oracle(chain, deployer, committee, [guardian], assets, BRIDGE_CAPS, grace=BRIDGE_GRACE, terms=margin, feeds=feeds)
    config = BridgeConfig(
        chain_id, bridge.address, await chain.height(), committee, BRIDGE_GRACE, BRIDGE_RELEASE_TTL, assets, btc_terms, oracle=oracle, margin=margin
    )
    (data_dir / "committee.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
    keydir = data_dir / "committee"
    keydir.mkdir(exist_ok=True)
    for i, key in enumerate(keys):
        path = keydir / f"attester-{i}.key"
        path.write_text(key.private_key + "\n")
        path.chmod(0o600)
    return bridge.address
