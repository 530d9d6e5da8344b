"""A real Prefect deployment on localhost for tests: server (SQLite or PostgreSQL), work pool, workers.

Everything listens on 127.0.0.1 only, and every process is stopped when the cluster is closed.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
# How often the workers beat to the server: with the lease, it sets how soon the night takes a node for dead.
WORKER_HEARTBEAT_SECONDS = 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrefectCluster:
    def __init__(self, home: Path, database_url: str | None = None):
        self.home = home
        self.database_url = database_url  # None: the server's own SQLite file
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": str(WORKER_HEARTBEAT_SECONDS),
            "PREFECT_LOGGING_LEVEL": "INFO",
            **({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}),
        }
        self.processes: list[subprocess.Popen] = []
        self.logs = home / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        process = subprocess.Popen(
            args, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
        self.processes.append(process)
        return process

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(args, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result

    def start_server(self, timeout: float = 120) -> None:
        self._spawn(
            "server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"Prefect server did not start: {(self.logs / 'server.log').read_text()[-3000:]}")

    def start_worker(self, name: str, queue: str, limit: int | None = None, pool: str = "gpu") -> subprocess.Popen:
        args = [
            str(BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--name",
            name,
            "--work-queue",
            queue,
        ]
        return self._spawn(name, args + (["--limit", str(limit)] if limit else []))

    def python(self, code: str, timeout: float = 600) -> str:
        return self.run(str(BIN / "python"), "-c", code, timeout=timeout).stdout

    def _post(self, path: str, body: dict) -> list[dict]:
        """A query to the server's REST API from this process: polling it through a Python that imports Prefect
        would cost a couple of CPU seconds a call, taken from the nights under test on a 2-core machine."""
        request = urllib.request.Request(
            f"{self.api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def flow_runs(self, flow_name: str) -> list[dict]:
        """Flow runs of one flow, as plain dicts, read through the API."""
        runs = self._post("/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})
        return [
            {
                "id": run["id"],
                "name": run["name"],
                "state": run["state_type"],
                "labels": dict(run["labels"]),
                "parameters": run["parameters"],
                "pid": run["infrastructure_pid"],
                "created": datetime.datetime.fromisoformat(run["created"]).timestamp(),
                "message": run["state"]["message"] if run["state"] else None,
            }
            for run in runs
        ]

    def artifact(self, key: str, flow_run_id: str) -> str | None:
        """The data of a flow run's artifact with `key` (a markdown text, a table as JSON), or None."""
        found = self._post(
            "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}}
        )
        return found[-1]["data"] if found else None

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def postgres_binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), if the package is installed."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """A real PostgreSQL server for one test session: temporary data directory, 127.0.0.1 only, trust auth.

    Run as the `postgres` user when the tests run as root (the server refuses to run as root)."""

    def __init__(self):
        self.bin = postgres_binaries()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="t2v-pg-"))
        self.data = self.root / "data"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.as_owner, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start"
        )
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE prefect")

    def stop(self) -> None:
        subprocess.run(
            [*self.as_owner, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found
