"""The committee's daemons: attesters (one per committee key) and deliverers.

    bridgectl relayer run attester --key KEYFILE [--db URL] [--port N]
    bridgectl relayer run deliverer [--evm-key-env VAR] [--port N]

An attester follows the EVM chain through its own indexer at ``evm.confirmations``, folds the
bridge contract's events into its own replica (its own database: ``--db``, default
``<data dir>/attester-<address>.sqlite``) and, after every step of the fold, signs what the
replica justifies (``bridge.committee.attester``) into the attestation store.

A deliverer keeps the service's replica (the bridge database: what ``bridgectl ledger`` and
``bridgectl message`` read), opens a delivery for every message in the store, and steps the
deliveries on the runtime (``bridge.committee.delivery``).  Both serve ``/health`` and
``/metrics`` on the shared runner.
"""

from __future__ import annotations

import asyncio
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler
import time
from pathlib import Path

from bridge.committee.attester import Attester, RotationPlan
from bridge.committee.btc_deposits import BtcDepositWatcher
from bridge.committee.config import BridgeConfig, load_bridge_config
from bridge.committee.contract import CollateralBridge
from bridge.committee.crypto import address_of
from bridge.committee.delivery import Deliverer
from bridge.committee.oracle import PriceOracle, feeds_of
from bridge.committee.payouts import Payouts
from bridge.committee.proposals import ProposalStore
from bridge.committee.replica import Replica
from bridge.committee.store import AttestationStore
from bridge.core.db import make_engine
from bridge.core.errors import ConfigError
from bridge.core.retry import DEFAULT_RETRY, is_retryable
from bridge.core.settings import Settings
from bridge.runtime import Runtime
from chains.bitcoin import BitcoinAdapter
from chains.evm import EvmAdapter, EvmLogFilter
from chains.heads import wait_unless
from chains.indexer import Indexer
from relayers.prices import PosterJob, ReporterJob
from relayers.runner import Metrics, Runner

__all__ = ["AttesterDaemon", "DelivererDaemon", "ReplicaFollower", "run_attester", "run_deliverer"]

log = logging.getLogger("relayers.committee")

DEFAULT_ATTESTER_PORT = 8710
DEFAULT_DELIVERER_PORT = 8720


class ReplicaFollower:
    """A replica kept up with the chains by its indexers, stepped in order (the EVM fold first, so
    a Bitcoin deposit is matched against registrations folded up to now; a registration folded
    after the Bitcoin fold passed the paying block is rescanned for: ``btc_deposits``); ``after_step``
    runs after every round (and at every idle wake-up), outside the folds' transactions."""

    def __init__(self, name: str, evm: EvmAdapter, replica: Replica, config: BridgeConfig, settings: Settings, after_step=None) -> None:
        self.evm, self.replica = evm, replica
        self.after_step = after_step
        self.poll_interval = settings.indexer.poll_interval
        indexer = Indexer(
            name,
            evm,
            replica.engine,
            replica,
            selector=EvmLogFilter(address=[config.bridge, *([config.oracle.address] if config.oracle is not None else [])]),
            confirmations=settings.evm.confirmations,
            batch_blocks=settings.indexer.batch_blocks,
            poll_interval=settings.indexer.poll_interval,
            start_height=config.deploy_block,
        )
        self.indexers: list[Indexer] = [indexer]
        self.indexer = indexer

    def also(self, indexer: Indexer) -> None:
        """Step ``indexer`` after the EVM fold in every round."""
        self.indexers.append(indexer)

    async def run(self, stop: asyncio.Event) -> None:
        """Each round steps every indexer; one whose chain is down backs off alone (its errors
        logged when they change), so a Bitcoin node that is away never holds up the EVM fold
        and the signing that follows it."""
        failures: dict[str, int] = {}
        retry_at: dict[str, float] = {}
        logged: dict[str, str] = {}
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            heads: list[tuple[Indexer, int]] = []
            folded, busy = False, False
            for indexer in self.indexers:
                name = indexer.name
                if loop.time() < retry_at.get(name, 0.0):
                    continue
                try:
                    result = await indexer.step()
                except Exception as exc:
                    if not is_retryable(exc):
                        raise
                    failures[name] = failures.get(name, 0) + 1
                    retry_at[name] = loop.time() + max(DEFAULT_RETRY.delay(failures[name]), self.poll_interval)
                    if logged.get(name) != str(exc):
                        logged[name] = str(exc)
                        log.warning("%s: %s; retrying with backoff", name, exc)
                    continue
                failures.pop(name, None)
                retry_at.pop(name, None)
                if logged.pop(name, None) is not None:
                    log.info("%s: reading its chain again", name)
                folded = folded or indexer is self.indexer
                safe = None if result.head is None else result.head - indexer.confirmations + 1
                if result.caught_up or (result.kind == "indexed" and safe is not None and result.to_height >= safe):
                    heads.append((indexer, result.head if result.head is not None else -1))
                else:
                    busy = True
            if folded and self.after_step is not None:
                await self.after_step()
            if busy:
                continue
            if heads:
                await wait_unless(stop, _any_block(heads, self.poll_interval))
            else:
                await wait_unless(stop, asyncio.sleep(self.poll_interval))

    @property
    def height(self) -> int | None:
        return self.indexer.stats.get("height")


