"""cluster/cluster.yaml (``ray up`` on AWS) and cluster/local-fake.yaml (Ray's fake multi-node provider) are
valid for the pinned Ray's own config schema, and keep the security and cost properties docs/operations.md
promises."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CLUSTER = ROOT / "cluster" / "cluster.yaml"
LOCAL = ROOT / "cluster" / "local-fake.yaml"


def load(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("path", [CLUSTER, LOCAL], ids=lambda p: p.name)
def test_the_config_passes_rays_schema(path: Path) -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(load(path))


def test_the_aws_config_passes_rays_schema_after_rays_defaults_are_filled_in() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load(CLUSTER)))
    validate_config(prepared)
    assert prepared["available_node_types"]["ray.head.default"]["max_workers"] == 0


def test_the_schema_check_can_fail() -> None:
    from ray.autoscaler._private.util import validate_config

    config = load(CLUSTER)
    config["available_node_types"]["ray.worker.spot"]["max_wrkers"] = 3  # a typo Ray must refuse
    with pytest.raises(Exception, match="max_wrkers"):
        validate_config(config)


def test_token_authentication_is_on_for_every_node() -> None:
    config = load(CLUSTER)
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "/home/ray/.ray/auth_token" in config["file_mounts"], "every node gets the token file"
    assert not any("RAY_AUTH_MODE=disabled" in str(v) for v in config.values())


def test_only_ssh_is_reachable_from_outside() -> None:
    config = load(CLUSTER)
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    permissions = config["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in permissions] == [(22, 22)]


def test_workers_are_spot_start_at_zero_and_idle_ones_are_released() -> None:
    config = load(CLUSTER)
    workers = config["available_node_types"]["ray.worker.spot"]
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert workers["min_workers"] == 0 and workers["max_workers"] <= config["max_workers"]
    assert 0 < config["idle_timeout_minutes"] <= 10
    assert config["provider"]["cache_stopped_nodes"] is False, "scale-down terminates nodes"


def test_the_nodes_run_the_pinned_ray_and_install_the_locked_dependencies() -> None:
    config = load(CLUSTER)
    lock = (ROOT / "requirements.lock").read_text()
    ray_pin = re.search(r"^ray==([\d.]+)$", lock, re.M)
    assert ray_pin is not None
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray_pin.group(1)}-py311")
    setup = " ".join(config["setup_commands"])
    assert "-r /home/ray/headwater/requirements.lock" in setup and "--no-deps /home/ray/headwater" in setup
    assert config["file_mounts"]["/home/ray/headwater"] == "."


def test_the_fake_cluster_headwater_starts_is_the_documented_local_fake_yaml() -> None:
    from headwater.engine.ray.fake_cluster import autoscaling_config

    documented = yaml.safe_load((ROOT / "cluster" / "local-fake.yaml").read_text())
    assert autoscaling_config(6400) == documented
