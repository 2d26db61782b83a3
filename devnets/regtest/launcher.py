"""Run the embedded node as a child process (``python -m devnets.regtest``), like devnets.anvil
does for Anvil: pid and log files in the datadir, readiness = the RPC answers."""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import DevnetError, RpcError
from devnets.process import free_port, pid_alive, read_pid, spawn, stop_pid, wait_ready

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RegtestProcess:
    """The embedded regtest node in its own process, its data in ``datadir``."""

    datadir: Path
    port: int = 0
    host: str = "127.0.0.1"
    rpcuser: str | None = "bridge"
    rpcpassword: str | None = "bridge"

    def __post_init__(self) -> None:
        self.datadir = Path(self.datadir)
        if not self.port:
            self.port = free_port(self.host)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    url = rpc_url

    @property
    def rpc_auth(self) -> tuple[str, str]:
        if self.rpcuser is not None and self.rpcpassword is not None:
            return self.rpcuser, self.rpcpassword
        user, _, password = (self.datadir / "regtest" / ".cookie").read_text().partition(":")
        return user, password

    @property
    def pid_file(self) -> Path:
        return self.datadir / "regtest-node.pid"

    @property
    def log_file(self) -> Path:
        return self.datadir / "regtest-node.log"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "devnets.regtest", "--datadir", str(self.datadir),
                "--rpcport", str(self.port), "--rpcbind", self.host]
        if self.rpcuser is not None and self.rpcpassword is not None:
            argv += ["--rpcuser", self.rpcuser, "--rpcpassword", self.rpcpassword]
        return argv

    def answers(self) -> bool:
        try:
            self.rpc("getblockcount", timeout=1.0)
            return True
        except Exception:
            return False

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid) else None

    def start(self, timeout: float = 60.0) -> int:
        self.datadir.mkdir(parents=True, exist_ok=True)
        pid = self.running_pid()
        if pid is not None and self.answers():
            return pid
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = spawn(self.argv(), self.log_file, self.pid_file, env=env, cwd=REPO_ROOT)
        wait_ready(self.answers, proc.pid, f"regtest node on {self.rpc_url}", self.log_file, timeout)
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        pid = read_pid(self.pid_file)
        stopped = stop_pid(pid, timeout) if pid is not None else False
        self.pid_file.unlink(missing_ok=True)
        return stopped

    def kill(self) -> None:
        """SIGKILL, no clean-up: for crash-recovery tests."""
        pid = read_pid(self.pid_file)
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.01)
        self.pid_file.unlink(missing_ok=True)

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        """One JSON-RPC call; a node error raises ``RpcError`` with bitcoind's code and message."""
        body = json.dumps({"jsonrpc": "1.0", "id": "devnet", "method": method, "params": list(params)}).encode()
        user, password = self.rpc_auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req = urllib.request.Request(self.rpc_url, data=body,
                                     headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                reply = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                reply = json.loads(payload)
            except ValueError:
                raise DevnetError(f"regtest {method}: HTTP {exc.code}") from None
        if reply.get("error"):
            err = reply["error"]
            raise RpcError(err["message"], code=err["code"], method=method)
        return reply["result"]
