"""A pytest plugin for integration tests across the two devnets, shipped with the package.

Installed with the project (entry point ``pytest11``), so ``pytest`` in any repository gets:

- ``bridge_devnet``: both chains, started once per session on free ports in pytest's temporary
  directory (or the running ``bridgectl devnet up --data-dir DIR`` given by ``--bridge-devnet
  DIR``): Anvil (chain id 31337, prague) with the HTLC and the TUSD token deployed, the regtest
  node with five funded keys, and helpers to mine, move time, reorg and snapshot;
- ``bridge_btc`` / ``bridge_evm``: async chain adapters on those nodes (pytest-asyncio fixtures, so
  they work in its strict mode too);
- ``@pytest.mark.private_devnet``: the test gets nodes of its own (it rewrites the chain).

On a failure the nodes' data directories and logs are kept and their paths printed at the end
of the session; ``--bridge-keep-nodes`` keeps them always.  Everything here talks to the nodes
through their RPC only, as a test author's code would.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_asyncio

from bridge.core.errors import DevnetError
from bridge.core.testing import wait_until
from devnets.anvil import rpc as evm_call
from devnets.jsonrpc import call as json_call
from devnets.manager import Devnet, load_descriptor
from devnets.process import free_port

__all__ = ["BridgeDevnet", "wait_until"]

_KEEP = pytest.StashKey[list]()


@dataclass
class BridgeDevnet:
    """Both chains of one devnet, as its ``devnet.json`` describes them, with the controls a test
    needs.  Bitcoin amounts are sats, EVM amounts wei; keys are the funded devnet test keys."""

    data_dir: Path
    descriptor: dict
    _devnet: Devnet | None = field(default=None, repr=False)  # None: a devnet someone else runs

    # --- what is there -------------------------------------------------------------------

    @property
    def evm_url(self) -> str:
        return self.descriptor["evm"]["rpc_url"]

    @property
    def btc_url(self) -> str:
        return self.descriptor["bitcoin"]["rpc_url"]

    @property
    def btc_auth(self) -> tuple[str, str]:
        btc = self.descriptor["bitcoin"]
        if btc.get("cookie_file"):
            user, _, password = Path(btc["cookie_file"]).read_text().strip().partition(":")
            return user, password
        return btc["rpc_user"], btc["rpc_password"]

    @property
    def htlc(self) -> str:
        return self.descriptor["contracts"]["htlc"]

    @property
    def tusd(self) -> str:
        return self.descriptor["contracts"]["tokens"]["TUSD"]["address"]

    @property
    def evm_accounts(self) -> list[dict]:
        """``{"address", "private_key"}`` of the funded EVM test accounts (10,000 ETH, 1,000,000 TUSD each)."""
        return self.descriptor["evm"]["accounts"]

    @property
    def btc_keys(self) -> list[dict]:
        """The funded Bitcoin test keys (``private_key`` hex, ``wif``, ``address``...), five mature coinbases each."""
        return self.descriptor["bitcoin"]["keys"]

    @property
    def nodes(self) -> Devnet:
        """The two node processes (``.anvil``, ``.bitcoin``: ``devnets.anvil.Anvil``,
        ``devnets.bitcoin_node.BitcoinNode``), also for a devnet someone else started."""
        if self._devnet is not None:
            return self._devnet
        btc = self.descriptor["bitcoin"]
        return Devnet(
            self.data_dir,
            anvil_port=self.descriptor["evm"]["port"],
            bitcoin_port=btc["port"],
            rpc_user=None if btc.get("cookie_file") else btc["rpc_user"],
            rpc_password=None if btc.get("cookie_file") else btc["rpc_password"],
        )

    @property
    def logs(self) -> dict[str, str]:
        return {"anvil": self.descriptor["evm"].get("log", ""), "bitcoin": self.descriptor["bitcoin"].get("log", "")}

    def cli_env(self) -> dict[str, str]:
        """Environment variables that point ``bridgectl`` (and ``bridge.core.settings``) at this devnet."""
        user, password = self.btc_auth
        host, _, port = self.btc_url.removeprefix("http://").rstrip("/").rpartition(":")
        return {
            "BRIDGE_BITCOIN__RPC_HOST": host,
            "BRIDGE_BITCOIN__RPC_PORT": port,
            "BRIDGE_BITCOIN__RPC_USER": user,
            "BRIDGE_BITCOIN__RPC_PASSWORD": password,
            "BRIDGE_EVM__URL": self.evm_url,
        }

    def automine(self, on: bool = True) -> None:
        """Mine a Bitcoin block on every transaction the node accepts, as Anvil does (``devnetautomine``)."""
        self.btc("devnetautomine", on)

    # --- raw calls -----------------------------------------------------------------------

    def btc(self, method: str, *params: Any) -> Any:
        """One bitcoind-style RPC call; ``RpcError`` carries the node's code and message."""
        return json_call(self.btc_url, method, params, auth=self.btc_auth)

    def evm(self, method: str, *params: Any) -> Any:
        return evm_call(self.evm_url, method, list(params))

    # --- Bitcoin ---------------------------------------------------------------------------

    def mine(self, blocks: int = 1, address: str | None = None) -> list[str]:
        """Mine ``blocks`` blocks paying ``address`` (default: test key 0); their hashes."""
        return self.btc("generatetoaddress", blocks, address or self.btc_keys[0]["address"])

    def mine_to_height(self, height: int, address: str | None = None) -> int:
        """Mine until the tip is at ``height`` (nothing if it is there already); the tip height."""
        missing = height - self.btc("getblockcount")
        if missing > 0:
            self.mine(missing, address)
        return self.btc("getblockcount")

    def mine_until_confirmed(self, txid: str, depth: int = 1, max_blocks: int = 10, address: str | None = None) -> int:
        """Mine until ``txid`` has ``depth`` confirmations; ``DevnetError`` if it has not after ``max_blocks``
        (it is not in the mempool, or was replaced)."""
        for _ in range(max_blocks + 1):
            confirmations = self._btc_confirmations(txid)
            if confirmations >= depth:
                return confirmations
            self.mine(1, address)
        raise DevnetError(f"{txid} has {self._btc_confirmations(txid)}/{depth} confirmations after {max_blocks} blocks")

    def _btc_confirmations(self, txid: str) -> int:
        try:
            return int(self.btc("getrawtransaction", txid, True).get("confirmations") or 0)
        except Exception:  # noqa: BLE001 - unknown to the node: not confirmed
            return 0

    def reorg(self, depth: int, blocks: int | None = None) -> dict:
        """Replace the top ``depth`` blocks with ``blocks`` (default ``depth + 1``) empty ones
        (the regtest node's ``devnetreorg``; with bitcoind, ``invalidateblock`` does this)."""
        params: list[Any] = [depth] if blocks is None else [depth, blocks]
        return self.btc("devnetreorg", *params)

    # --- EVM ---------------------------------------------------------------------------------

    def evm_mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.evm("evm_mine")

    def snapshot(self) -> str:
        """Anvil's state now; ``revert(id)`` brings it back (once per snapshot, as Anvil does)."""
        return self.evm("evm_snapshot")

    def revert(self, snapshot_id: str) -> bool:
        return bool(self.evm("evm_revert", snapshot_id))

    # --- both --------------------------------------------------------------------------------

    def advance_time(self, seconds: int) -> None:
        """Move both chains' clocks ``seconds`` ahead and mine a block on each, so the new time is
        chain time (what timelocks compare with).  Keep the regtest node within two hours of now."""
        self.evm("evm_increaseTime", seconds)
        self.evm_mine()
        tip = self.btc("getblock", self.btc("getbestblockhash"))["time"]
        self.btc("setmocktime", max(int(time.time()), tip) + seconds)
        self.mine(1)

    def stop(self) -> None:
        if self._devnet is not None:
            self._devnet.down(progress=lambda *_: None)


