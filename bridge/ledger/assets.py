"""The asset registry: fixed entries, each with its unit and chain identity.

BTC is counted in sats, ETH in wei, an ERC-20 in its base units and is identified by
``(chain_id, address)``; its code is ``ERC20:<chain_id>:<lowercase address>`` so two
tokens with the same symbol on different chains can never be mixed up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from bridge.core.errors import IdempotencyConflict, InputError, UnknownAsset
from bridge.ledger.bounds import MAX_INT64, check_int, check_text
from bridge.ledger.models import LedgerAsset

#: Chain id used for Bitcoin entries (regtest has no EIP-155 id; 0 marks "the Bitcoin chain").
BITCOIN_CHAIN_ID = 0
DEFAULT_EVM_CHAIN_ID = 31337
MAX_BPS = 10_000

_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class Asset:
    code: str
    symbol: str
    kind: str
    chain_id: int
    decimals: int
    address: str | None = None
    haircut_bps: int = 0

    def row(self) -> dict:
        return {
            "code": self.code,
            "symbol": self.symbol,
            "kind": self.kind,
            "chain_id": self.chain_id,
            "address": self.address,
            "decimals": self.decimals,
            "haircut_bps": self.haircut_bps,
        }


def btc(haircut_bps: int = 0) -> Asset:
    return Asset("BTC", "BTC", "btc", BITCOIN_CHAIN_ID, 8, haircut_bps=haircut_bps)


def eth(chain_id: int = DEFAULT_EVM_CHAIN_ID, haircut_bps: int = 0) -> Asset:
    # The native coin of the default EVM chain is plain "ETH"; of any other chain, "ETH:<id>".
    code = "ETH" if chain_id == DEFAULT_EVM_CHAIN_ID else f"ETH:{chain_id}"
    return Asset(code, "ETH", "eth", chain_id, 18, haircut_bps=haircut_bps)


def erc20(chain_id: int, address: str, decimals: int, symbol: str, haircut_bps: int = 0) -> Asset:
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise InputError(f"ERC-20 address must be 0x and 40 hex digits, got {address!r}", field="address")
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 77:
        raise InputError(f"ERC-20 decimals must be an integer in 0..77, got {decimals!r}", field="decimals")
    check_int(chain_id, "chain id", 1, MAX_INT64, "chain_id")
    address = address.lower()
    return Asset(f"ERC20:{chain_id}:{address}", symbol, "erc20", chain_id, decimals, address, haircut_bps)


def default_assets() -> list[Asset]:
    return [btc(), eth()]


def validate(asset: Asset) -> None:
    if not isinstance(asset.haircut_bps, int) or not 0 <= asset.haircut_bps <= MAX_BPS:
        raise InputError(f"haircut must be 0..{MAX_BPS} bps, got {asset.haircut_bps!r}", field="haircut_bps")
    if not isinstance(asset.code, str) or not asset.code or len(asset.code) > 120:
        raise InputError(f"asset code must be 1..120 characters, got {asset.code!r}", field="code")
    check_text(asset.code, "asset code", 120, "code")
    check_text(asset.symbol, "asset symbol", 32, "symbol")
    check_int(asset.chain_id, "chain id", 0, MAX_INT64, "chain_id")
    check_int(asset.decimals, "decimals", 0, 77, "decimals")


def register(conn: Connection, asset: Asset) -> Asset:
    """Add ``asset`` to the registry; registering the same entry again is a no-op."""
    validate(asset)
    table = LedgerAsset.__table__
    existing = conn.execute(select(table).where(table.c.code == asset.code)).mappings().first()
    if existing is None:
        clash = conn.execute(select(table.c.code).where(table.c.chain_id == asset.chain_id, table.c.address == asset.address)).first()
        if asset.address is not None and clash is not None:
            raise IdempotencyConflict(f"token {asset.address} on chain {asset.chain_id} is already {clash.code}", field="code")
        conn.execute(table.insert().values(**asset.row()))
        return asset
    # The haircut is risk policy that operators change (``set_haircut``), not part of
    # what the asset is: a later registration keeps the stored haircut.
    for name, value in asset.row().items():
        if name != "haircut_bps" and existing[name] != value:
            raise IdempotencyConflict(
                f"asset {asset.code} is registered with {name}={existing[name]!r}, not {value!r}",
                field=name,
                asset=asset.code,
            )
    return Asset(**dict(existing))


def load(conn: Connection, code: str) -> Asset:
    check_text(code, "asset code", 120, "asset")
    row = conn.execute(select(LedgerAsset.__table__).where(LedgerAsset.__table__.c.code == code)).mappings().first()
    if row is None:
        raise UnknownAsset(f"unknown asset {code!r}", asset=code)
    return Asset(**dict(row))


def load_all(conn: Connection) -> dict[str, Asset]:
    rows = conn.execute(select(LedgerAsset.__table__).order_by(LedgerAsset.__table__.c.code)).mappings()
    return {r["code"]: Asset(**dict(r)) for r in rows}
