"""The committee's declared scenario: a bridge of the test's own, its committee, its replicas.

    bridge = await own_bridge(evm, tmp_path, n=4, m=3)         # deployed on the session Anvil
    settings = bridge.settings(tmp_path / "service")            # committee.json, store, DB
    async with attesters(bridge, settings, [0, 1, 2]) as running:       # in-process daemons
        async with deliverer(bridge, settings) as d: ...
    async with attester_process(bridge, settings, 3) as proc: ...      # a real OS process

Each test gets its own contract and committee (fresh request nonces, fresh caps), so tests on
the shared Anvil never see each other's messages.  ``bridge.user(wei)`` makes a funded account
with TUSD.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator, Sequence

from eth_account import Account

from bridge.committee.btc_deposits import BtcTerms
from bridge.committee.config import ETH_ADDRESS, BridgeConfig
from bridge.committee.contract import CollateralBridge, MarginTerms
from bridge.committee.deploy import deploy_bridge
from bridge.committee.messages import BTC_ASSET
from bridge.committee.oracle import PRICE_DECIMALS, FeedConfig, MockAggregator
from bridge.committee.crypto import address_of
from bridge.committee.messages import Committee
from bridge.committee.replica import Replica
from bridge.core.db import make_engine
from bridge.core.settings import BitcoinSettings, CommitteeSettings, EvmSettings, IndexerSettings, Settings
from bridge.custody.scripts import CustodyPolicy, refund_pubkey_of_evm_key
from chains.evm import EvmAdapter
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from htlc.evm import Erc20
from relayers.committee import AttesterDaemon, DelivererDaemon

REPO_ROOT = Path(__file__).resolve().parents[2]
TUSD = 10**6


@dataclass
class TestBridge:
    """One bridge contract with its committee keys, on the session Anvil."""

    evm: EvmAdapter
    contract: CollateralBridge
    config: BridgeConfig
    keys: list[bytes]  # committee keys, in signer order
    token: Erc20
    deployer: str
    dir: Path
    relayer_key: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.dir / "committee.json"

    @property
    def committee(self) -> Committee:
        return self.config.committee

    def settings(
        self, where: Path, store_url: str | None = None, database_url: str | None = None, confirmations: int = 1, regtest=None, btc_confirmations: int = 1
    ) -> Settings:
        """A daemon's settings: its data dir, this bridge's committee.json, the attestation store
        (default: the bridge database under ``where``); with ``regtest``, that Bitcoin node."""
        where.mkdir(parents=True, exist_ok=True)
        bitcoin = BitcoinSettings(confirmations=btc_confirmations)
        if regtest is not None:
            user, password = regtest.rpc_auth
            host, port = regtest.rpc_url.removeprefix("http://").rstrip("/").split(":")
            bitcoin = BitcoinSettings(rpc_host=host, rpc_port=int(port), rpc_user=user, rpc_password=password, confirmations=btc_confirmations)
        return Settings(
            bitcoin=bitcoin,
            data_dir=str(where),
            database_url=database_url or f"sqlite:///{where / 'bridge.sqlite'}",
            evm=EvmSettings(url=self.evm.url, confirmations=confirmations),
            indexer=IndexerSettings(poll_interval=0.1),
            committee=CommitteeSettings(config=str(self.config_path), store_url=store_url, poll_interval=0.1),
        )

    def key_file(self, index: int) -> Path:
        path = self.dir / f"attester-{index}.key"
        if not path.exists():
            path.write_text("0x" + self.keys[index].hex() + "\n")
        return path

    async def user(self, wei: int = 10 * ONE_ETH, tusd: int = 1_000_000 * TUSD) -> tuple[str, str]:
        """A fresh account with ``wei`` and ``tusd`` (approved to the bridge): ``(address, key)``."""
        acct = Account.create()
        key = acct.key.to_0x_hex()
        await AnvilControls(self.evm).set_balance(acct.address, wei + ONE_ETH)
        if tusd:
            await self.evm.wait_for_receipt(await self.token.mint(self.deployer, acct.address, tusd))
            await self.evm.wait_for_receipt(await self.token.approve(key, self.contract.address, 2**256 - 1))
        return acct.address, key

    def replica(self, db_url: str) -> Replica:
        return Replica(make_engine(db_url), self.config.replica_config())


def committee_keys(n: int, seed: str) -> list[bytes]:
    """``n`` keys, sorted by address (the signer order)."""
    import hashlib

    keys = [hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(n)]
    return sorted(keys, key=address_of)


async def own_bridge(
    evm: EvmAdapter,
    where: Path,
    n: int = 4,
    m: int = 3,
    *,
    seed: str | None = None,
    grace: int = 3600,
    release_ttl: int = 3600,
    caps: dict[str, int] | None = None,
    cap_window: int = 86_400,
    btc_refund_delay: int = 20,
    min_deposit: int = 10_000,
    btc_start: int = 0,
    prices: dict[str, int] | None = None,
    margin: MarginTerms | None = None,
) -> TestBridge:
    """Deploy a bridge with a fresh n-of-m committee, a fresh TUSD token; write its committee.json.
    With ``prices`` (symbol -> whole USD, e.g. ``{"BTC": 95_000, "ETH": 3_500, "TUSD": 1}``) an
    oracle over fresh feeds at those prices, so margin can be borrowed and liquidated (``margin``:
    the terms, default the devnet's)."""
    where.mkdir(parents=True, exist_ok=True)
    deployer = Account.create()
    deployer_key = deployer.key.to_0x_hex()
    await AnvilControls(evm).set_balance(deployer.address, 100 * ONE_ETH)
    relayer = Account.create()
    await AnvilControls(evm).set_balance(relayer.address, 100 * ONE_ETH)
    keys = committee_keys(n, seed or f"{where}-{os.getpid()}")  # a committee of its own per test
    committee = Committee(0, tuple(address_of(k) for k in keys), m)
    token = await Erc20.deploy(evm, deployer_key, "TestToken", "Test USD", "TUSD", 6)
    caps = caps or {"ETH": 1_000 * ONE_ETH, "TUSD": 10**9 * TUSD}
    assets = {"ETH": (ETH_ADDRESS, 18), "TUSD": (token.address, 6)}
    feeds = None
    if prices is not None:
        asset_of = {"BTC": BTC_ASSET, "ETH": bytes(20), "TUSD": bytes.fromhex(token.address[2:])}
        feeds = {}
        for symbol, usd in prices.items():
            aggregator = await MockAggregator.deploy(evm, deployer_key, f"{symbol} / USD", usd * 10**PRICE_DECIMALS)
            feeds[symbol] = FeedConfig(asset_of[symbol], aggregator.address)
    margin = replace(
        margin or MarginTerms(liquidation_bps=11_000, initial_bps=12_500, max_price_age=3600, haircuts={"BTC": 2000, "ETH": 1000}),
        release_ttl=release_ttl,
        min_btc_withdrawal=min_deposit,
    )
    contract, oracle = await deploy_bridge(
        evm, deployer_key, committee, [deployer.address], assets, caps, grace=grace, terms=margin, cap_window=cap_window, feeds=feeds
    )
    policy = CustodyPolicy.of([refund_pubkey_of_evm_key(k) for k in keys], m, btc_refund_delay, "regtest")
    terms = BtcTerms(policy, min_deposit=min_deposit)
    config = BridgeConfig(
        await evm.chain_id_int(), contract.address, await evm.height(), committee, grace, release_ttl, assets, terms, btc_start, oracle=oracle, margin=margin
    )
    (where / "committee.json").write_text(json.dumps(config.to_json(), indent=2))
    return TestBridge(evm, contract, config, keys, token, deployer_key, where, relayer.key.to_0x_hex())


# --- daemons in this process ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def attesters(bridge: TestBridge, settings: Settings, indices: Sequence[int], **kw) -> AsyncIterator[list[AttesterDaemon]]:
    """Attester daemons for these committee keys, each with its own replica under the data dir."""
    data = Path(settings.data_dir)
    daemons = [await AttesterDaemon.from_settings(settings, bridge.keys[i], db_url=f"sqlite:///{data / f'attester-{i}.sqlite'}", **kw) for i in indices]
    async with _running(daemons) as running:
        yield running


@contextlib.asynccontextmanager
async def deliverer(bridge: TestBridge, settings: Settings, key: str | None = None) -> AsyncIterator[DelivererDaemon]:
    daemon = await DelivererDaemon.from_settings(settings, key or bridge.relayer_key)
    async with _running([daemon]) as running:
        yield running[0]


@contextlib.asynccontextmanager
async def _running(daemons: list) -> AsyncIterator[list]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(d.run(stop), name=d.name) for d in daemons]
    try:
        yield daemons
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=15)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()