async def _any_block(heads: list[tuple[Indexer, int]], timeout: float) -> None:
    waits = [asyncio.ensure_future(indexer.adapter.wait_for_block(head, timeout)) for indexer, head in heads]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _config(settings: Settings) -> BridgeConfig:
    return load_bridge_config(settings.committee_config)


async def _connect(settings: Settings, config: BridgeConfig) -> EvmAdapter:
    evm = EvmAdapter.from_settings(settings.evm)
    try:
        chain_id = await evm.chain_id_int()
        if chain_id != config.chain_id:
            raise ConfigError(f"the EVM node is chain {chain_id}, the bridge config says {config.chain_id}")
        if not await evm.code(config.bridge):
            raise ConfigError(f"no bridge contract at {config.bridge} on chain {chain_id} (is this the devnet `devnet up` made?)")
    except BaseException:
        await evm.close()
        raise
    return evm


def read_key(path: str | Path) -> bytes:
    """A committee key file: 32 bytes as hex (``0x`` optional), one line."""
    try:
        raw = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}", path=str(path)) from None
    try:
        key = bytes.fromhex(raw.removeprefix("0x"))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"key file {path} must hold 32 bytes as hex", path=str(path))
    return key


class AttesterDaemon:
    name = "attester"

    def __init__(self, evm: EvmAdapter, attester: Attester, config: BridgeConfig, settings: Settings, btc: BitcoinAdapter | None = None) -> None:
        self.evm, self.attester, self.btc = evm, attester, btc
        self.clock = _ChainClock(evm)
        attester.clock = self.clock
        self.follower = ReplicaFollower(f"replica-{config.bridge.lower()}", evm, attester.replica, config, settings, after_step=self._sign)
        if btc is not None and attester.btc is not None:
            watcher = attester.btc
            self.follower.also(
                Indexer(
                    f"btc-deposits-{config.bridge.lower()}",
                    btc,
                    attester.replica.engine,
                    watcher,
                    selector=watcher.selector,
                    confirmations=settings.bitcoin.confirmations,
                    batch_blocks=settings.indexer.batch_blocks,
                    poll_interval=settings.indexer.poll_interval,
                    start_height=config.bitcoin_start,
                )
            )
        self.metrics = Metrics("bridge_attester")
        oracle = config.oracle
        self.reporter = (
            ReporterJob(
                attester.key,
                attester.store,
                feeds_of(oracle, evm),
                oracle.interval,
                domain=config.domain,
                committee=attester.signing_committee,
                max_age=oracle.max_age,
                source_max_age=oracle.source_max_age,
                chain=evm,
            )
            if oracle is not None
            else None
        )

    @classmethod
    async def from_settings(
        cls, settings: Settings, key: bytes, db_url: str | None = None, rotation: RotationPlan | None = None, approve_unpause: int | None = None
    ) -> "AttesterDaemon":
        config = _config(settings)
        evm = await _connect(settings, config)
        address = address_of(key)
        url = db_url or f"sqlite:///{settings.data_path / f'attester-{address.hex()[:8]}.sqlite'}"
        btc = BitcoinAdapter.from_settings(settings) if config.bitcoin is not None else None
        try:
            replica = Replica(make_engine(url), config.replica_config())
            store = AttestationStore(make_engine(settings.store_url))
            watcher = BtcDepositWatcher(replica, config.bitcoin, config.chain_id) if config.bitcoin is not None else None
            proposals = ProposalStore(store.engine) if config.bitcoin is not None else None
            attester = Attester(replica, store, key, rotation=rotation, approve_unpause=approve_unpause, btc=watcher, proposals=proposals)
        except BaseException:
            await evm.close()
            if btc is not None:
                await btc.close()
            raise
        log.info("attester 0x%s: replica %s, attestation store %s", address.hex(), url, _redact(settings.store_url))
        return cls(evm, attester, config, settings, btc)

    async def _sign(self) -> None:
        await self.clock.refresh()
        self.attester.btc_tip = self.follower.indexers[-1].stats.get("head") if len(self.follower.indexers) > 1 else None
        signed = await asyncio.to_thread(self.attester.sign_due)
        if signed:
            self.metrics.inc("signed", len(signed))
        tip = self.follower.indexers[-1].stats.get("head") if len(self.follower.indexers) > 1 else None
        if tip is not None and self.attester.proposals is not None:  # the Bitcoin tip its fold last read
            psbts = await asyncio.to_thread(self.attester.sign_proposals, tip)
            if psbts:
                self.metrics.inc("psbts_signed", len(psbts))
        self.metrics.set("replica_height", self.follower.height or 0)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.follower.run(stop))
                if self.reporter is not None:
                    group.create_task(self.reporter.run(stop))
        finally:
            await self.evm.close()
            if self.btc is not None:
                await self.btc.close()


