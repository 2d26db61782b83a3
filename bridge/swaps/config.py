"""Swap settings for a trader or an LP: keys, HTLC contract, tokens, timelocks, LP markets.

A TOML file (``--swap-config``, else ``$BRIDGE_SWAP_CONFIG``, else ``<data dir>/swaps.toml``):

    btc_key = "<hex private key>"       # or env BRIDGE_SWAP_BTC_KEY
    evm_key = "0x<hex private key>"     # or env BRIDGE_SWAP_EVM_KEY
    htlc = "0x...HTLC contract"
    poll_interval = 0.5                 # seconds between looks at the chains (indexers, short waits)
    idle_recheck = 5                    # seconds between re-checks of a swap waiting for a chain event
    fee_bump_after = 600                # seconds before a stuck claim/refund is fee-bumped (BTC: RBF; EVM: same nonce)
    [tokens.tusd]                       # ERC-20s by symbol
    address = "0x..."
    decimals = 6
    [confirmations]
    bitcoin = 1
    evm = 1
    [timelock]                          # bridge.swaps.timelock.TimelockPolicy fields, seconds
    safety_gap = 3600
    btc_seconds_per_block = 600
    [lp]                                # only for `bridgectl relayer run lp`
    port = 8600
    lock_window = 600                   # drop an accepted swap whose trader lock is not seen by then
    max_open_per_client = 20            # accepted swaps without a seen lock, per client address
    max_initiator_lock = 18000          # longest trader lock accepted, seconds (default initiator_lock + safety_gap)
    [lp.markets."btc/eth"]              # buy = sell * rate in base units (integers)
    rate = "150000000000/1"
    min_sell = 10000
    max_sell = 100000000
"""

from __future__ import annotations

import os
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.core.errors import ConfigError
from bridge.core.settings import Settings
from bridge.swaps.assets import AssetBook
from bridge.swaps.protocol import LpLimits, PairTerms
from bridge.swaps.timelock import TimelockPolicy


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenConfig(_Model):
    address: str
    decimals: int = Field(ge=0, le=36)


class MarketConfig(_Model):
    rate: str  # "NUM/DEN" integers
    min_sell: int = Field(ge=1)
    max_sell: int = Field(ge=1)


class LpConfig(_Model):
    host: str = "127.0.0.1"
    port: int = 8600
    markets: dict[str, MarketConfig] = Field(default_factory=dict)
    #: ``protocol.LpLimits``: how long an accepted swap waits for the trader's lock, how many
    #: such swaps one client may hold, the longest initiator lock accepted (seconds).
    lock_window: float = Field(default=600.0, gt=0)
    max_open_per_client: int = Field(default=20, ge=1)
    max_initiator_lock: int | None = Field(default=None, gt=0)

    def limits(self) -> LpLimits:
        return LpLimits(self.lock_window, self.max_open_per_client, self.max_initiator_lock)


class SwapConfig(_Model):
    btc_key: str | None = None
    evm_key: str | None = None
    htlc: str | None = None
    btc_feerate: int | None = Field(default=None, ge=1)
    poll_interval: float = Field(default=0.5, gt=0)
    #: A swap waiting for something the indexers announce (the secret, a lock) is woken by the
    #: event; this is only how often it is looked at anyway.
    idle_recheck: float = Field(default=5.0, gt=0)
    #: Seconds a claim/refund may sit unconfirmed before it is replaced with a higher fee.
    fee_bump_after: float = Field(default=600.0, gt=0)
    tokens: dict[str, TokenConfig] = Field(default_factory=dict)
    confirmations: dict[str, int] = Field(default_factory=lambda: {"bitcoin": 1, "evm": 1})
    timelock: dict[str, int] = Field(default_factory=dict)
    lp: LpConfig = Field(default_factory=LpConfig)

    def policy(self) -> TimelockPolicy:
        try:
            return TimelockPolicy(**self.timelock)
        except TypeError as exc:
            raise ConfigError(f"timelock: {exc}") from None

    def assets(self) -> AssetBook:
        return AssetBook({sym: (t.address, t.decimals) for sym, t in self.tokens.items()})

    def markets(self) -> dict[tuple[str, str], PairTerms]:
        out = {}
        for name, market in self.lp.markets.items():
            sell, sep, buy = name.partition("/")
            num, sep2, den = market.rate.partition("/")
            if not sep or not sep2 or not num.strip().isdigit() or not den.strip().isdigit() or int(den) == 0:
                raise ConfigError(f"lp.markets.{name!r}: want 'SELL/BUY' with rate 'NUM/DEN' of integers, got rate {market.rate!r}")
            if market.min_sell > market.max_sell:
                raise ConfigError(f"lp.markets.{name!r}: min_sell exceeds max_sell")
            out[(sell.lower(), buy.lower())] = PairTerms(Fraction(int(num), int(den)), market.min_sell, market.max_sell)
        return out


def load_swap_config(settings: Settings, path: str | None = None, environ: dict[str, str] | None = None) -> SwapConfig:
    environ = dict(os.environ if environ is None else environ)
    chosen = path or environ.get("BRIDGE_SWAP_CONFIG")
    file = Path(chosen) if chosen else settings.data_path / "swaps.toml"
    data: dict[str, Any] = {}
    if file.exists():
        try:
            data = tomllib.loads(file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"swap config {file} is not valid TOML: {exc}") from None
    elif chosen:
        raise ConfigError(f"swap config not found: {file}")
    for key in ("btc_key", "evm_key", "htlc"):
        if f"BRIDGE_SWAP_{key.upper()}" in environ:
            data[key] = environ[f"BRIDGE_SWAP_{key.upper()}"]
    try:
        return SwapConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid swap config {file}: {problems}") from None