# --- daemons as OS processes ----------------------------------------------------------------------


def daemon_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that points ``bridgectl`` at these settings."""
    env = dict(os.environ)
    env.update(
        {
            "BRIDGE_DATA_DIR": settings.data_dir,
            "BRIDGE_DATABASE_URL": settings.db_url,
            "BRIDGE_EVM__URL": settings.evm.url or "",
            "BRIDGE_EVM__CONFIRMATIONS": str(settings.evm.confirmations),
            "BRIDGE_INDEXER__POLL_INTERVAL": str(settings.indexer.poll_interval),
            "BRIDGE_COMMITTEE__CONFIG": str(settings.committee_config),
            "BRIDGE_COMMITTEE__POLL_INTERVAL": str(settings.committee.poll_interval),
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    if settings.committee.store_url:
        env["BRIDGE_COMMITTEE__STORE_URL"] = settings.committee.store_url
    b = settings.bitcoin
    env.update({"BRIDGE_BITCOIN__RPC_HOST": b.rpc_host, "BRIDGE_BITCOIN__RPC_PORT": str(b.rpc_port), "BRIDGE_BITCOIN__CONFIRMATIONS": str(b.confirmations)})
    if b.rpc_user:
        env.update({"BRIDGE_BITCOIN__RPC_USER": b.rpc_user, "BRIDGE_BITCOIN__RPC_PASSWORD": b.rpc_password or ""})
    env.update(extra or {})
    return env


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m bridge <args>`` (bridgectl) as its own process group, its output in ``log``."""
    handle = open(log, "ab")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([sys.executable, "-m", "bridge", *args], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    proc._log_handle = handle  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, kill: bool = False, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    proc._log_handle.close()  # type: ignore[attr-defined]
    return proc.returncode


# --- a shared store and the daemons as script processes (the Byzantine and replica tests) ----------
#
#     with shared_store(tmp_path) as store_url, fleet(bridge, tmp_path / "fleet", store_url, regtest) as f:
#         f.start_attester(0); f.start_byzantine(1, forge=[...]); f.start_deliverer()
#         await f.wait_heights(await evm.height())
#         f.replica("attester-0").balances(); f.store.evidence(); f.deliverer_reader().view(mid)
#
# ``tests/support/committee_proc.py`` runs each daemon (``relayers.committee.run_attester`` and
# ``run_deliverer``, or ``support.byzantine``) with the settings of ``daemon_env``.

import logging  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
from typing import Iterator  # noqa: E402
from urllib.parse import quote  # noqa: E402

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from bridge.committee.delivery import Deliverer  # noqa: E402
from bridge.committee.store import AttestationStore  # noqa: E402
from bridge.core.db import POSTGRES_TEST_URL, postgres_available  # noqa: E402
from bridge.core.testing import wait_until  # noqa: E402

PROC_SCRIPT = Path(__file__).with_name("committee_proc.py")
DELIVERER_KEY_ENV = "COMMITTEE_TEST_RELAYER_KEY"
_log = logging.getLogger("test.committee")


@contextlib.contextmanager
def shared_store(where: Path) -> Iterator[str]:
    """The URL of a fresh attestation store for several processes: a fresh schema of the test
    PostgreSQL when it answers (dropped after a passing body, kept for a look after a failing
    one), else one SQLite file under ``where`` (also with ``COMMITTEE_TEST_STORE=sqlite``)."""
    if os.environ.get("COMMITTEE_TEST_STORE") == "sqlite" or postgres_available() is not None:
        where.mkdir(parents=True, exist_ok=True)
        _log.info("declare: attestation store on SQLite (no PostgreSQL, or COMMITTEE_TEST_STORE=sqlite)")
        yield f"sqlite:///{where / 'store.sqlite'}"
        return
    schema = f"store_{secrets.token_hex(6)}"
    admin = make_engine(POSTGRES_TEST_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    _log.info("declare: attestation store in PostgreSQL schema %s", schema)
    passed = False
    try:
        yield f"{POSTGRES_TEST_URL}?options={quote(f'-csearch_path={schema}')}"
        passed = True
    finally:
        if passed:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        else:
            _log.warning("kept PostgreSQL schema %s of the failed run", schema)
        admin.dispose()


class DaemonDied(RuntimeError):
    """A daemon process ended that nobody stopped (not an AssertionError: ``wait_until`` stops at once)."""


@dataclass
class Fleet:
    """Committee daemons of one bridge as OS processes, each with its data dir under ``where``:
    ``attester-<i>`` (its replica in ``replica.sqlite``) and ``service`` (the deliverer: the
    service replica and the deliveries in ``bridge.sqlite``); logs in ``<name>.log``."""

    bridge: TestBridge
    where: Path
    store_url: str
    #: The Bitcoin node the attesters watch for custody deposits (``regtest`` fixture), if any.
    regtest: object = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _engines: dict[str, Engine] = field(default_factory=dict)
    _replicas: dict[str, Replica] = field(default_factory=dict)
    _store: AttestationStore | None = None

    # --- where things are ---

    def settings(self, name: str) -> Settings:
        return self.bridge.settings(self.where / name, store_url=self.store_url, regtest=self.regtest)

    def db_url(self, name: str) -> str:
        """The replica database of daemon ``name`` (``attester-<i>`` or ``service``)."""
        if name == "service":
            return self.settings("service").db_url
        return f"sqlite:///{self.where / name / 'replica.sqlite'}"

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = make_engine(self.db_url(name))
        return self._engines[name]

    def replica(self, name: str) -> Replica:
        """A reader of daemon ``name``'s replica (open it once the daemon created its tables)."""
        if name not in self._replicas:
            self._replicas[name] = Replica(self.engine(name), self.bridge.config.replica_config())
        return self._replicas[name]

    @property
    def store(self) -> AttestationStore:
        if self._store is None:
            self._store = AttestationStore(make_engine(self.store_url))
        return self._store

    def deliverer_reader(self) -> Deliverer:
        """The deliveries as the deliverer process wrote them (read-only: no key)."""
        return Deliverer(self.engine("service"), self.store, self.replica("service"), self.bridge.contract, None)

    # --- processes ---

    def _start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        assert self.running(name) is False, f"{name} is running already"
        settings = self.settings("service" if name == "deliverer" else name)
        self.ports[name] = _free_port()
        args = [*args, "--port", str(self.ports[name])]
        env = daemon_env(settings, {"BRIDGE_LOG_LEVEL": "INFO", **(extra_env or {})})
        log = open(self.where / f"{name}.log", "ab")  # noqa: SIM115 - closed by stop()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n===== {stamp} start #{self.starts.get(name, 0) + 1} of {name}: {' '.join(args)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, str(PROC_SCRIPT), *args], env=env, cwd=settings.data_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        proc._log_handle = log  # type: ignore[attr-defined]
        self.procs[name] = proc
        self.starts[name] = self.starts.get(name, 0) + 1
        return proc

    def start_attester(self, index: int) -> subprocess.Popen:
        name = f"attester-{index}"
        return self._start(name, ["attester", "--key", str(self.bridge.key_file(index)), "--db", self.db_url(name)])

    def start_byzantine(self, index: int, forge: Sequence[tuple[str, str, int]] = (), legit: bool = False, equivocate: bool = True, garbage: bool = True):
        """Committee member ``index`` as ``support.byzantine``: ``forge`` is (account, symbol, amount)."""
        name = f"attester-{index}"
        args = ["byzantine", "--key", str(self.bridge.key_file(index)), "--db", self.db_url(name)]
        for account, symbol, amount in forge:
            args += ["--forge", f"{account}:{symbol}:{amount}"]
        args += ["--legit"] if legit else []
        args += [] if equivocate else ["--no-equivocate"]
        args += [] if garbage else ["--no-garbage"]
        return self._start(name, args)

    def start_byzantine_forging(
        self, index: int, forge: Sequence[tuple[str, str, int]], requests: Sequence[tuple[str, str, int]], legit: bool = False
    ) -> subprocess.Popen:
        """``start_byzantine`` whose replica also folds ``requests`` (account, symbol, amount): withdrawal
        requests the chain refused, forged at nonces ``support.byzantine.FORGED_NONCE`` + their position."""
        name = f"attester-{index}"
        args = ["byzantine", "--key", str(self.bridge.key_file(index)), "--db", self.db_url(name)]
        for account, symbol, amount in forge:
            args += ["--forge", f"{account}:{symbol}:{amount}"]
        for account, symbol, amount in requests:
            args += ["--forge-request", f"{account}:{symbol}:{amount}"]
        args += ["--legit"] if legit else []
        return self._start(name, args)

    def start_deliverer(self) -> subprocess.Popen:
        return self._start("deliverer", ["deliverer", "--evm-key-env", DELIVERER_KEY_ENV], {DELIVERER_KEY_ENV: self.bridge.relayer_key})

    def running(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop(self, name: str, kill: bool = False) -> int:
        """SIGTERM (or SIGKILL) daemon ``name`` and wait for it; its exit code."""
        proc = self.procs.pop(name)
        return stop_process(proc, kill=kill)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def check_alive(self) -> None:
        """``DaemonDied`` (with the end of its log) for a daemon that ended on its own."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.where / f"{name}.log").read_text(errors="replace")[-3000:]
                raise DaemonDied(f"{name} exited with {proc.returncode}:\n{tail}")

    # --- waiting ---

    async def up(self, name: str) -> bool:
        """Whether daemon ``name`` answers ``/health`` (it runs: settings read, databases open)."""
        self.check_alive()
        if not self.running(name):
            return False
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
                async with http.get(f"http://127.0.0.1:{self.ports[name]}/health") as resp:
                    return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def wait_up(self, names: Sequence[str] | None = None, timeout: float = 60.0) -> None:
        """Until every daemon of ``names`` (default: every running one) answers ``/health``."""
        names = list(self.procs) if names is None else list(names)

        async def all_up() -> bool:
            return all([await self.up(n) for n in names])

        await wait_until(all_up, timeout=timeout, interval=0.1, what=f"{', '.join(names)} up")

    def height(self, name: str) -> int | None:
        """How far daemon ``name``'s replica folded (its indexer cursor), None before it started."""
        try:
            with self.engine(name).connect() as conn:
                row = conn.execute(text("SELECT height FROM indexer_cursor WHERE name = :n"), {"n": f"replica-{self.bridge.config.bridge.lower()}"}).first()
        except Exception:  # noqa: BLE001 - no table yet
            return None
        return None if row is None else int(row[0])

    async def wait_heights(self, names: Sequence[str], height: int, timeout: float = 30.0) -> None:
        """Until every replica of ``names`` folded ``height``."""

        def folded() -> bool:
            self.check_alive()
            return all((self.height(n) or -1) >= height for n in names)

        await wait_until(folded, timeout=timeout, interval=0.1, what=f"replicas {', '.join(names)} at height {height}")

    async def wait(self, predicate, timeout: float = 30.0, what: str | None = None):
        """``wait_until`` that stops at once when a daemon died."""

        async def check():
            self.check_alive()
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            return value

        return await wait_until(check, timeout=timeout, interval=0.1, what=what)

    def close(self) -> None:
        self.stop_all()
        for engine in self._engines.values():
            engine.dispose()
        if self._store is not None:
            self._store.engine.dispose()


@contextlib.contextmanager
def fleet(bridge: TestBridge, where: Path, store_url: str, regtest=None) -> Iterator[Fleet]:
    """A ``Fleet``; every daemon it started is stopped at the end, whatever happened."""
    where.mkdir(parents=True, exist_ok=True)
    f = Fleet(bridge, where, store_url, regtest)
    try:
        yield f
    finally:
        f.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ledger_totals(engine: Engine) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """``(owner, kind, asset) -> (posted balance, pending debits, pending credits)`` of every
    account of a replica (its custody accounts included)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT a.owner, a.kind, a.asset, b.credits_posted, b.debits_posted, b.debits_pending, b.credits_pending "
                "FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id ORDER BY a.owner, a.kind, a.asset"
            )
        ).all()
    return {(o, k, a): (int(cp) - int(dp), int(pd), int(pc)) for o, k, a, cp, dp, pd, pc in rows}


# --- Bitcoin custody views of a fleet (the payout crash test) ---------------------------------------


def btc_cursor_height(f: Fleet, name: str) -> int | None:
    """How far daemon ``name``'s Bitcoin fold (deposits, custody coins and spends) got, None before it started."""
    try:
        with f.engine(name).connect() as conn:
            row = conn.execute(text("SELECT height FROM indexer_cursor WHERE name = :n"), {"n": f"btc-deposits-{f.bridge.config.bridge.lower()}"}).first()
    except Exception:  # noqa: BLE001 - no table yet
        return None
    return None if row is None else int(row[0])


def custody_coin_rows(engine: Engine) -> list[tuple]:
    """Every committee coin a replica recorded (``custody_coin``), by outpoint: what two replicas at
    the same Bitcoin height must agree on."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text("SELECT outpoint, amount, witness_script, kind, account, block_height, spent_by, spent_height FROM custody_coin ORDER BY outpoint")
            )
        ]


def custody_ops(engine: Engine) -> dict[str, str]:
    """``op id -> state`` of the deliverer's custody payouts and sweeps (``custody_payout``); empty before the table exists."""
    try:
        with engine.connect() as conn:
            return {i: s for i, s in conn.execute(text("SELECT id, state FROM custody_payout"))}
    except Exception:  # noqa: BLE001 - no table yet
        return {}


# --- the margin book the contract keeps (requests are taken from it at once) ------------------------

from typing import Awaitable  # noqa: E402

from bridge.core.errors import ContractReverted  # noqa: E402


async def chain_refuses(bridge: TestBridge, request: Awaitable, reason: str = "InsufficientMargin") -> ContractReverted:
    """Await a withdrawal request the contract must refuse: it reverts with ``reason`` and takes no
    request nonce (no ``WithdrawalRequested``: no replica has anything to hold).  The revert."""
    nonce = await bridge.contract.request_nonce()
    try:
        await request
    except ContractReverted as exc:
        assert exc.reason == reason, f"refused with {exc.reason!r}, not {reason!r}: {exc}"
        refused = exc
    else:
        raise AssertionError(f"the contract took a request it should refuse with {reason}")
    assert await bridge.contract.request_nonce() == nonce, "a refused request took a nonce"
    return refused
