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
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Sequence

from eth_account import Account

from bridge.committee.config import ETH_ADDRESS, BridgeConfig
from bridge.committee.contract import CollateralBridge
from bridge.committee.crypto import address_of
from bridge.committee.messages import Committee
from bridge.committee.replica import Replica
from bridge.core.db import make_engine
from bridge.core.settings import CommitteeSettings, EvmSettings, IndexerSettings, Settings
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

    def settings(self, where: Path, store_url: str | None = None, database_url: str | None = None, confirmations: int = 1) -> Settings:
        """A daemon's settings: its data dir, this bridge's committee.json, the attestation store
        (default: the bridge database under ``where``)."""
        where.mkdir(parents=True, exist_ok=True)
        return Settings(
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
) -> TestBridge:
    """Deploy a bridge with a fresh n-of-m committee, a fresh TUSD token; write its committee.json."""
    where.mkdir(parents=True, exist_ok=True)
    deployer = Account.create()
    deployer_key = deployer.key.to_0x_hex()
    await AnvilControls(evm).set_balance(deployer.address, 100 * ONE_ETH)
    relayer = Account.create()
    await AnvilControls(evm).set_balance(relayer.address, 100 * ONE_ETH)
    keys = committee_keys(n, seed or where.name + str(os.getpid()))
    committee = Committee(0, tuple(address_of(k) for k in keys), m)
    token = await Erc20.deploy(evm, deployer_key, "TestToken", "Test USD", "TUSD", 6)
    caps = caps or {"ETH": 1_000 * ONE_ETH, "TUSD": 10**9 * TUSD}
    assets = {"ETH": (ETH_ADDRESS, 18), "TUSD": (token.address, 6)}
    contract = await CollateralBridge.deploy(
        evm, deployer_key, committee, guardians=[deployer.address], caps={assets[s][0]: c for s, c in caps.items()}, cap_window=cap_window, grace=grace
    )
    config = BridgeConfig(await evm.chain_id_int(), contract.address, await evm.height(), committee, grace, release_ttl, assets)
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
