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
"""Benchmarks training on a parameter-server cluster: 1 vs 2 workers.

A TFRS ranking model (user and item `tm.CollisionlessEmbedding` tables, dim
32, an MLP 64-32-1, MSE, Adagrad) trains with `model.fit` on synthetic
Zipf-distributed examples:

* `one process`: no cluster (the baseline);
* `1 worker` and `2 workers`: `ParameterServerStrategy` over an in-process
  cluster of 2 parameter servers and 1 or 2 workers on loopback, each table
  sharded over the 2 parameter servers.

Each variant runs in its own process (a cluster cannot be left), one after
another. The first epoch (tracing, compiling) is not timed; examples/s is
over the median of the timed epochs. Also reported: the bytes each
parameter server holds per table shard (rows, index, sketch, optimizer
slots). All tasks of the cluster share this machine's cores, so the
2-worker figure shows the scheduling overhead more than a real speed-up.
The last stdout line is the result as JSON.

Usage:
  python benchmarks/cluster.py [--examples 100000] [--batch_size 1024] ...
"""

import argparse
import json
import os
import subprocess
import sys
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tfrs_monolith as tm
import tensorflow as tf
import tensorflow_recommenders as tfrs
from tfrs_monolith import distribute


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--examples", type=int, default=100_000)
  parser.add_argument("--users", type=int, default=50_000)
  parser.add_argument("--items", type=int, default=20_000)
  parser.add_argument("--capacity", type=int, default=65_536,
                      help="Rows of each table (all shards).")
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--steps_per_execution", type=int, default=4)
  parser.add_argument("--epochs", type=int, default=4,
                      help="Epochs per variant; the first is not timed.")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--variant", default=None,
                      help="(internal) run one variant: local, 1, 2")
  return parser.parse_args(argv)


class Ranking(tm.Model):

  def __init__(self, args):
    super().__init__()
    self.user = tm.CollisionlessEmbedding(args.dim, capacity=args.capacity,
                                          name="user")
    self.item = tm.CollisionlessEmbedding(args.dim, capacity=args.capacity,
                                          name="item")
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(1)])
    self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError(
        reduction=tf.keras.losses.Reduction.SUM))

  def compute_loss(self, features, training=False):
    scores = self.mlp(tf.concat([self.user(features["user"]),
                                 self.item(features["item"])], axis=1))
    return self.task(labels=features["rating"], predictions=scores[:, 0])


def make_data(args):
  rng = np.random.default_rng(args.seed)
  user_keys = bench_util.random_keys(rng, args.users)
  item_keys = bench_util.random_keys(rng, args.items)
  users = user_keys[bench_util.zipf_ranks(rng, 1.2, args.users,
                                          args.examples)]
  items = item_keys[bench_util.zipf_ranks(rng, 1.2, args.items,
                                          args.examples)]
  return {"user": users, "item": items,
          "rating": rng.random(args.examples).astype(np.float32)}


def run_variant(args):
  data = make_data(args)
  steps = args.examples // args.batch_size

  def dataset_fn(input_context=None):
    del input_context
    return tf.data.Dataset.from_tensor_slices(data).batch(
        args.batch_size, drop_remainder=True).repeat().prefetch(2)

  shards = {}
  if args.variant == "local":
    strategy = None
    model = Ranking(args)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05),
                  steps_per_execution=args.steps_per_execution)
    fit_input = dataset_fn()
  else:
    cluster = distribute.LocalCluster(num_workers=int(args.variant),
                                      num_ps=2)
    strategy = distribute.parameter_server_strategy(cluster.resolver)
    with strategy.scope():
      model = Ranking(args)
      model.compile(optimizer=tf.keras.optimizers.Adagrad(0.05),
                    steps_per_execution=args.steps_per_execution)
    fit_input = tf.keras.utils.experimental.DatasetCreator(dataset_fn)
  seconds = []
  for _ in range(args.epochs):
    started = time.perf_counter()
    model.fit(fit_input, epochs=1, steps_per_epoch=steps, verbose=0)
    seconds.append(time.perf_counter() - started)
  if strategy is not None:
    variables = model.variables + model.optimizer.variables()
    for table in (model.user, model.item):
      for shard in table.shards:
        names = {id(v) for v in shard.variables}
        slots = [v for v in model.optimizer.variables()
                 if v.name.endswith("/" + shard.embeddings.name)]
        size = sum(v.shape.num_elements() * v.dtype.size
                   for v in variables if id(v) in names) + sum(
                       v.shape.num_elements() * v.dtype.size for v in slots)
        shards[shard.name] = {"device": shard.embeddings.device,
                              "bytes": size,
                              "live_keys": int(shard.table.size())}
  timed = sorted(seconds[1:])
  median = timed[len(timed) // 2]
  return {"examples_per_s": steps * args.batch_size / median,
          "epoch_seconds": seconds, "shards": shards,
          "sizes": {t.name: int(t.table.size())
                    for t in (model.user, model.item)}}


def main():
  args = parse_args()
  if args.variant is not None:
    result = run_variant(args)
    print(json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # pylint: disable=protected-access  # Servers never stop.
  results = {}
  for variant in ("local", "1", "2"):
    argv = [a for a in sys.argv[1:]] + ["--variant", variant]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError(f"variant {variant} failed:\n{proc.stderr[-4000:]}")
    results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
  local = results["local"]["examples_per_s"]
  one = results["1"]["examples_per_s"]
  two = results["2"]["examples_per_s"]
  print(f"{'variant':<24}{'examples/s':>12}{'/ one process':>16}")
  for name, key in (("one process", "local"), ("1 worker, 2 PS", "1"),
                    ("2 workers, 2 PS", "2")):
    rate = results[key]["examples_per_s"]
    print(f"{name:<24}{rate:>12,.0f}{rate / local:>16.2f}")
  print(f"2 workers / 1 worker: {two / one:.2f}")
  print(f"{'shard (2 workers run)':<24}{'device':<42}{'MiB':>8}"
        f"{'live keys':>11}")
  for name, shard in sorted(results["2"]["shards"].items()):
    print(f"{name:<24}{shard['device']:<42}"
          f"{shard['bytes'] / 2**20:>8.2f}{shard['live_keys']:>11,}")
  bench_util.emit({
      "benchmark": "cluster",
      "args": {k: v for k, v in vars(args).items() if k != "variant"},
      "examples_per_s": {k: r["examples_per_s"] for k, r in results.items()},
      "two_over_one_worker": two / one,
      "one_worker_over_local": one / local,
      "shards": results["2"]["shards"],
  })


if __name__ == "__main__":
  main()
