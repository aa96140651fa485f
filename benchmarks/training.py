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
"""Benchmarks `model.fit` of a TFRS ranking model: ours vs the hashing trick.

The same ranking model (user and item id embeddings, an MLP 64-32-1 on their
concatenation, `tfrs.tasks.Ranking` with MSE, Adagrad) is trained on
synthetic Zipf-distributed (user, item, rating) examples, with

* `ours`: `tm.CollisionlessEmbedding` tables in a `tm.Model`;
* `hashing` (the baseline): `tf.keras.layers.Hashing(capacity)` then
  `tf.keras.layers.Embedding(capacity, dim)`, the Keras way to embed ids
  with the hashing trick, in a `tfrs.Model`;
* `modulo` (the floor): `tf.keras.layers.Embedding(capacity, dim)` on
  `id % capacity`, which skips the hash,

all with the same `capacity` per feature. Ids are random 64-bit keys, so
the hashing trick has collisions and the collisionless table does not.
`ratio` is ours over `hashing`; `floor_ratio` is ours over `modulo`.

The models train one epoch at a time, in turn, so that a background
load affects all alike. The first epoch of each (tracing) is not timed;
examples/s is the number of examples over the median time of the others.
Examples per CPU second (process CPU time, all threads) are reported too:
they depend less on other processes' load than wall-clock figures.

Then the training step alone is timed, without `fit`'s per-epoch work
(callbacks, iterator set-up), which all models pay alike and which so
brings an epoch's ratio closer to 1: each model's compiled train function
runs blocks of `--block_steps` steps, the models taking turns, and the
median time per step of `--step_blocks` blocks each gives `step_ratio`
(against `hashing`) and `floor_step_ratio` (against `modulo`).
The last stdout line is the result as JSON.

Usage:
  python benchmarks/training.py [--examples 200000] [--users 100000] ...
"""

import argparse
import functools
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tfrs_monolith as tm
import tensorflow as tf
import tensorflow_recommenders as tfrs

TARGET_RATIO = 0.90


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--examples", type=int, default=200_000)
  parser.add_argument("--users", type=int, default=100_000,
                      help="Distinct user ids to draw from.")
  parser.add_argument("--items", type=int, default=50_000,
                      help="Distinct item ids to draw from.")
  parser.add_argument("--user_capacity", type=int, default=131_072,
                      help="Rows of the user table (both models).")
  parser.add_argument("--item_capacity", type=int, default=65_536,
                      help="Rows of the item table (both models).")
  parser.add_argument("--zipf_a", type=float, default=1.2,
                      help="Zipf exponent of user and item ids.")
  parser.add_argument("--batch", type=int, default=1024)
  parser.add_argument("--dim", type=int, default=32,
                      help="Embedding dimension.")
  parser.add_argument("--epochs", type=int, default=5,
                      help="Epochs per model; the first is not timed.")
  parser.add_argument("--step_blocks", type=int, default=40,
                      help="Timed blocks of steps per model (0: none).")
  parser.add_argument("--block_steps", type=int, default=20,
                      help="Training steps per timed block.")
  parser.add_argument("--learning_rate", type=float, default=0.1)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.epochs < 2:
    parser.error("--epochs must be at least 2 (the first is not timed).")
  return args


def make_data(args):
  """A batched dataset of Zipf (user, item) ids and synthetic ratings."""
  rng = np.random.default_rng(args.seed)
  user_keys = bench_util.random_keys(rng, args.users)
  item_keys = bench_util.random_keys(rng, args.items)
  users = bench_util.zipf_ranks(rng, args.zipf_a, args.users, args.examples)
  items = bench_util.zipf_ranks(rng, args.zipf_a, args.items, args.examples)
  # Ratings from hidden per-user and per-item biases plus noise.
  user_bias = rng.normal(0.0, 0.5, args.users)
  item_bias = rng.normal(0.0, 0.8, args.items)
  rating = np.clip(3.0 + user_bias[users] + item_bias[items] +
                   rng.normal(0.0, 0.5, args.examples), 1.0, 5.0)
  features = {
      "user_id": user_keys[users],
      "item_id": item_keys[items],
      "rating": rating.astype(np.float32),
  }
  stats = {
      "distinct_users": int(np.unique(users).size),
      "distinct_items": int(np.unique(items).size),
  }
  dataset = tf.data.Dataset.from_tensor_slices(features).batch(
      args.batch).cache().prefetch(tf.data.AUTOTUNE)
  return dataset, stats