def start_devnet(data_dir: Path) -> BridgeDevnet:
    """Start both chains on free ports in ``data_dir``, contracts deployed and keys funded."""
    devnet = Devnet(Path(data_dir), anvil_port=free_port(), bitcoin_port=free_port())
    try:
        descriptor = devnet.up(progress=lambda *_: None)
    except BaseException:
        devnet.down(progress=lambda *_: None)
        raise
    return BridgeDevnet(Path(data_dir), descriptor, devnet)


# --- the plugin -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bridge-devnets", "cross-chain bridge devnets")
    group.addoption(
        "--bridge-devnet", metavar="DIR", default=None, help="use the devnet a running `bridgectl devnet up --data-dir DIR` started instead of starting one"
    )
    group.addoption("--bridge-keep-nodes", action="store_true", default=False, help="keep the devnets' data directories and logs even when every test passed")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "private_devnet: the test gets an Anvil and a regtest node of its own (it rewrites the chains)")
    config.stash[_KEEP] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    report = yield
    if report.failed:
        item.session.stash[_FAILED] = True
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    kept = config.stash.get(_KEEP, [])
    if kept:
        terminalreporter.section("bridge devnets kept")
        for why, path, logs in kept:
            terminalreporter.write_line(f"{why}: {path} (logs: {', '.join(f'{k} {v}' for k, v in logs.items())})")


def _finish(request: pytest.FixtureRequest, devnet: BridgeDevnet, failed: bool) -> None:
    devnet.stop()
    config = request.config
    if failed or config.getoption("--bridge-keep-nodes"):
        config.stash[_KEEP].append(("failed, kept" if failed else "kept", devnet.data_dir, devnet.logs))
    else:
        shutil.rmtree(devnet.data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def bridge_session_devnet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeDevnet]:
    """The session's devnet (what ``bridge_devnet`` is for tests without ``private_devnet``), for
    session-scoped fixtures of your own."""
    given = request.config.getoption("--bridge-devnet")
    if given:
        yield BridgeDevnet(Path(given), load_descriptor(given))
        return
    devnet = start_devnet(tmp_path_factory.mktemp("bridge-devnet"))
    yield devnet
    _finish(request, devnet, request.session.stash.get(_FAILED, False))


@pytest.fixture
def bridge_devnet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeDevnet]:
    """Both chains: the session's, or with ``@pytest.mark.private_devnet`` the test's own."""
    if request.node.get_closest_marker("private_devnet") is None:
        yield request.getfixturevalue("bridge_session_devnet")
        return
    devnet = start_devnet(tmp_path_factory.mktemp("bridge-private-devnet"))
    yield devnet
    _finish(request, devnet, request.node.stash.get(_FAILED, False))


@pytest_asyncio.fixture
async def bridge_btc(bridge_devnet: BridgeDevnet) -> AsyncIterator[Any]:
    """A ``chains.bitcoin.BitcoinAdapter`` on the devnet's regtest node."""
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc

    user, password = bridge_devnet.btc_auth
    adapter = BitcoinAdapter(BitcoinRpc(bridge_devnet.btc_url, user=user, password=password))
    yield adapter
    await adapter.close()


@pytest_asyncio.fixture
async def bridge_evm(bridge_devnet: BridgeDevnet) -> AsyncIterator[Any]:
    """A ``chains.evm.EvmAdapter`` on the devnet's Anvil."""
    from chains.evm import EvmAdapter

    adapter = await EvmAdapter.connect(bridge_devnet.evm_url)
    yield adapter
    await adapter.close()
