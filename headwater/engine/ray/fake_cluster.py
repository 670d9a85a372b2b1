"""An autoscaling Ray cluster on one machine, on Ray's fake multi-node provider: for development and tests.

``FakeCluster(root).start()`` runs ``ray start --head`` with Ray's autoscaler on the ``fake_multinode`` provider:
a head node with ``head_cpus`` CPUs and up to ``max_workers`` worker nodes of ``worker_cpus`` CPUs each that the
autoscaler starts (as local raylets) when actors cannot be placed or ``request_resources`` asks for more, and
stops once idle for ``idle_timeout_s``. A job joins it by address (``RunConfig(ray_address=cluster.address)``)
and so behaves as on a real cluster: its workers reserve a CPU each (``RunConfig.worker_cpus``), a job wider
than the cluster waits for nodes, and ``AutoscaleConfig(request_resources=True)`` asks for them ahead.

The configuration written is :func:`autoscaling_config`, the same as ``cluster/local-fake.yaml`` (a test keeps
the two equal) with this cluster's GCS port. Invariants:

* Token authentication is on, with a random token in ``<root>/auth_token`` (mode 0600) that :meth:`env` hands
  to the processes that should get in (the autoscaler passes it on to the nodes it starts); nothing runs for a
  caller without it.
* :meth:`stop` stops exactly the processes of this cluster (every one carries its marker in its environment or
  holds a file open under its session directory, see :mod:`headwater.engine.ray.reaper`), never another Ray of
  the machine: ``ray stop`` would stop them all.

Measured on this 2-core machine (Ray 2.60): the head starts in ~5 s, a worker node in 3.5–6 s, and each fake
node takes ~175 MiB.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from headwater.engine.private_files import create_private_file
from headwater.engine.ray.reaper import MARKER_ENV, reap
from headwater.errors import HeadwaterError

#: the node type name worker nodes get (the autoscaler's logs and ``ray status`` show it)
WORKER_NODE_TYPE = "ray.worker.default"


class FakeClusterError(HeadwaterError):
    """The fake cluster's head did not start (the message holds the end of ``ray start``'s output)."""


def autoscaling_config(port: int, *, head_cpus: int = 1, worker_cpus: int = 1, max_workers: int = 3,
                       idle_timeout_s: float = 6.0, worker_object_store_memory: int = 100_000_000) -> dict[str, Any]:
    """The fake provider's cluster configuration for a head whose GCS listens on ``port``."""
    return {
        "cluster_name": "fake_multinode",
        "max_workers": max_workers,
        "provider": {
            "type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
            "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            WORKER_NODE_TYPE: {
                "resources": {"CPU": worker_cpus, "object_store_memory": worker_object_store_memory},
                "node_config": {}, "min_workers": 0, "max_workers": max_workers,
            },
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakeCluster:
    """See the module docstring. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, root: Path | str, *, head_cpus: int = 1, worker_cpus: int = 1, max_workers: int = 3,
                 idle_timeout_s: float = 6.0, object_store_memory: int = 100_000_000,
                 update_interval_s: float = 1.0) -> None:
        self.root = Path(root)
        self.port = _free_port()
        self.head_cpus, self.object_store_memory, self.update_interval_s = head_cpus, object_store_memory, update_interval_s
        self.config = autoscaling_config(self.port, head_cpus=head_cpus, worker_cpus=worker_cpus,
                                         max_workers=max_workers, idle_timeout_s=idle_timeout_s)
        self.token_file = self.root / "auth_token"
        self.marker = secrets.token_hex(16)
        self.session_dir: str | None = None
        #: Ray's temp dir: short and under /tmp, since Ray's socket paths must stay within 107 bytes
        self.ray_dir: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment for a process that joins this cluster (a driver, ``ray status``): its address and the
        token's path (never the token itself)."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file),
                "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, timeout_s: float = 120.0) -> FakeCluster:
        import yaml

        self.root.mkdir(parents=True, exist_ok=True)
        create_private_file(self.token_file, secrets.token_hex(32))
        config_path = self.root / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(self.env())
        env.pop("RAY_ADDRESS")
        env.update({MARKER_ENV: self.marker, "RAY_FAKE_CLUSTER": "1",
                    "AUTOSCALER_UPDATE_INTERVAL_S": f"{self.update_interval_s:g}"})
        self.ray_dir = Path(tempfile.mkdtemp(prefix="hw-fake-ray-", dir="/tmp"))
        ray_cli = str(Path(sys.executable).with_name("ray"))
        command = [
            ray_cli, "start", "--head", f"--port={self.port}", f"--autoscaling-config={config_path}",
            f"--num-cpus={self.head_cpus}", f"--object-store-memory={self.object_store_memory}",
            "--include-dashboard=false", f"--temp-dir={self.ray_dir}", "--disable-usage-stats",
            f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
        ]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise FakeClusterError(f"`ray start --head` did not return within {timeout_s:g} s") from exc
        session = self.ray_dir / "session_latest"
        self.session_dir = os.path.realpath(session) if session.exists() else None
        if done.returncode != 0:
            self.stop()
            raise FakeClusterError(f"`ray start --head` failed ({done.returncode}): "
                                   f"{(done.stdout + done.stderr)[-2000:]}")
        return self

    def stop(self) -> None:
        """Stop every process of this cluster (and no other); waits until they are gone."""
        directories = [self.session_dir] if self.session_dir else []
        for _ in range(3):  # a node the autoscaler was starting meanwhile is caught by the next sweep
            if not reap(self.marker, directories):
                break
            time.sleep(0.2)
        if self.ray_dir is not None:
            shutil.rmtree(self.ray_dir, ignore_errors=True)
            self.ray_dir = None

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def alive_worker_nodes(ray: Any) -> int:
    """Worker nodes (not the head) of the connected cluster that are alive."""
    return sum(1 for node in ray.nodes() if node.get("Alive") and not _is_head(node))


def _is_head(node: dict[str, Any]) -> bool:
    return "node:__internal_head__" in node.get("Resources", {})
