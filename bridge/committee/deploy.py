"""Deploying a bridge with its price oracle: the oracle reads the bridge's committee and the
bridge reads the oracle's prices, so the bridge is deployed naming the address the oracle will
get (the deployer's next CREATE address) and the oracle right after; a mismatch stops here."""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

from eth_account import Account

from bridge.committee.contract import CollateralBridge, MarginTerms
from bridge.committee.messages import Committee
from bridge.committee.oracle import FeedConfig, OracleConfig, create_address, deploy_devnet_oracle
from bridge.core.errors import ConfigError
from chains.evm import EvmAdapter

__all__ = ["deploy_bridge"]


async def deploy_bridge(
    chain: EvmAdapter,
    key: str,
    committee: Committee,
    guardians: Sequence[str],
    assets: Mapping[str, tuple[str, int]],
    caps: Mapping[str, int],
    *,
    grace: int,
    terms: MarginTerms,
    cap_window: int = 86_400,
    feeds: Mapping[str, FeedConfig] | None = None,
) -> tuple[CollateralBridge, OracleConfig | None]:
    """The bridge listing the assets of ``caps`` (symbol -> per-window cap; ``assets``: symbol ->
    (address, decimals)), and with ``feeds`` an oracle the bridge prices margin by."""
    predicted = None
    if feeds is not None:
        sender = Account.from_key(key).address
        predicted = create_address(sender, await chain.nonce(sender, "pending") + 1)
        terms = replace(terms, oracle=predicted)
    bridge = await CollateralBridge.deploy(
        chain,
        key,
        committee,
        guardians=guardians,
        caps={assets[sym][0]: cap for sym, cap in caps.items()},
        cap_window=cap_window,
        grace=grace,
        terms=terms,
        listed=[(sym, assets[sym][1]) for sym in caps],
    )
    if feeds is None:
        return bridge, None
    oracle = await deploy_devnet_oracle(chain, key, bridge.address, feeds)
    if oracle.address != predicted:
        raise ConfigError(f"the oracle was deployed at {oracle.address}, not at {predicted} the bridge names: was the deployer key used meanwhile?")
    return bridge, oracle
