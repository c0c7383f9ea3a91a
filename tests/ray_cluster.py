"""A Ray cluster on loopback for tests and measurements: one head (no CPUs, so runs only go to
workers) and N worker nodes of their own, each `ray start` in a session of its own.

Killing a node SIGKILLs every process of its session, by pid: its raylet, its workers (which
take process groups of their own, not sessions) and the runs they spawned, as a machine dying
would. `stop()` does that for every node, so nothing else on the machine is touched (no
`ray stop`, which stops every Ray instance of the user).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Loopback only: no token (Ray >= 2.5x turns token auth on where ~/.ray/auth_token exists and its
# `ray start` for workers does not send it), no usage stats, node death noticed within ~3 s.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, workers: int = 2, cpus_per_worker: int = 1):
        self.n_workers, self.cpus_per_worker = workers, cpus_per_worker
        self.env = {**os.environ, **RAY_ENV}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="ollm_ray_")
        self.head_sid: int | None = None  # session ids: `ray start` is started as a session leader
        self.worker_sids: list[int] = []

    def _ray_start(self, *args: str, private_dir: str | None = None) -> tuple[subprocess.Popen, str]:
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1", *args]
        if private_dir:  # this node sees an empty tmpfs at private_dir: a filesystem the others do not share
            cmd = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', private_dir, *cmd]
        # A file, not a pipe: the node's daemons inherit the descriptor and outlive `ray start`.
        fd, log = tempfile.mkstemp(dir=self.temp_dir, prefix="start-", suffix=".log")
        with os.fdopen(fd, "w") as out:
            return subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True), log

    @staticmethod
    def _wait(started: tuple[subprocess.Popen, str], what: str) -> None:
        """`ray start` returns once its node is registered; its pid is the node's session id."""
        proc, log = started
        if proc.wait(timeout=120) != 0:
            with open(log) as f:
                raise RuntimeError(f"`ray start` of {what} failed:\n{f.read()[-3000:]}")

    def start(self) -> "LocalRayCluster":
        head = self._ray_start("--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                               f"--temp-dir={self.temp_dir}", "--disable-usage-stats")
        self.head_sid = head[0].pid
        self._wait(head, "the head")
        self.add_workers(self.n_workers)
        return self

    def add_workers(self, n: int, private_dir: str | None = None) -> list[int]:
        """Start n more worker nodes; their indices for kill_worker."""
        for _ in range(n):  # one after the other: nodes started at once on one machine race for ports
            started = self._ray_start(f"--address={self.address}", f"--num-cpus={self.cpus_per_worker}",
                                      private_dir=private_dir)
            self.worker_sids.append(started[0].pid)  # before it is up, so stop() reaches it whatever happens
            self._wait(started, "a worker node")
        return list(range(len(self.worker_sids) - n, len(self.worker_sids)))

    def members(self, sid: int) -> list[int]:
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid, session in zip(out[::2], out[1::2]) if int(session) == sid]

    def running_task(self, sid: int, task: str) -> bool:
        """A worker process of this node runs `task` now (Ray titles a busy worker `ray::<task>`)."""
        for pid in self.members(sid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(f"ray::{task}".encode()):
                        return True
            except OSError:
                continue
        return False

    def kill_worker(self, i: int) -> None:
        self._kill(self.worker_sids[i])

    def _kill(self, sid: int | None) -> None:
        deadline = time.time() + 10
        while sid is not None and time.time() < deadline and (pids := self.members(sid)):
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def stop(self) -> None:
        for sid in [*self.worker_sids, self.head_sid]:
            self._kill(sid)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def can_unshare_mounts() -> bool:
    """Private mount namespaces (root, or a container that allows them) for a node that shares no store."""
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
