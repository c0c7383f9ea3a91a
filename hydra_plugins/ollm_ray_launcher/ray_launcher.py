"""Each job of a Hydra multirun becomes one Ray task, placed by Ray on any node with the
resources one run asks for (conf: hydra.launcher.num_cpus/num_gpus/memory_gb/resources).

A job whose worker or node dies is re-run by Ray up to `max_retries` times on the nodes left;
past that it comes back as a failed job (the sweep reports it, nothing else is lost). Ray is
imported lazily: Hydra imports every plugin module at start-up.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import RayLauncherConf

log = logging.getLogger(__name__)


class RayLauncherError(RuntimeError):
    """The cluster cannot be reached or cannot host a run: raised before any job starts."""


class RunLostError(RuntimeError):
    """A job's worker or node died more often than max_retries allows, or Ray could not run it."""


def _settings(conf: Any) -> RayLauncherConf:
    known = OmegaConf.structured(RayLauncherConf)
    given = OmegaConf.create(OmegaConf.to_container(conf, resolve=True) if OmegaConf.is_config(conf) else dict(conf))
    unknown = set(given) - set(known)
    if unknown:
        raise RayLauncherError(f"hydra.launcher has keys the Ray launcher does not know: {sorted(unknown)} "
                               "(is hydra-ray-launcher installed too? its `ray` schema does not fit ours)")
    return OmegaConf.to_object(OmegaConf.merge(known, given))


def _check_reachable(address: str, timeout_s: float) -> None:
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayLauncherError(f"Ray address {address!r} is not host:port, ray://host:port, 'auto' or null")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayLauncherError(
            f"Ray cluster at {address} is unreachable ({reason}); start its head with `ray start --head "
            f"--port={port}` or set hydra.launcher.address to the head's host:port") from None


def connect(conf: Any) -> None:
    """ray.init for the configured address, once per process; any failure is one RayLauncherError."""
    import ray

    if ray.is_initialized():
        return
    settings = _settings(conf)
    address, init = settings.address, dict(settings.init)
    if address not in (None, "", "auto"):
        _check_reachable(address, settings.connect_timeout_s)
    init.setdefault("logging_level", logging.WARNING)
    try:
        ray.init(address=address or None, **init)
    except Exception as exc:  # ConnectionError, AuthenticationError, ValueError: all mean "cannot start"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayLauncherError(f"cannot connect to Ray at {address or 'a new local instance'}: {first}") from None


def _run_options(settings: RayLauncherConf) -> dict:
    options = {"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus, "max_retries": settings.max_retries,
               "retry_exceptions": False}
    if settings.memory_gb:
        options["memory"] = int(settings.memory_gb * 2**30)
    if settings.resources:
        options["resources"] = dict(settings.resources)
    return options


def run_hosts(conf: Any) -> list[dict]:
    """Alive nodes with the resources one run asks for; RayLauncherError if there are none."""
    import ray

    settings = _settings(conf)
    need = {"CPU": settings.num_cpus, "GPU": settings.num_gpus, **settings.resources}
    if settings.memory_gb:
        need["memory"] = settings.memory_gb * 2**30
    need = {k: v for k, v in need.items() if v}
    alive = [n for n in ray.nodes() if n.get("Alive")]
    hosts = [n for n in alive if all(n["Resources"].get(k, 0) >= v for k, v in need.items())]
    if not hosts:
        offer = "; ".join(f"{n['NodeManagerAddress']}: {n['Resources']}" for n in alive) or "no alive node"
        raise RayLauncherError(f"no Ray node can host one run asking for {need} ({offer}); lower "
                               "hydra.launcher.num_cpus/num_gpus or add nodes")
    return hosts


def run_on_hosts(conf: Any, fn: Callable[..., Optional[str]], *args: Any) -> dict[str, Optional[str]]:
    """Run fn(*args) once on every node that can host a run (pre-flight checks); address -> its answer."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    settings = _settings(conf)
    hosts = run_hosts(conf)
    remote = ray.remote(num_cpus=0, max_retries=0)(fn)
    refs = {n["NodeID"]: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(*args) for n in hosts}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=settings.probe_timeout_s)
    answers = {}
    for node, ref in refs.items():
        if ref not in ready:
            answers[node] = f"no answer within {settings.probe_timeout_s:g} s"
            continue
        try:
            answers[node] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            answers[node] = f"check failed: {str(exc).strip().splitlines()[0]}"
    alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}  # a node that died meanwhile hosts no run
    names = {n["NodeID"]: f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n in hosts}
    return {names[node]: answer for node, answer in answers.items() if node in alive or answer is None}


def _execute(hydra_context: HydraContext, sweep_config: DictConfig, task_function: TaskFunction,
             singleton_state: dict, env: dict) -> JobReturn:
    """Body of the Ray task: Hydra's run_job, with a task's sys.exit turned into a failed job."""
    os.environ.update(env)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(sweep_config)
    try:
        return run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except SystemExit as exc:  # the driver re-raises it, as the basic launcher would
        return JobReturn(overrides=list(sweep_config.hydra.overrides.task), status=JobStatus.FAILED,
                         _return_value=exc)


class RayLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.settings = _settings(params)
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        connect(self.params)
        run_hosts(self.params)  # an infeasible request would otherwise wait forever
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()  # workers do not share our cwd
        sweep_dir.mkdir(parents=True, exist_ok=True)
        options = _run_options(self.settings)
        log.info(f"Ray launcher: {len(job_overrides)} jobs on {self.settings.address or 'a local Ray'}, "
                 f"each {options}; sweep output dir: {sweep_dir}")
        remote = ray.remote(_execute).options(**options)
        env = {name: os.environ[name] for name in self.settings.forward_env if name in os.environ}
        # Shared by every job: stored once in the object store, not serialized per job.
        context, task, state, env_ref = (ray.put(x) for x in (self.hydra_context, self.task_function,
                                                              Singleton.get_state(), env))
        refs, labels = [], []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            labels.append(f"#{idx} : {' '.join(filter_overrides(overrides))}")
            log.info(f"\t{labels[-1]}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
                sweep_config.hydra.job.num = idx
                sweep_config.hydra.sweep.dir = str(sweep_dir)
            refs.append(remote.remote(context, sweep_config, task, state, env_ref))
        return [self._result(ref, label, overrides) for ref, label, overrides in zip(refs, labels, job_overrides)]

    def _result(self, ref: Any, label: str, overrides: Sequence[str]) -> JobReturn:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised on the node outside the job (e.g. its output dir)
            what = f"failed on its node: {str(exc).strip().splitlines()[-1]}"
        except ray.exceptions.RayError as exc:
            what = f"lost after {self.settings.max_retries} retries: {str(exc).strip().splitlines()[0]}"
        log.error(f"job {label} {what}")
        error = RunLostError(f"job {label} {what}; run the same command again to resume it")
        return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)