class DelivererDaemon:
    name = "deliverer"

    def __init__(
        self,
        evm: EvmAdapter,
        follower: ReplicaFollower,
        deliverer: Deliverer,
        poll_interval: float,
        payouts: Payouts | None = None,
        btc: BitcoinAdapter | None = None,
        poster: PosterJob | None = None,
    ) -> None:
        self.evm, self.btc, self.follower, self.deliverer, self.payouts = evm, btc, follower, deliverer, payouts
        self.poster = poster
        self.poll_interval = poll_interval
        self.sweep_interval = 10 * poll_interval
        self.metrics = Metrics("bridge_deliverer")
        self.runtime = Runtime(
            deliverer,
            "delivery",
            chains={"evm": evm},
            observers=[follower.run, self._discover, self._cancel_expired, *([poster.run] if poster is not None else [])],
            poll_interval=poll_interval,
            max_concurrency=8,
            after_step=lambda _id: self._gauges(),
        )
        self.custody = (
            Runtime(payouts, "custody payout", chains={"bitcoin": btc}, poll_interval=poll_interval, max_concurrency=1)
            if payouts is not None and btc is not None
            else None
        )

    @classmethod
    async def from_settings(cls, settings: Settings, evm_key: str | None) -> "DelivererDaemon":
        config = _config(settings)
        evm = await _connect(settings, config)
        btc = BitcoinAdapter.from_settings(settings) if config.bitcoin is not None else None
        engine = make_engine(settings.db_url)
        replica = Replica(engine, config.replica_config())
        store = AttestationStore(make_engine(settings.store_url))
        follower = ReplicaFollower(f"replica-{config.bridge.lower()}", evm, replica, config, settings)
        deliverer = Deliverer(
            engine,
            store,
            replica,
            CollateralBridge(evm, config.bridge),
            evm_key,
            confirmations=settings.evm.confirmations,
            poll_interval=settings.committee.poll_interval,
        )
        payouts = None
        if btc is not None and config.bitcoin is not None:
            watcher = BtcDepositWatcher(replica, config.bitcoin, config.chain_id)
            follower.also(
                Indexer(
                    f"btc-deposits-{config.bridge.lower()}",
                    btc,
                    engine,
                    watcher,
                    selector=watcher.selector,
                    confirmations=settings.bitcoin.confirmations,
                    batch_blocks=settings.indexer.batch_blocks,
                    poll_interval=settings.indexer.poll_interval,
                    start_height=config.bitcoin_start,
                )
            )
            payouts = Payouts(engine, replica, watcher, ProposalStore(store.engine), btc, poll_interval=settings.committee.poll_interval)
        poster = None
        if config.oracle is not None:
            oracle = config.oracle
            poster = PosterJob(
                store,
                PriceOracle(evm, oracle.address),
                config.domain,
                evm_key,
                [f.asset for f in oracle.feeds.values()],
                oracle.interval,
                committees=replica.committees,
                max_age=oracle.max_age,
                max_spread_bps=oracle.max_spread_bps,
            )
        return cls(evm, follower, deliverer, settings.committee.poll_interval, payouts, btc, poster)

    async def _discover(self, halt: asyncio.Event) -> None:
        while not halt.is_set():
            try:
                new = await asyncio.to_thread(self.deliverer.discover)
                planned = await asyncio.to_thread(self.payouts.discover) if self.payouts is not None else []
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                log.warning("reading the attestation store: %s", exc)
                new, planned = [], []
            if new:
                self.metrics.inc("messages_seen", len(new))
                self.runtime.nudge(new)
            if planned and self.custody is not None:
                self.custody.nudge(planned)
            await wait_unless(halt, asyncio.sleep(self.poll_interval))

    async def _cancel_expired(self, halt: asyncio.Event) -> None:
        """Expired, unreleased EVM requests go back to their accounts (the contract lets anyone)."""
        while not halt.is_set():
            try:
                head = self.evm.announced_head() or await self.evm.head()
                cancelled = await self.deliverer.cancel_expired(head.timestamp)
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                log.warning("cancelling expired requests: %s", exc)
                cancelled = []
            if cancelled:
                self.metrics.inc("requests_cancelled", len(cancelled))
            await wait_unless(halt, asyncio.sleep(self.poll_interval * 5))

    def _plan_sweep(self) -> None:
        """The periodic sweep (an APScheduler job): deposits into custody before their refund path opens."""
        if self.payouts is not None and self.custody is not None:
            op = self.payouts.plan_sweep()
            if op is not None:
                log.info("planned %s", op)
                self.custody.nudge([op])

    def _gauges(self) -> None:
        for state, n in self.deliverer.counts().items():
            self.metrics.set(f"deliveries_{state}", n)
        self.metrics.set("replica_height", self.follower.height or 0)

    async def run(self, stop: asyncio.Event) -> None:
        scheduler = AsyncIOScheduler()
        if self.custody is not None:
            # Missed runs are not worth catching up: the next run sweeps whatever is there.
            scheduler.add_job(self._plan_sweep, "interval", seconds=self.sweep_interval, coalesce=True, max_instances=1, misfire_grace_time=None)
            scheduler.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.runtime.run(stop))
                if self.custody is not None:
                    group.create_task(self.custody.run(stop))
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=False)
            await self.evm.close()
            if self.btc is not None:
                await self.btc.close()