class ModuloEmbedding(tf.keras.layers.Layer):
  """`tf.keras.layers.Embedding(capacity, dim)` on `id % capacity`."""

  def __init__(self, output_dim, capacity, **kwargs):
    super().__init__(**kwargs)
    self.capacity = capacity
    self.embedding = tf.keras.layers.Embedding(capacity, output_dim)

  def call(self, ids):
    return self.embedding(tf.math.floormod(ids, self.capacity))


def hashing_embedding(output_dim, capacity):
  """`tf.keras.layers.Hashing(capacity)` then `Embedding(capacity, dim)`."""
  return tf.keras.Sequential([
      tf.keras.layers.Hashing(capacity),
      tf.keras.layers.Embedding(capacity, output_dim),
  ])


KINDS = ("hashing", "modulo", "ours")
# JSON key prefix of the ratios against each model ours is compared with.
BASES = (("", "hashing"), ("floor_", "modulo"))


def speed_ratios(seconds, name):
  """Ours' speed over each base's, from `seconds` (kind -> time for the same
  work): `{name: ...}` against `hashing`, `{"floor_" + name: ...}` against
  `modulo`, rounded to 3 digits."""
  return {prefix + name: round(seconds[base] / seconds["ours"], 3)
          for prefix, base in BASES}


def make_model(kind, args):
  """The ranking model with `kind` (one of `KINDS`) embeddings."""
  base = tm.Model if kind == "ours" else tfrs.models.Model

  class RankingModel(base):
    """User and item embeddings -> MLP -> rating."""

    def __init__(self):
      super().__init__()
      if kind == "ours":
        self.user_embedding = tm.CollisionlessEmbedding(
            args.dim, capacity=args.user_capacity)
        self.item_embedding = tm.CollisionlessEmbedding(
            args.dim, capacity=args.item_capacity)
      elif kind == "hashing":
        self.user_embedding = hashing_embedding(args.dim, args.user_capacity)
        self.item_embedding = hashing_embedding(args.dim, args.item_capacity)
      else:
        self.user_embedding = ModuloEmbedding(args.dim, args.user_capacity)
        self.item_embedding = ModuloEmbedding(args.dim, args.item_capacity)
      self.mlp = tf.keras.Sequential([
          tf.keras.layers.Dense(64, activation="relu"),
          tf.keras.layers.Dense(32, activation="relu"),
          tf.keras.layers.Dense(1),
      ])
      self.task = tfrs.tasks.Ranking(
          loss=tf.keras.losses.MeanSquaredError(),
          metrics=[tf.keras.metrics.RootMeanSquaredError()])

    def compute_loss(self, features, training=False):
      user = self.user_embedding(features["user_id"], training=training)
      item = self.item_embedding(features["item_id"], training=training)
      prediction = self.mlp(tf.concat([user, item], axis=1))
      return self.task(labels=features["rating"], predictions=prediction)

  model = RankingModel()
  model.compile(optimizer=tf.keras.optimizers.Adagrad(args.learning_rate))
  return model


def time_steps(models, dataset, blocks, block_steps):
  """Median wall and CPU seconds per training step of each model.

  Runs each model's train function (as `fit` does, one step per call) in
  `blocks` blocks of `block_steps` steps, the models taking turns
  (`bench_util.time_interleaved`).
  """
  def block(train_function, iterator):
    for _ in range(block_steps):
      logs = train_function(iterator)
    return logs

  fns = {kind: functools.partial(block, model.make_train_function(),
                                 iter(dataset.repeat()))
         for kind, model in models.items()}
  wall, cpu = bench_util.time_interleaved(fns, warmup=0, repeats=blocks)
  return ({kind: float(np.median(v)) / block_steps for kind, v in wall.items()},
          {kind: float(np.median(v)) / block_steps for kind, v in cpu.items()})


