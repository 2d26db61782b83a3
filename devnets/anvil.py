"""Foundry's Anvil, run from the pinned npm package (never downloaded at run time)."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bridge.core.errors import DevnetError, RpcError
from devnets import jsonrpc
from devnets.process import NodeProcess, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Anvil's default dev mnemonic; its first accounts are the funded devnet keys.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


def _platform_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}.get(platform.system(), platform.system().lower())
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"anvil-{system}-{arch}"


def find_anvil(explicit: str | None = None, from_path: bool = False, root: Path = REPO_ROOT) -> str:
    """The anvil binary: an explicit path, else PATH when asked, else node_modules."""
    if explicit:
        if not Path(explicit).exists():
            raise DevnetError(f"anvil not found at {explicit}")
        return explicit
    if from_path:
        found = shutil.which("anvil")
        if not found:
            raise DevnetError("anvil was asked for from PATH but is not on PATH")
        return found
    exe = "anvil.exe" if platform.system() == "Windows" else "anvil"
    candidate = root / "node_modules" / "@foundry-rs" / _platform_package() / "bin" / exe
    if candidate.exists():
        return str(candidate)
    raise DevnetError(f"pinned anvil not found at {candidate}; run `npm ci` (or `make demo`) to install node_modules")


def rpc(url: str, method: str, params: list | None = None, timeout: float = 5.0):
    try:
        return jsonrpc.call(url, method, params or [], timeout=timeout)
    except RpcError as exc:
        raise DevnetError(f"anvil {method} failed: {exc.message} (code {exc.code})", code=exc.code) from None


@dataclass
class Anvil(NodeProcess):
    """An Anvil process whose state lives in ``data_dir``."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    chain_id: int = 31337
    hardfork: str = "prague"
    binary: str | None = None
    accounts: int = 10
    balance_eth: int = 10_000
    block_time: float | None = None  # None: mine on every transaction

    file_stem: ClassVar[str] = "anvil"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.port:
            self.port = free_port(self.host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "anvil-state.json"

    def answers(self) -> bool:
        try:
            return int(rpc(self.url, "eth_chainId", timeout=1.0), 16) == self.chain_id
        except Exception:
            return False

    def describe(self) -> str:
        return f"anvil on {self.url}"

    def argv(self) -> list[str]:
        argv = [
            find_anvil(self.binary),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--hardfork",
            self.hardfork,
            "--accounts",
            str(self.accounts),
            "--balance",
            str(self.balance_eth),
            "--mnemonic",
            DEV_MNEMONIC,
            # State survives `down`/`up`: dumped on exit and every few seconds, loaded on start.
            "--state",
            str(self.state_file),
            "--state-interval",
            "5",
        ]
        if self.block_time:
            argv += ["--block-time", str(self.block_time)]
        return argv
