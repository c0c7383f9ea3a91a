"""Hydra launcher that runs each job of a multirun as a Ray task (`hydra/launcher=ray`).

Ours rather than hydra-ray-launcher 1.2.2: that plugin pins cloudpickle<3 (joblib 1.6, behind the
joblib launcher, needs >=3), pulls ray[default] and boto3 for a local/cluster launch, injects
object_store_memory into ray.init so connecting to a running cluster fails (hydra #2893), and
gathers with one ray.get per job, so the first lost job throws the other results away.
"""