def main():
  args = parse_args()
  dataset, stats = make_data(args)
  steps = -(-args.examples // args.batch)
  print(f"{args.examples:,} examples ({stats['distinct_users']:,} distinct "
        f"users of {args.users:,}, {stats['distinct_items']:,} items of "
        f"{args.items:,}), batch {args.batch}, {steps} steps/epoch, dim "
        f"{args.dim}, capacity {args.user_capacity:,} / "
        f"{args.item_capacity:,}")
  for _ in dataset:  # Fills the cache before any timing.
    pass

  models = {kind: make_model(kind, args) for kind in KINDS}
  epoch_seconds = {kind: [] for kind in models}
  epoch_cpu_seconds = {kind: [] for kind in models}
  rmse = {}
  for epoch in range(args.epochs):
    for kind in bench_util.turn_order(KINDS, epoch):
      start = time.perf_counter()
      cpu_start = time.process_time()
      history = models[kind].fit(dataset, epochs=1, verbose=0)
      seconds = time.perf_counter() - start
      cpu_seconds = time.process_time() - cpu_start
      epoch_seconds[kind].append(seconds)
      epoch_cpu_seconds[kind].append(cpu_seconds)
      rmse[kind] = float(history.history["root_mean_squared_error"][-1])
      print(f"epoch {epoch + 1} {kind:8s} {seconds:6.2f} s "
            f"({cpu_seconds:6.2f} s CPU)  {args.examples / seconds:9.0f} "
            f"examples/s  rmse {rmse[kind]:.4f}"
            f"{'  (warm-up, not timed)' if epoch == 0 else ''}")

  epoch_wall = {kind: float(np.median(s[1:]))
                for kind, s in epoch_seconds.items()}
  # CPU time is less sensitive than wall time to other processes' load.
  epoch_cpu = {kind: float(np.median(s[1:]))
               for kind, s in epoch_cpu_seconds.items()}
  rate = {kind: args.examples / s for kind, s in epoch_wall.items()}
  cpu_rate = {kind: args.examples / s for kind, s in epoch_cpu.items()}
  ratio = rate["ours"] / rate["hashing"]
  ratios = {**speed_ratios(epoch_wall, "ratio"),
            **speed_ratios(epoch_cpu, "cpu_ratio")}
  ours_model = models["ours"]
  rows = {
      "user": int(ours_model.user_embedding.table.size()),
      "item": int(ours_model.item_embedding.table.size()),
  }
  print(f"\nexamples/s (median of {args.epochs - 1} warm epochs): "
        + ", ".join(f"{k} {v:.0f}" for k, v in rate.items()))
  print(f"ours/hashing = {ratios['ratio']:.3f} "
        f"({'meets' if ratio >= TARGET_RATIO else 'misses'} the target of "
        f">= {TARGET_RATIO:.2f}); ours/modulo = {ratios['floor_ratio']:.3f}")
  print("examples per CPU second: "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu_rate.items())
        + f"; ours/hashing = {ratios['cpu_ratio']:.3f}, ours/modulo = "
        f"{ratios['floor_cpu_ratio']:.3f}")
  print(f"ours holds {rows['user']:,} user and {rows['item']:,} item keys")

  steps = {}
  if args.step_blocks > 0:
    step_wall, step_cpu = time_steps(models, dataset, args.step_blocks,
                                     args.block_steps)
    steps = {
        "step_seconds": {k: round(v, 6) for k, v in step_wall.items()},
        "step_cpu_seconds": {k: round(v, 6) for k, v in step_cpu.items()},
        **speed_ratios(step_wall, "step_ratio"),
        **speed_ratios(step_cpu, "step_cpu_ratio"),
    }
    print(f"training step alone (median of {args.step_blocks} blocks of "
          f"{args.block_steps}): "
          + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in step_wall.items())
          + f"; ours/hashing examples/s = {steps['step_ratio']:.3f} wall, "
          f"{steps['step_cpu_ratio']:.3f} CPU; ours/modulo = "
          f"{steps['floor_step_ratio']:.3f} wall, "
          f"{steps['floor_step_cpu_ratio']:.3f} CPU")

  bench_util.emit({
      "benchmark": "training",
      "examples": args.examples,
      "users": args.users,
      "items": args.items,
      **stats,
      "user_capacity": args.user_capacity,
      "item_capacity": args.item_capacity,
      "zipf_a": args.zipf_a,
      "batch": args.batch,
      "dim": args.dim,
      "epochs": args.epochs,
      "epoch_seconds": {k: [round(x, 3) for x in v]
                        for k, v in epoch_seconds.items()},
      "epoch_cpu_seconds": {k: [round(x, 3) for x in v]
                            for k, v in epoch_cpu_seconds.items()},
      "examples_per_s": {k: round(v, 1) for k, v in rate.items()},
      "examples_per_cpu_s": {k: round(v, 1) for k, v in cpu_rate.items()},
      **ratios,
      "target_ratio": TARGET_RATIO,
      "meets_target": bool(ratio >= TARGET_RATIO),
      **steps,
      "final_rmse": {k: round(v, 4) for k, v in rmse.items()},
      "ours_table_keys": rows,
  })


if __name__ == "__main__":
  main()
