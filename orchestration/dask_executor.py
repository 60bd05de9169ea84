"""Dagster's `dask_executor` (dagster-dask) for our partitioned runs.

dagster-dask's `DaskExecutor` submits each step with the run (`DagsterRun`) among the task's
arguments. dask walks a task's arguments for futures, and on a partitioned run it reaches the
run's partition subset, a Dagster `@record` that forbids iteration ("Iteration is not allowed
on `@record` KeyRangesPartitionsSubset"; dagster-dask 0.29.27, dask 2024.10 to 2026.8). This
is that executor with three changes, everything else its own:
- each step's arguments travel as one pickled payload (dask does not walk bytes); the worker
  unpacks it and runs the step with dagster-dask's `query_on_dask_worker`;
- each task's key carries the partition and the run id (`job.step[partition].run_id`), so
  two partitions' runs of one job on one cluster at the same time are two sets of tasks
  (dagster-dask keys a task by job and step only, and dask would take the second for the
  first);
- a LocalCluster it starts for a run (`cluster: local`) is closed when the run ends.

The config is dagster-dask's: `cluster: {existing: {address: tcp://…}}` or `cluster: {local:
{…LocalCluster arguments}}` (the other cluster managers need packages probex does not ship).
"""

from __future__ import annotations

import cloudpickle
import dagster as dg
from dagster._core.errors import raise_execution_interrupts
from dagster._utils import iterate_with_context
from dagster_dask.executor import (
    DaskExecutor,
    dask_executor,
    get_dask_resource_requirements,
    query_on_dask_worker,
)

CLUSTERS = ("existing", "local")


def run_step_on_worker(dependencies: list, payload: bytes) -> list:
    """Runs on a Dask worker: one step of a run, from its pickled arguments. `dependencies`
    (the upstream steps' futures) only orders the tasks."""
    import torch

    torch.set_num_threads(1)  # one task per worker thread: no oversubscribed cores
    return query_on_dask_worker(dependencies, *cloudpickle.loads(payload))


def _task_key(job_name: str, step_key: str, run) -> str:
    """A step's task key, one per run: `job.step[partition].run_id`."""
    partition = run.tags.get("dagster/partition")
    return f"{job_name}.{step_key}{f'[{partition}]' if partition else ''}.{run.run_id}"


class PartitionedDaskExecutor(DaskExecutor):
    """dagster-dask's executor, its step arguments pickled (see the module docstring)."""

    def _cluster(self, job_name: str):
        if self.cluster_type == "existing":
            return self.cluster_configuration["address"]
        if self.cluster_type == "local":
            from distributed import LocalCluster

            return LocalCluster(**self.build_dict(job_name))
        raise dg.DagsterInvariantViolationError(
            f"dask cluster {self.cluster_type!r} is not supported here: use one of {CLUSTERS}"
        )

    def execute(self, plan_context, execution_plan):
        if not plan_context.instance.is_persistent:
            raise dg.DagsterInvariantViolationError("Dask execution needs a persistent instance")
        cluster = self._cluster(plan_context.job_name)
        if isinstance(cluster, str):  # an existing scheduler's address
            yield from self._execute_on(cluster, plan_context, execution_plan)
            return
        with cluster:  # started for this run, closed with it
            yield from self._execute_on(cluster, plan_context, execution_plan)

    def _execute_on(self, cluster, plan_context, execution_plan):
        """Each step a task (after its upstream steps' tasks); their events as they finish."""
        from distributed import Client, as_completed

        run = plan_context.dagster_run
        instance_ref = plan_context.instance.get_ref()
        futures: dict[str, object] = {}
        with Client(cluster) as client:
            for level in execution_plan.get_steps_to_execute_by_level():
                for step in level:
                    upstream = [
                        futures[key]
                        for step_input in step.step_inputs
                        for key in step_input.dependency_keys
                    ]
                    payload = cloudpickle.dumps(
                        (
                            plan_context.reconstructable_job,
                            run,
                            plan_context.run_config,
                            [step.key],
                            instance_ref,
                            execution_plan.known_state,
                        )
                    )
                    futures[step.key] = client.submit(
                        run_step_on_worker,
                        upstream,
                        payload,
                        key=_task_key(plan_context.job_name, step.key, run),
                        resources=get_dask_resource_requirements(step.tags),
                        pure=False,
                    )
            done = as_completed(list(futures.values()), with_results=True)
            for _future, events in iterate_with_context(raise_execution_interrupts, done):
                yield from events


@dg.executor(
    name="dask",
    config_schema=dask_executor.config_schema,
    requirements=dg.multiple_process_executor_requirements(),
)
def partitioned_dask_executor(init_context) -> PartitionedDaskExecutor:
    """dagster-dask's `dask_executor` for partitioned runs (same config)."""
    ((cluster_type, config),) = init_context.executor_config["cluster"].items()
    return PartitionedDaskExecutor(cluster_type, config)
