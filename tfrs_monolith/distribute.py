# Copyright 2026 The tfrs-monolith Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Scale-out training on TensorFlow's parameter-server architecture.

A cluster is TensorFlow's own: parameter-server (`ps`) tasks hold the
variables, `worker` tasks run training steps, and one coordinator (`chief`)
runs the online trainer or batch training and schedules the steps on the
workers (`tf.distribute.experimental.ParameterServerStrategy`). Every task
gets the cluster from `TF_CONFIG`, as everywhere in TensorFlow:

```
TF_CONFIG='{"cluster": {"chief": ["host0:2222"],
                        "worker": ["host1:2222", "host2:2222"],
                        "ps": ["host3:2222", "host4:2222"]},
            "task": {"type": "worker", "index": 0}}'
tfrs-monolith server            # on each ps and worker task
tfrs-monolith train-online ...  # on the chief: the same command as alone
```

Models built inside `strategy_scope()` (the command line does this) get
their `tm.CollisionlessEmbedding` tables sharded across the parameter
servers by key hash: each shard's rows, index, counters and optimizer slots
live on one parameter server, which also runs the shard's lookups and
inserts. Without a `ps` job in `TF_CONFIG`, `strategy_scope()` does nothing
and the same code trains on one machine.
"""

import contextlib
import json
import os
import socket
from typing import Optional

import tensorflow as tf

__all__ = ["LocalCluster", "parameter_server_strategy", "run_server",
           "server_config", "strategy_scope", "start_local_cluster"]

# Each server runs blocking ops (a step's calls into a parameter server wait
# on the network), so a pool sized by the cores can starve: with 2 workers
# on 2 cores, steps never finish. TensorFlow's default would be the cores.
_MIN_INTER_OP_THREADS = 16


def server_config() -> tf.compat.v1.ConfigProto:
  """The session config of every task (and the strategy's coordinator)."""
  threads = max(_MIN_INTER_OP_THREADS, os.cpu_count() or 1)
  return tf.compat.v1.ConfigProto(inter_op_parallelism_threads=threads)


def _cluster_from_env() -> Optional[dict]:
  text = os.environ.get("TF_CONFIG", "")
  if not text.strip():
    return None
  try:
    config = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"TF_CONFIG is not JSON ({error}): {text[:200]!r}") \
        from None
  if not isinstance(config, dict) or not isinstance(
      config.get("cluster"), dict):
    raise ValueError("TF_CONFIG must be a JSON object with a 'cluster' "
                     f"object. Received: {text[:200]!r}")
  return config


def parameter_server_strategy(
    cluster_resolver: Optional[
        tf.distribute.cluster_resolver.ClusterResolver] = None
) -> tf.distribute.experimental.ParameterServerStrategy:
  """A `ParameterServerStrategy` for the cluster of `cluster_resolver`
  (default: `TF_CONFIG`), with variables never partitioned: tables are
  sharded by `tm.CollisionlessEmbedding` itself, per key."""
  if cluster_resolver is None:
    cluster_resolver = (
        tf.distribute.cluster_resolver.TFConfigClusterResolver())
  spec = cluster_resolver.cluster_spec().as_dict()
  for job in ("ps", "worker"):
    if not spec.get(job):
      raise ValueError(f"the cluster has no {job!r} task: {spec}")
  return tf.distribute.experimental.ParameterServerStrategy(cluster_resolver)


def strategy_scope():
  """`parameter_server_strategy().scope()` when `TF_CONFIG` names a cluster
  with parameter servers and this is its chief; otherwise a no-op.

  Build and compile the model inside it: then the same code runs on one
  machine or a cluster.
  """
  config = _cluster_from_env()
  if config is None or not config["cluster"].get("ps"):
    return contextlib.nullcontext()
  task = (config.get("task") or {}).get("type", "chief")
  if task not in ("chief", "evaluator"):
    raise ValueError(f"TF_CONFIG says this is a {task!r} task: run "
                     "`tfrs-monolith server` there; the trainer runs on the "
                     "chief")
  return parameter_server_strategy().scope()


def run_server(join: bool = True) -> tf.distribute.Server:
  """Starts this task's server from `TF_CONFIG` (a `ps` or `worker` task)
  and, with `join`, serves until killed."""
  config = _cluster_from_env()
  if config is None:
    raise ValueError("TF_CONFIG is not set: it must give the cluster and "
                     "this task's type and index")
  task = config.get("task") or {}
  job, index = task.get("type"), task.get("index", 0)
  if job not in ("ps", "worker"):
    raise ValueError(f"`tfrs-monolith server` runs ps and worker tasks; "
                     f"TF_CONFIG's task is {task!r}")
  tasks = config["cluster"].get(job) or []
  if not isinstance(index, int) or not 0 <= index < len(tasks):
    raise ValueError(f"TF_CONFIG's task index {index!r} is not one of the "
                     f"{len(tasks)} {job!r} tasks")
  server = tf.distribute.Server(
      tf.train.ClusterSpec(config["cluster"]), job_name=job,
      task_index=index, protocol="grpc", config=server_config(), start=True)
  if join:
    server.join()
  return server


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port free on `host` now."""
  with socket.socket() as sock:
    sock.bind((host, 0))
    return sock.getsockname()[1]


class LocalCluster:
  """Parameter servers and workers as servers in this process, on loopback.

  For tests and local runs: `resolver` is what `parameter_server_strategy`
  takes. With `chief`, the spec also names a chief address for this
  process, and `tf_config("chief", 0)` is the `TF_CONFIG` under which
  `strategy_scope()` coordinates this cluster. `extra_workers` / `extra_ps`
  are addresses of tasks run elsewhere (`tfrs-monolith server` with
  `tf_config(job, index)`), after the in-process ones. TensorFlow servers
  cannot be stopped; they end with the process.
  """

  def __init__(self, num_workers: int = 2, num_ps: int = 2,
               extra_workers=(), extra_ps=(), chief: bool = False):
    for name, value in (("num_workers", num_workers), ("num_ps", num_ps)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0. Received: "
                         f"{name}={value!r}")
    self.spec = {
        "worker": [f"localhost:{free_port()}" for _ in range(num_workers)]
                  + list(extra_workers),
        "ps": [f"localhost:{free_port()}" for _ in range(num_ps)]
              + list(extra_ps),
    }
    if chief:
      self.spec["chief"] = [f"localhost:{free_port()}"]
    cluster = tf.train.ClusterSpec(self.spec)
    self.servers = [
        tf.distribute.Server(cluster, job_name=job, task_index=index,
                             protocol="grpc", config=server_config(),
                             start=True)
        for job, count in (("worker", num_workers), ("ps", num_ps))
        for index in range(count)
    ]
    self.resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, rpc_layer="grpc")

  def tf_config(self, job: str, index: int) -> str:
    """`TF_CONFIG` for a task of this cluster run in another process."""
    return json.dumps({"cluster": self.spec,
                       "task": {"type": job, "index": index}})


def start_local_cluster(num_workers: int = 2,
                        num_ps: int = 2) -> LocalCluster:
  """Starts `LocalCluster(num_workers, num_ps)`."""
  return LocalCluster(num_workers, num_ps)
