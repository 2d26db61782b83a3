"""One party's swap machinery, wired from settings: chain adapters, legs, store, engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.core.db import make_engine
from bridge.core.errors import ConfigError, InputError
from bridge.core.settings import Settings
from bridge.ledger import Ledger
from bridge.swaps.assets import AssetBook
from bridge.swaps.books import SwapBooks
from bridge.swaps.config import SwapConfig
from bridge.swaps.engine import LpPort, SwapEngine
from bridge.swaps.guard import sqlite_lock_file
from bridge.swaps.legs import BitcoinLeg, EvmLeg, Leg
from bridge.swaps.limits import check_lp_url
from bridge.swaps.observe import SwapObservers
from bridge.swaps.protocol import new_trader_swap
from bridge.swaps.store import SwapStore, SwapView
from chains.base import BITCOIN, EVM
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.evm import EvmAdapter
from htlc.evm import EvmHtlc


@dataclass
class Party:
    settings: Settings
    config: SwapConfig
    store: SwapStore
    legs: dict[str, Leg]
    engine: SwapEngine
    assets: AssetBook
    adapters: list[Any]

    @classmethod
    async def open(cls, settings: Settings, config: SwapConfig, lp: LpPort | None = None) -> "Party":
        if not config.btc_key or not config.evm_key or not config.htlc:
            missing = [k for k in ("btc_key", "evm_key", "htlc") if not getattr(config, k)]
            raise ConfigError(f"swap config lacks {', '.join(missing)} (file or BRIDGE_SWAP_* environment)")
        db = make_engine(settings.db_url)
        store = SwapStore(db)
        btc = BitcoinAdapter.from_settings(settings)
        evm = EvmAdapter.from_settings(settings.evm)
        await evm.chain_id_int()
        legs: dict[str, Leg] = {
            BITCOIN: BitcoinLeg(btc, BtcKey.from_hex(config.btc_key.removeprefix("0x")), config.btc_feerate, store.reserved_inputs),
            EVM: EvmLeg(evm, EvmHtlc(evm, config.htlc), config.evm_key, store.evm_nonces),
        }
        engine = SwapEngine(store, legs, config.policy(), {BITCOIN: 1, EVM: 1, **config.confirmations}, lp, config.poll_interval)
        books = SwapBooks(Ledger(db), await evm.chain_id_int())
        for symbol, token in config.tokens.items():
            books.register_token(token.address, token.decimals, symbol)
        engine.books = books
        engine.lock_file = lambda chain: sqlite_lock_file(settings.db_url, chain)
        # The indexers share the swap database: their events and cursors commit with the swaps' rows.
        engine.observers = SwapObservers(db, legs, config.poll_interval)
        engine.bump_after = config.fee_bump_after
        engine.idle_recheck = config.idle_recheck
        engine.lock_window = config.lp.lock_window
        return cls(settings, config, store, legs, engine, config.assets(), [btc, evm])

    async def start_swap(self, lp_url: str, sell_spec: str, buy_spec: str) -> SwapView:
        """Record a new swap as initiator (secret stored first); the engine does the rest.

        The LP URL and both amounts are checked before any chain is asked or anything is
        recorded: a refusal is an ``InputError`` naming the field (``lp``, ``sell``, ``buy``)."""
        lp_url = check_lp_url(lp_url)
        sell, sell_amount = self.assets.parse(sell_spec, "sell")
        buy, buy_amount = self.assets.parse(buy_spec, "buy")
        if sell.chain == buy.chain:
            raise InputError("an atomic swap crosses chains: sell and buy are on the same chain", field="buy")
        sell_now = await self.legs[sell.chain].now()
        buy_now = await self.legs[buy.chain].now()
        return new_trader_swap(
            self.store,
            lp_url,
            sell,
            sell_amount,
            buy,
            buy_amount,
            self.identity(sell.chain),
            self.identity(buy.chain),
            self.engine.policy.initiator_expiry(sell.chain, sell_now),
            {sell.chain: sell_now.height, buy.chain: buy_now.height},
        )

    def identity(self, chain: str) -> str:
        return self.legs[chain].identity

    async def __aenter__(self) -> "Party":
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        closing = getattr(self.engine.lp, "close", None)
        if closing is not None:
            await closing()
        for adapter in self.adapters:
            await adapter.close()
        self.store.engine.dispose()
