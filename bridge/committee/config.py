"""The bridge's description every replica folds by: ``committee.json``.

    {
      "chain_id": 31337,
      "bridge": "0x...",                 # the CollateralBridge contract
      "deploy_block": 12,                # replicas fold from here
      "committee": {"epoch": 0, "threshold": 3, "signers": ["0x...", ...]},   # ascending
      "grace": 3600,                     # the contract's grace window (seconds)
      "release_ttl": 3600,               # how long a RELEASE stays valid after its request
      "assets": {"ETH": {"address": "0x000...0", "decimals": 18},
                 "TUSD": {"address": "0x...", "decimals": 6}},
      "bitcoin": {"pubkeys": ["02...", ...], "threshold": 3,     # the committee's custody keys
                  "refund_delay": 144, "network": "regtest",     # the depositor's refund path (blocks)
                  "min_deposit": 10000, "credit_ttl": 604800, "start_height": 0,
                  "sweep_allowance": 1000},                      # kept from each credit to sweep it
      "margin": {"liquidation_bps": 11000, "initial_bps": 12500,  # health thresholds (bps)
                 "max_price_age": 3600,                           # seconds a price counts
                 "haircuts": {"BTC": 2000, "ETH": 1000}}          # bps off collateral value
    }

The margin terms are the contract's (fixed at deployment): the service checks them against it.

``bridgectl devnet up`` writes it beside ``devnet.json``; an operator elsewhere writes it once
for the deployment.  Every replica (every attester, the service) must fold with the same file,
or they hold different books: a change of ``release_ttl`` or of the assets is a new deployment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import to_checksum_address

from bridge.committee.contract import MarginTerms
from bridge.committee.oracle import OracleConfig
from bridge.committee.messages import BTC_ASSET, Committee, CommitteeRefused, Domain
from bridge.committee.replica import DEFAULT_RELEASE_TTL, ReplicaConfig
from bridge.committee.btc_deposits import DEFAULT_CREDIT_TTL, BtcTerms
from bridge.core.errors import ConfigError
from bridge.core.errors import InputError
from bridge.core.jsonconfig import Fields
from bridge.custody.scripts import CustodyPolicy
from bridge.ledger.assets import Asset, btc, erc20, eth

__all__ = ["BridgeConfig", "load_bridge_config"]

ETH_ADDRESS = "0x" + "00" * 20


@dataclass(frozen=True)
class BridgeConfig:
    chain_id: int
    bridge: str
    deploy_block: int
    committee: Committee
    grace: int = 3600
    release_ttl: int = DEFAULT_RELEASE_TTL
    #: symbol -> (checksummed address, decimals); ETH is the zero address.
    assets: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: Bitcoin custody: the committee's keys and the deposit terms (None: no BTC deposits).
    bitcoin: BtcTerms | None = None
    #: The Bitcoin height attesters start watching deposits from.
    bitcoin_start: int = 0
    #: The price oracle and its feeds (None: no prices).
    oracle: OracleConfig | None = None
    #: Health thresholds, price age and haircuts (its oracle, TTL and BTC minimum are the fields above).
    margin: MarginTerms = MarginTerms()

    def contract_terms(self) -> MarginTerms:
        """The margin terms as the contract holds them."""
        return MarginTerms(
            oracle=self.oracle.address if self.oracle is not None else None,
            release_ttl=self.release_ttl,
            liquidation_bps=self.margin.liquidation_bps,
            initial_bps=self.margin.initial_bps,
            max_price_age=self.margin.max_price_age,
            min_btc_withdrawal=self.bitcoin.min_deposit if self.bitcoin is not None else 0,
            haircuts=dict(self.margin.haircuts),
        )

    def haircut(self, symbol: str) -> int:
        return int(self.margin.haircuts.get(symbol, 0))

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, bytes.fromhex(self.bridge[2:]))

    def ledger_asset(self, symbol: str) -> Asset:
        address, decimals = self.assets[symbol]
        if address == ETH_ADDRESS:
            return eth(self.chain_id, haircut_bps=self.haircut(symbol))
        return erc20(self.chain_id, address, decimals, symbol, haircut_bps=self.haircut(symbol))

    def asset_by_symbol(self, symbol: str) -> tuple[str, int]:
        """``(address, decimals)`` of a listed asset, the symbol matched case-insensitively."""
        for name, value in self.assets.items():
            if name.lower() == symbol.lower():
                return value
        raise ConfigError(f"asset {symbol!r} is not listed on this bridge (listed: {', '.join(self.assets)})", field="asset")

    def symbol_of(self, address: bytes | str) -> str:
        hexed = ("0x" + address.hex()) if isinstance(address, bytes) else address
        if hexed.lower() == "0x" + BTC_ASSET.hex():
            return "BTC"
        for name, (addr, _decimals) in self.assets.items():
            if addr.lower() == hexed.lower():
                return name
        return hexed

    def replica_config(self) -> ReplicaConfig:
        # BTC is never listed on the contract (it is paid on Bitcoin) but is margin all the same.
        assets = {BTC_ASSET: btc(self.haircut("BTC")), **{bytes.fromhex(addr[2:]): self.ledger_asset(sym) for sym, (addr, _d) in self.assets.items()}}
        oracle = bytes.fromhex(self.oracle.address[2:]) if self.oracle is not None else None
        minimum = self.bitcoin.min_deposit if self.bitcoin is not None else 0
        return ReplicaConfig(
            self.domain, assets, self.committee, self.grace, self.release_ttl, oracle=oracle, min_btc_withdrawal=minimum, margin=self.contract_terms()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "bridge": self.bridge,
            "deploy_block": self.deploy_block,
            "committee": {
                "epoch": self.committee.epoch,
                "threshold": self.committee.threshold,
                "signers": [to_checksum_address(s) for s in self.committee.signers],
            },
            "grace": self.grace,
            "release_ttl": self.release_ttl,
            "assets": {sym: {"address": addr, "decimals": dec} for sym, (addr, dec) in self.assets.items()},
            **({"bitcoin": _btc_json(self.bitcoin, self.bitcoin_start)} if self.bitcoin is not None else {}),
            **({"oracle": self.oracle.to_json()} if self.oracle is not None else {}),
            "margin": {
                "liquidation_bps": self.margin.liquidation_bps,
                "initial_bps": self.margin.initial_bps,
                "max_price_age": self.margin.max_price_age,
                "haircuts": dict(self.margin.haircuts),
            },
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "committee config") -> "BridgeConfig":
        fields = Fields(where)
        need, address = fields.need, fields.address

        committee = need(data, "committee", dict, "committee")
        try:
            members = Committee(
                need(committee, "epoch", int, "committee.epoch"),
                tuple(bytes.fromhex(address(s, "committee.signers")[2:]) for s in need(committee, "signers", list, "committee.signers")),
                need(committee, "threshold", int, "committee.threshold"),
            )
        except CommitteeRefused as exc:
            raise ConfigError(f"{where}: committee refused: {exc.reason}", field="committee") from None
        assets: dict[str, tuple[str, int]] = {}
        for symbol, spec in need(data, "assets", dict, "assets").items():
            decimals = need(spec, "decimals", int, f"assets.{symbol}.decimals")
            if not 0 <= decimals <= 77:
                raise ConfigError(f"{where}: assets.{symbol}.decimals must be 0..77", field="assets")
            assets[symbol] = (address(need(spec, "address", str, f"assets.{symbol}.address"), f"assets.{symbol}.address"), decimals)
        if not assets:
            raise ConfigError(f"{where}: no assets listed", field="assets")
        terms, start = None, 0
        if "bitcoin" in data:
            spec = need(data, "bitcoin", dict, "bitcoin")
            try:
                keys = [bytes.fromhex(k) for k in need(spec, "pubkeys", list, "bitcoin.pubkeys")]
                policy = CustodyPolicy.of(
                    keys,
                    need(spec, "threshold", int, "bitcoin.threshold"),
                    need(spec, "refund_delay", int, "bitcoin.refund_delay"),
                    spec.get("network", "regtest"),
                )
            except (ValueError, TypeError, InputError) as exc:
                raise ConfigError(f"{where}: bitcoin custody refused: {getattr(exc, 'message', exc)}", field="bitcoin") from None
            terms = BtcTerms(policy, spec.get("min_deposit", 10_000), spec.get("credit_ttl", DEFAULT_CREDIT_TTL), spec.get("sweep_allowance", 1_000))
            start = spec.get("start_height", 0)
        margin = MarginTerms()
        if "margin" in data:
            spec = need(data, "margin", dict, "margin")
            haircuts = spec.get("haircuts", {})
            if not isinstance(haircuts, dict) or any(type(v) is not int or not 0 <= v < 10_000 for v in haircuts.values()):
                raise ConfigError(f"{where}: margin.haircuts must map symbols to 0..9999 bps", field="margin")
            margin = MarginTerms(
                liquidation_bps=spec.get("liquidation_bps", margin.liquidation_bps),
                initial_bps=spec.get("initial_bps", margin.initial_bps),
                max_price_age=spec.get("max_price_age", margin.max_price_age),
                haircuts=haircuts,
            )
        try:
            return cls(
                chain_id=need(data, "chain_id", int, "chain_id"),
                bridge=address(need(data, "bridge", str, "bridge"), "bridge"),
                deploy_block=need(data, "deploy_block", int, "deploy_block"),
                committee=members,
                grace=data.get("grace", 3600),
                release_ttl=data.get("release_ttl", DEFAULT_RELEASE_TTL),
                assets=assets,
                bitcoin=terms,
                bitcoin_start=start,
                oracle=OracleConfig.from_json(data["oracle"], f"{where}: oracle") if "oracle" in data else None,
                margin=margin,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _btc_json(terms: BtcTerms, start: int) -> dict[str, Any]:
    p = terms.policy
    return {
        "pubkeys": [k.hex() for k in p.pubkeys],
        "threshold": p.threshold,
        "refund_delay": p.refund_delay,
        "network": p.network,
        "min_deposit": terms.min_deposit,
        "credit_ttl": terms.credit_ttl,
        "sweep_allowance": terms.sweep_allowance,
        "start_height": start,
    }


def load_bridge_config(path: str | Path) -> BridgeConfig:
    """Read ``committee.json``; ``ConfigError`` naming the problem (or how to make one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no bridge committee config at {path}: `bridgectl devnet up` writes one for the devnet", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}", path=str(path)) from None
    config = BridgeConfig.from_json(data, str(path))
    ReplicaConfig(config.domain, {}, config.committee, config.grace, config.release_ttl)  # its own checks
    return config