class _ChainClock:
    """Unix time as the contract sees it: the wall clock, or the newest block's time if later
    (a devnet whose time was moved ahead)."""

    def __init__(self, evm: EvmAdapter) -> None:
        self.evm = evm
        self.chain_time = 0

    async def refresh(self) -> None:
        head = self.evm.announced_head() or await self.evm.head()
        self.chain_time = max(self.chain_time, head.timestamp)

    def __call__(self) -> float:
        return max(time.time(), self.chain_time)


def _redact(url: str) -> str:
    """A database URL without its password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


async def run_attester(settings: Settings, key_file: str, *, db_url: str | None = None, host: str | None = None, port: int | None = None, **kw) -> int:
    """``bridgectl relayer run attester``: until SIGTERM/SIGINT."""
    daemon = await AttesterDaemon.from_settings(settings, read_key(key_file), db_url, **kw)
    return await Runner(daemon, settings, http_host=host or "127.0.0.1", http_port=port).run()


async def run_deliverer(settings: Settings, evm_key: str | None, *, host: str | None = None, port: int | None = None) -> int:
    """``bridgectl relayer run deliverer``: until SIGTERM/SIGINT."""
    daemon = await DelivererDaemon.from_settings(settings, evm_key)
    return await Runner(daemon, settings, http_host=host or "127.0.0.1", http_port=port).run()
