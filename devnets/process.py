"""Starting and stopping a node as a child process: pid file, log file, readiness wait."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, ClassVar, Sequence

from bridge.core.errors import DevnetError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    return True


def spawn(argv: Sequence[str], log_file: Path, pid_file: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_file, "ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,  # a Ctrl-C in the terminal must not kill the devnet behind our back
    )
    log.close()
    pid_file.write_text(f"{proc.pid}\n")
    return proc


def wait_ready(check: Callable[[], bool], pid: int, what: str, log_file: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise DevnetError(f"{what} exited during start-up; last log lines:\n{tail(log_file)}", log=str(log_file))
        if check():
            return
        time.sleep(0.05)
    raise DevnetError(f"{what} did not answer within {timeout:.0f}s; last log lines:\n{tail(log_file)}", log=str(log_file))


def stop_pid(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM, wait, then SIGKILL.  Returns True if a process was stopped."""
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log file)"


class NodeProcess:
    """A node run as a child process, its pid and log files in ``data_dir``.  Subclasses give
    ``argv()`` (how to run it), ``answers()`` (ready: its RPC replies) and ``describe()``."""

    data_dir: Path
    #: Names the pid and log files in ``data_dir``.
    file_stem: ClassVar[str]
    #: Working directory for the process (None: ours).
    cwd: ClassVar[Path | None] = None
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 20.0

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.file_stem}.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.file_stem}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask a running node to shut down by itself before it is sent SIGTERM (default: nothing)."""

    def running_pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid is not None and pid_alive(pid) else None

    def start(self, timeout: float | None = None) -> int:
        """Start (or find already running) and wait until it answers; returns the pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pid = self.running_pid()
        if pid is not None and self.answers():
            return pid
        proc = spawn(self.argv(), self.log_file, self.pid_file, cwd=self.cwd)
        wait_ready(self.answers, proc.pid, self.describe(), self.log_file, timeout or self.start_timeout)
        return proc.pid

    def stop(self) -> bool:
        pid = read_pid(self.pid_file)
        if pid is not None and pid_alive(pid):
            self.request_stop()
        stopped = stop_pid(pid, self.stop_timeout) if pid is not None else False
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
