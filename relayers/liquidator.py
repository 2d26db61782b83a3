"""The liquidator: takes over accounts below the bridge's liquidation threshold with one EVM key.

    bridgectl relayer run liquidator --key KEYFILE [--db URL] [--port N]

It follows the bridge with a replica of its own (``--db``, default
``<data dir>/liquidator-<address>.sqlite``; never the deliverer's database, whose replica has
its own follower) to know which accounts owe something.  Whenever a new block or a step of its
replica comes (looked for every ``committee.poll_interval``), it reads the contract's
``health`` of each account whose replica positions include a negative one, and for each below
the contract's ``liquidationBps`` it records a liquidation (``bridge.committee.liquidation``)
before anything is sent; the runtime then sends ``liquidate`` from the key, the chain read again
before every send.  A price that does not count is logged and looked at again later.  Its key's
own margin must stay at least ``initialBps`` healthy once the positions are its own: deposit
collateral into it first.  ``/health`` and ``/metrics`` on the shared runner: accounts watched,
scans, liquidations sent, done (this key's), refused, not needed (taken elsewhere or
recovered), price refusals, and the operations per state.
"""

from __future__ import annotations

import asyncio
import logging

from eth_account import Account

from bridge.committee.config import BridgeConfig
from bridge.committee.contract import CollateralBridge
from bridge.committee.liquidation import Liquidator
from bridge.committee.replica import Replica
from bridge.core.db import make_engine
from bridge.core.errors import ConfigError, ContractReverted
from bridge.core.retry import is_retryable
from bridge.core.settings import Settings
from bridge.runtime import Runtime
from chains.evm import EvmAdapter
from chains.heads import wait_unless
from relayers.committee import ReplicaFollower, _config, _connect, read_key
from relayers.runner import Metrics, Runner

__all__ = ["DEFAULT_LIQUIDATOR_PORT", "LiquidatorDaemon", "run_liquidator"]

log = logging.getLogger("relayers.liquidator")

DEFAULT_LIQUIDATOR_PORT = 8730


class LiquidatorDaemon:
    name = "liquidator"

    def __init__(self, evm: EvmAdapter, follower: ReplicaFollower, liquidator: Liquidator, config: BridgeConfig, poll_interval: float) -> None:
        self.evm, self.follower, self.liquidator, self.config = evm, follower, liquidator, config
        self.replica: Replica = follower.replica
        self.poll_interval = poll_interval
        self.metrics = Metrics("bridge_liquidator")
        liquidator.count = self.metrics.inc
        self.runtime = Runtime(
            liquidator,
            "liquidation",
            chains={"evm": evm},
            observers=[follower.run, self._scan],
            poll_interval=poll_interval,
            max_concurrency=4,
            after_step=lambda _id: self._gauges(),
        )

    @classmethod
    async def from_settings(cls, settings: Settings, key: bytes, db_url: str | None = None) -> "LiquidatorDaemon":
        config = _config(settings)
        if config.oracle is None:
            raise ConfigError("this bridge has no price oracle (committee.json has no `oracle`): nobody can borrow, nobody is liquidated", field="oracle")
        evm = await _connect(settings, config)
        address = Account.from_key(key).address
        url = db_url or f"sqlite:///{settings.data_path / f'liquidator-{address[2:10].lower()}.sqlite'}"
        try:
            bridge = CollateralBridge(evm, config.bridge)
            threshold = (await bridge.margin_terms())["liquidationBps"]
            if threshold != config.margin.liquidation_bps:
                said = config.margin.liquidation_bps
                log.warning("the contract liquidates below %s bps, committee.json says %s: the contract's figure is used", threshold, said)
            replica = Replica(make_engine(url), config.replica_config())
            follower = ReplicaFollower(f"replica-{config.bridge.lower()}", evm, replica, config, settings)
            liquidator = Liquidator(
                replica.engine,
                bridge,
                "0x" + key.hex(),
                threshold,
                confirmations=settings.evm.confirmations,
                poll_interval=settings.committee.poll_interval,
                symbol_of=config.symbol_of,
            )
        except BaseException:
            await evm.close()
            raise
        log.info("liquidator %s: replica %s, liquidating below %s bps", address, url, threshold)
        return cls(evm, follower, liquidator, config, settings.committee.poll_interval)

    def owing(self) -> list[str]:
        """The accounts whose replica positions include a debt (never this key's own)."""
        return sorted({owner for (owner, _asset), p in self.replica.positions().items() if p < 0 and owner != self.liquidator.address})

    async def _scan(self, halt: asyncio.Event) -> None:
        """Every poll: the chain's health of each owing account, once per new block or replica step
        (the contract's figure can change with nothing else)."""
        seen = None
        while not halt.is_set():
            try:
                head = self.evm.announced_head() or await self.evm.head()
                owing = await asyncio.to_thread(self.owing)
                key = (head.hash, self.follower.height, tuple(owing))
                if key != seen:
                    self.metrics.set("accounts_watched", len(owing))
                    new = await self.liquidator.scan(owing, head.height)
                    self.metrics.inc("scans")
                    seen = key
                    if new:
                        self.runtime.nudge(new)
            except ContractReverted as exc:  # a refusal other than a price's: said, and looked at again
                log.warning("reading health on chain: %s", exc.message)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                log.warning("scanning: %s; trying again", exc)
            await wait_unless(halt, asyncio.sleep(self.poll_interval))

    def _gauges(self) -> None:
        for state, n in self.liquidator.counts().items():
            self.metrics.set(f"operations_{state}", n)
        self.metrics.set("replica_height", self.follower.height or 0)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.runtime.run(stop)
        finally:
            await self.evm.close()
            self.replica.engine.dispose()


async def run_liquidator(settings: Settings, key_file: str, *, db_url: str | None = None, host: str | None = None, port: int | None = None) -> int:
    """``bridgectl relayer run liquidator``: until SIGTERM/SIGINT."""
    daemon = await LiquidatorDaemon.from_settings(settings, read_key(key_file), db_url)
    return await Runner(daemon, settings, http_host=host or "127.0.0.1", http_port=port).run()
