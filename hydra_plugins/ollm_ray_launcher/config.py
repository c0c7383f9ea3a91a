"""Schema of `hydra/launcher=ray` (conf/hydra/launcher/ray.yaml sets the project's defaults)."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.ollm_ray_launcher.ray_launcher.RayLauncher"
    # null: RAY_ADDRESS or the Ray last started on this machine, else a new local one; "auto": the
    # cluster this machine is a node of; "host:6379": a cluster's head (GCS); "ray://host:10001":
    # Ray Client (needs ray[client]; not exercised by the tests).
    address: Optional[str] = None
    # What each run reserves on a node: Ray starts a run only where these are free.
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: Optional[float] = None  # Ray's logical memory resource (scheduling, not a limit)
    resources: Dict[str, float] = field(default_factory=dict)  # custom node resources per run
    # Times Ray re-runs a job whose worker process or node died (exceptions are not retried).
    max_retries: int = 3
    connect_timeout_s: float = 10.0  # TCP check of the address before ray.init
    probe_timeout_s: float = 120.0  # pre-flight tasks on every node that can host a run
    init: Dict[str, Any] = field(default_factory=dict)  # more ray.init() kwargs (runtime_env, num_cpus, ...)
    # Environment variables of the launching process that each run sees too (Ray workers are
    # started by their node, not by us, so they do not inherit our environment).
    forward_env: List[str] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/launcher", name="ollm_ray", node=RayLauncherConf,
                             provider="ollm_ray_launcher")
