"""`bridgectl devnet up | down | status | reset`: both chains on one command.

Layout of the data dir::

    devnet.json        the descriptor: RPC URLs, auth, chain ids, funded keys, pids
    anvil/             Anvil's state dump, pid file and log
    bitcoin/           the regtest node's datadir (chain, .cookie), pid file and log

``up`` is idempotent: nodes that already answer are left alone and funding
happens once, on an empty chain.  ``down`` stops only the pids recorded here.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.core.errors import DevnetError
from bridge.core.settings import Settings
from devnets import keys as testkeys
from devnets.anvil import Anvil, rpc as evm_rpc
from devnets.bitcoin_node import BitcoinNode
from devnets.process import pid_alive, port_open, read_pid, tail

log = logging.getLogger("devnets")

DESCRIPTOR = "devnet.json"


#: What the command line of a process we started contains, per node.
_SIGNATURES = {"anvil": ("anvil",), "bitcoin": ("devnets.regtest", "bitcoind")}


def _is_ours(name: str, pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return True  # no /proc (macOS): trust the pid file
    return any(sig in cmdline for sig in _SIGNATURES[name])


@dataclass
class Devnet:
    data_dir: Path
    anvil_port: int = 8545
    bitcoin_port: int = 18443
    chain_id: int = 31337
    hardfork: str = "prague"
    anvil_binary: str | None = None
    bitcoin_backend: str = "embedded"
    bitcoind_path: str | None = None
    rpc_user: str | None = None
    rpc_password: str | None = None
    _anvil: Anvil | None = field(default=None, repr=False)
    _bitcoin: BitcoinNode | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "Devnet":
        from devnets.anvil import find_anvil

        binary = settings.evm.anvil_path
        if settings.evm.anvil_from_path and not binary:
            binary = find_anvil(from_path=True)
        kwargs = dict(
            data_dir=settings.data_path,
            anvil_port=settings.evm.rpc_port,
            bitcoin_port=settings.bitcoin.rpc_port,
            chain_id=settings.evm.chain_id,
            hardfork=settings.evm.hardfork,
            anvil_binary=binary,
            bitcoin_backend=settings.bitcoin.backend,
            bitcoind_path=settings.bitcoin.bitcoind_path,
            rpc_user=settings.bitcoin.rpc_user,
            rpc_password=settings.bitcoin.rpc_password,
        )
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        devnet = cls(**kwargs)
        # Once a devnet exists, its recorded ports and backend win over defaults,
        # so `status`/`down` find what `up` started.
        recorded = devnet.read_descriptor()
        if recorded:
            devnet.anvil_port = overrides.get("anvil_port") or recorded["evm"]["port"]
            devnet.bitcoin_port = overrides.get("bitcoin_port") or recorded["bitcoin"]["port"]
            devnet.bitcoin_backend = overrides.get("bitcoin_backend") or recorded["bitcoin"]["backend"]
        return devnet

    # --- parts --------------------------------------------------------------

    @property
    def descriptor_path(self) -> Path:
        return Path(self.data_dir) / DESCRIPTOR

    @property
    def anvil(self) -> Anvil:
        if self._anvil is None:
            self._anvil = Anvil(Path(self.data_dir) / "anvil", port=self.anvil_port, chain_id=self.chain_id, hardfork=self.hardfork, binary=self.anvil_binary)
        return self._anvil

    @property
    def bitcoin(self) -> BitcoinNode:
        if self._bitcoin is None:
            self._bitcoin = BitcoinNode(
                Path(self.data_dir) / "bitcoin",
                port=self.bitcoin_port,
                backend=self.bitcoin_backend,
                bitcoind_path=self.bitcoind_path,
                rpc_user=self.rpc_user,
                rpc_password=self.rpc_password,
            )
        return self._bitcoin

    def read_descriptor(self) -> dict | None:
        try:
            return json.loads(self.descriptor_path.read_text())
        except FileNotFoundError:
            return None

    # --- commands -----------------------------------------------------------

    def up(self, progress=print) -> dict:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        for name, node in (("anvil", self.anvil), ("bitcoin", self.bitcoin)):
            port = node.port
            if node.running_pid() is None and port_open("127.0.0.1", port):
                raise DevnetError(
                    f"port {port} for {name} is already taken by a process this devnet did not start; choose another port (see `bridgectl devnet up --help`)"
                )
        t0 = time.monotonic()

        def evm_side() -> dict:
            pid = self.anvil.start()
            progress(f"anvil      up at {self.anvil.url} (pid {pid}, chain id {self.chain_id}, {self.hardfork})")
            return self._deploy(self.anvil.url, progress)

        def bitcoin_side() -> int:
            pid = self.bitcoin.start()
            progress(f"bitcoin    up at {self.bitcoin.rpc_url} (pid {pid}, {self.bitcoin_backend} regtest node)")
            self._fund_bitcoin(progress)
            return pid

        # The chains are independent: each is started and set up beside the other (half the wait).
        with ThreadPoolExecutor(2, thread_name_prefix="devnet-up") as pool:
            evm, btc = pool.submit(evm_side), pool.submit(bitcoin_side)
            contracts, btc_pid = evm.result(), btc.result()
        descriptor = self._describe(self.anvil.running_pid(), btc_pid)
        descriptor["contracts"] = contracts
        self.descriptor_path.write_text(json.dumps(descriptor, indent=2) + "\n")
        progress(f"descriptor {self.descriptor_path} ({time.monotonic() - t0:.1f}s)")
        return descriptor

    def _fund_bitcoin(self, progress) -> None:
        height = self.bitcoin.rpc("getblockcount")
        if height > 0:
            return  # funded on the first `up`; a second `up` changes nothing
        btc_keys = testkeys.btc_test_keys()
        for key in btc_keys:
            self.bitcoin.rpc("generatetoaddress", testkeys.BTC_BLOCKS_PER_KEY, key.address)
        # Mature every coinbase above: 100 more blocks to the miner key.
        self.bitcoin.rpc("generatetoaddress", testkeys.COINBASE_MATURITY, btc_keys[0].address)
        progress(f"bitcoin    funded {len(btc_keys)} keys, height {self.bitcoin.rpc('getblockcount')}")

    def _deploy(self, rpc_url: str, progress) -> dict:
        import asyncio

        from devnets.deploy import deploy_contracts

        recorded = (self.read_descriptor() or {}).get("contracts")
        accounts = testkeys.as_dicts(testkeys.evm_test_keys())
        contracts = asyncio.run(deploy_contracts(rpc_url, accounts, recorded, Path(self.data_dir)))
        if contracts is not recorded:
            tokens = ", ".join(f"{sym} {t['address']}" for sym, t in contracts["tokens"].items())
            progress(f"evm        deployed HTLC {contracts['htlc']}, token {tokens} (minted to every test account)")
            progress(f"evm        bridge {contracts['bridge']} with the devnet committee (3 of 4; committee.json, committee/attester-*.key)")
        return contracts

    def _describe(self, anvil_pid: int, btc_pid: int) -> dict:
        user, password = self.bitcoin.rpc_auth
        return {
            "data_dir": str(Path(self.data_dir).resolve()),
            "evm": {
                "rpc_url": self.anvil.url,
                "port": self.anvil.port,
                "chain_id": self.chain_id,
                "hardfork": self.hardfork,
                "pid": anvil_pid,
                "log": str(self.anvil.log_file),
                "accounts": testkeys.as_dicts(testkeys.evm_test_keys()),
            },
            "bitcoin": {
                "rpc_url": self.bitcoin.rpc_url,
                "port": self.bitcoin.port,
                "network": "regtest",
                "backend": self.bitcoin_backend,
                "rpc_user": user,
                "rpc_password": password,
                "cookie_file": None if self.rpc_user else str(self.bitcoin.cookie_file),
                "pid": btc_pid,
                "log": str(self.bitcoin.log_file),
                "keys": testkeys.as_dicts(testkeys.btc_test_keys()),
            },
        }

    def down(self, progress=print) -> dict:
        result = {}
        for name, node in (("bitcoin", self.bitcoin), ("anvil", self.anvil)):
            pid = node.running_pid()
            if pid is not None and not _is_ours(name, pid):
                # The pid was reused by an unrelated process: never kill what we did not start.
                node.pid_file.unlink(missing_ok=True)
                result[name] = "stale pid file removed"
                continue
            result[name] = "stopped" if node.stop() else "not running"
            progress(f"{name:10} {result[name]}")
        return result

    def status(self) -> dict:
        out: dict[str, Any] = {"data_dir": str(Path(self.data_dir).resolve()), "descriptor": self.descriptor_path.exists()}
        for name, node in (("evm", self.anvil), ("bitcoin", self.bitcoin)):
            recorded_pid = read_pid(node.pid_file)
            entry: dict[str, Any] = {
                "rpc_url": node.url,
                "pid": recorded_pid,
                "process": "running" if recorded_pid and pid_alive(recorded_pid) else ("died" if recorded_pid else "not started"),
            }
            try:
                if name == "evm":
                    entry["height"] = int(evm_rpc(node.url, "eth_blockNumber", timeout=2.0), 16)
                else:
                    entry["height"] = node.rpc("getblockcount", timeout=2.0)
                entry["answers"] = True
            except Exception as exc:  # noqa: BLE001 - status reports, never raises
                entry["answers"] = False
                entry["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if entry["process"] == "died":
                entry["log_tail"] = tail(node.log_file, 10)
            out[name] = entry
        return out

    def reset(self, progress=print, start: bool = True) -> dict | None:
        self.down(progress)
        for sub in ("anvil", "bitcoin"):
            shutil.rmtree(Path(self.data_dir) / sub, ignore_errors=True)
        self.descriptor_path.unlink(missing_ok=True)
        progress("both chains wiped")
        return self.up(progress) if start else None


def load_descriptor(data_dir: str | Path) -> dict:
    path = Path(data_dir) / DESCRIPTOR
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DevnetError(f"no devnet descriptor at {path}: run `bridgectl devnet up` first") from None
