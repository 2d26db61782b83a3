"""The Bitcoin regtest node as a child process: the embedded node (``python -m devnets.regtest``)
by default, or a real ``bitcoind -regtest``.  The devnet manager, the tests' ``regtest`` fixture
and the benches all start their node through this.

Both keep their chain in ``<data_dir>/regtest`` and, without a user/password,
write bitcoind's ``.cookie`` there, so clients cannot tell them apart.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from bridge.core.errors import DevnetError
from devnets import jsonrpc
from devnets.process import NodeProcess, free_port


@dataclass
class BitcoinNode(NodeProcess):
    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    backend: str = "embedded"  # or "bitcoind"
    bitcoind_path: str | None = None
    rpc_user: str | None = None
    rpc_password: str | None = None

    file_stem: ClassVar[str] = "bitcoin"
    # ``python -m devnets.regtest`` must find the repository's packages.
    cwd: ClassVar[Path] = Path(__file__).resolve().parent.parent
    start_timeout: ClassVar[float] = 90.0
    stop_timeout: ClassVar[float] = 30.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.port:
            self.port = free_port(self.host)
        if self.backend not in ("embedded", "bitcoind"):
            raise DevnetError(f"unknown bitcoin backend {self.backend!r}: use 'embedded' or 'bitcoind'")

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    url = rpc_url  # Anvil's name, for code that handles either node

    @property
    def cookie_file(self) -> Path:
        return self.data_dir / "regtest" / ".cookie"

    @property
    def rpc_auth(self) -> tuple[str, str]:
        """(user, password): the configured pair, else the cookie the running node wrote."""
        if self.rpc_user and self.rpc_password:
            return self.rpc_user, self.rpc_password
        try:
            user, _, password = self.cookie_file.read_text().strip().partition(":")
        except FileNotFoundError:
            raise DevnetError(f"no RPC credentials: {self.cookie_file} does not exist (is the node running?)") from None
        return user, password

    def argv(self) -> list[str]:
        if self.backend == "embedded":
            argv = [sys.executable, "-m", "devnets.regtest", "--datadir", str(self.data_dir), "--rpcport", str(self.port), "--rpcbind", self.host]
            if self.rpc_user and self.rpc_password:
                argv += ["--rpcuser", self.rpc_user, "--rpcpassword", self.rpc_password]
            return argv
        exe = self.bitcoind_path or shutil.which("bitcoind")
        if not exe:
            raise DevnetError("the bitcoind backend was chosen but no bitcoind was given (--bitcoind PATH) or found on PATH")
        argv = [
            exe,
            "-regtest",
            f"-datadir={self.data_dir}",
            f"-rpcport={self.port}",
            f"-rpcbind={self.host}",
            "-rpcallowip=127.0.0.1",
            "-server=1",
            "-txindex=1",
            "-listen=0",
            "-fallbackfee=0.00001",
            "-printtoconsole=1",
            "-disablewallet=1",
        ]
        if self.rpc_user and self.rpc_password:
            argv += [f"-rpcuser={self.rpc_user}", f"-rpcpassword={self.rpc_password}"]
        return argv

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        """One JSON-RPC call; a node error raises ``RpcError`` with bitcoind's code and message."""
        return jsonrpc.call(self.rpc_url, method, params, auth=self.rpc_auth, timeout=timeout, version="1.0")

    def answers(self) -> bool:
        try:
            self.rpc("getblockcount", timeout=2.0)
            return True
        except Exception:
            return False

    def describe(self) -> str:
        return f"bitcoin {self.backend} node on {self.rpc_url}"

    def request_stop(self) -> None:
        try:
            self.rpc("stop", timeout=5.0)  # lets the node flush and persist its mempool
        except Exception:
            pass  # SIGTERM follows; the node shuts down cleanly on it too
