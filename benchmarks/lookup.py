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
"""Benchmarks ids -> vectors: `CollisionlessEmbedding` vs alternatives.

A batch of Zipf-distributed ids (random 64-bit keys) is looked up against a
table holding `--live` keys, and turned into `--dim`-wide vectors, by:

* `floor`: the hashing trick, `tf.gather(E, id % capacity)`: one gather,
  no collision handling; timed in graph mode and with XLA, the faster of the
  two is the floor;
* `ours`: `CollisionlessEmbedding` in inference (`layer(ids,
  training=False)`), in graph mode and with XLA, the faster is reported;
* `ours_split`: the same lookup composed from its public parts: the
  XLA-compiled `table.lookup_flat(compiled=True)` then a graph-mode gather of
  `layer.embeddings`, absent ids mapped to the never-used zero row
  `capacity` instead of masking the vectors;
* `dense_hash_table` / `mutable_hash_table`: `tf.lookup.experimental`
  `DenseHashTable` / `MutableHashTable` (int64 key -> int64 row), then the
  same gather.

Each figure is the median of `--repeats` calls, timed in interleaved rounds,
in microseconds per batch and as a ratio to the floor; process CPU time per
call (all threads) is shown too, as it depends less on other processes'
load. The last stdout line is the result as JSON.

Usage:
  python benchmarks/lookup.py [--capacity 1000000] [--live 800000] ...
"""

import argparse
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tfrs_monolith as tm
import tensorflow as tf

TARGET_RATIO = 1.10


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--capacity", type=int, default=1_000_000,
                      help="Rows of every table.")
  parser.add_argument("--live", type=int, default=800_000,
                      help="Keys inserted before the lookups.")
  parser.add_argument("--batch", type=int, default=65_536,
                      help="Ids per lookup.")
  parser.add_argument("--dim", type=int, default=64,
                      help="Embedding dimension.")
  parser.add_argument("--zipf_a", type=float, default=1.2,
                      help="Zipf exponent of the ids.")
  parser.add_argument("--chunk", type=int, default=100_000,
                      help="Keys per bulk insert while populating.")
  parser.add_argument("--warmup", type=int, default=5,
                      help="Untimed calls per variant.")
  parser.add_argument("--repeats", type=int, default=30,
                      help="Timed calls per variant.")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if not 0 < args.live <= args.capacity:
    parser.error("--live must be in (0, --capacity].")
  return args


def populate(args, keys):
  """Builds the three tables and the layer, all holding `keys`."""
  layer = tm.CollisionlessEmbedding(args.dim, capacity=args.capacity)
  layer.build(None)
  table = layer.table

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def insert(chunk):
    return table.insert_flat(chunk, 0)

  dense = tf.lookup.experimental.DenseHashTable(
      key_dtype=tf.int64, value_dtype=tf.int64, default_value=args.capacity,
      empty_key=-1, deleted_key=-2,
      # Power of two with room for all rows below the default 0.8 maximum
      # load, so that the table never grows while populated.
      initial_num_buckets=1 << int(np.ceil(np.log2(args.capacity / 0.8))))
  mutable = tf.lookup.experimental.MutableHashTable(
      key_dtype=tf.int64, value_dtype=tf.int64, default_value=args.capacity)

  insert(tf.zeros([0], tf.int64))  # Traces and instantiates the function.
  start = time.perf_counter()
  rows = np.empty(keys.size, np.int64)
  for i in range(0, keys.size, args.chunk):
    rows[i:i + args.chunk] = insert(tf.constant(keys[i:i + args.chunk]))
  seconds = time.perf_counter() - start
  if int(table.size()) != keys.size or int(table.rejected.numpy()) != 0:
    raise RuntimeError(
        f"populating the cuckoo table failed: size {int(table.size())} of "
        f"{keys.size}, rejected {int(table.rejected.numpy())}")
  print(f"populated CuckooHashTable with {keys.size:,} keys in "
        f"{seconds:.2f} s ({keys.size / seconds / 1e6:.2f} M keys/s, "
        f"index load {float(table.index_load_factor()):.3f})")

  for i in range(0, keys.size, args.chunk):
    k = tf.constant(keys[i:i + args.chunk])
    r = tf.constant(rows[i:i + args.chunk])
    dense.insert(k, r)
    mutable.insert(k, r)

  # Random vectors in the rows in use; the extra row `capacity` stays zero.
  rng = tf.random.Generator.from_seed(args.seed)
  layer.embeddings[:args.capacity].assign(
      rng.normal([args.capacity, args.dim]))
  return layer, dense, mutable


def main():
  args = parse_args()
  rng = np.random.default_rng(args.seed)
  keys = bench_util.random_keys(rng, args.live)
  ids_np = keys[bench_util.zipf_ranks(rng, args.zipf_a, args.live,
                                      args.batch)]
  distinct = np.unique(ids_np).size
  print(f"capacity {args.capacity:,}, live keys {args.live:,}, batch "
        f"{args.batch:,} Zipf({args.zipf_a}) ids ({distinct:,} distinct), "
        f"dim {args.dim}")

  layer, dense, mutable = populate(args, keys)
  table = layer.table
  capacity = args.capacity
  ids = tf.constant(ids_np)
  # The floor's own table, of `capacity` rows.
  floor_table = tf.Variable(
      tf.random.stateless_normal([capacity, args.dim], [args.seed, 1]))

  def floor(x):
    return tf.gather(floor_table, x % capacity)

  def ours(x):
    return layer(x, training=False)

  probe_xla = tf.function(lambda x: table.lookup_flat(x, compiled=True),
                          jit_compile=True)

  def ours_split(x):
    rows = probe_xla(x)
    return tf.gather(layer.embeddings, tf.where(rows < 0, capacity, rows))

  def from_hash_table(hash_table):
    def lookup(x):
      return tf.gather(layer.embeddings, hash_table.lookup(x))
    return lookup

  variants = {
      "floor_graph": tf.function(floor),
      "floor_xla": tf.function(floor, jit_compile=True),
      "ours_graph": tf.function(ours),
      "ours_xla": tf.function(ours, jit_compile=True),
      "ours_split": tf.function(ours_split),
      "dense_hash_table": tf.function(from_hash_table(dense)),
      "mutable_hash_table": tf.function(from_hash_table(mutable)),
  }

  # All collisionless variants must return the same vectors.
  expected = variants["dense_hash_table"](ids).numpy()
  for name in ("ours_graph", "ours_xla", "ours_split", "mutable_hash_table"):
    if not np.array_equal(variants[name](ids).numpy(), expected):
      raise RuntimeError(f"{name} returned different vectors")

  times, cpu_times = bench_util.time_interleaved(
      {name: (lambda f=f: f(ids)) for name, f in variants.items()},
      warmup=args.warmup, repeats=args.repeats)
  us = {name: float(np.median(t)) * 1e6 for name, t in times.items()}
  us_min = {name: float(np.min(t)) * 1e6 for name, t in times.items()}
  cpu_us = {name: float(np.median(t)) * 1e6 for name, t in cpu_times.items()}

  floor_name = min(("floor_graph", "floor_xla"), key=us.get)
  ours_name = min(("ours_graph", "ours_xla"), key=us.get)
  floor_us = us[floor_name]
  ratios = {name: v / floor_us for name, v in us.items()}
  ours_ratio = us[ours_name] / floor_us

  print(f"\nmedian of {args.repeats} calls: wall time (min in brackets), "
        f"ratio to the floor ({floor_name}), CPU time (all threads):")
  for name in variants:
    mark = " <- floor" if name == floor_name else (
        " <- ours" if name == ours_name else "")
    print(f"  {name:20s} {us[name]:8.0f} us [{us_min[name]:8.0f}] "
          f"{ratios[name]:6.2f}x   CPU {cpu_us[name]:8.0f} us{mark}")
  verdict = "meets" if ours_ratio <= TARGET_RATIO else "misses"
  print(f"ours ({ours_name}) = {ours_ratio:.2f}x the floor: {verdict} the "
        f"target of <= {TARGET_RATIO:.2f}x")

  bench_util.emit({
      "benchmark": "lookup",
      "capacity": capacity,
      "live_keys": args.live,
      "batch": args.batch,
      "distinct_ids_in_batch": int(distinct),
      "dim": args.dim,
      "zipf_a": args.zipf_a,
      "repeats": args.repeats,
      "us_per_batch_median": {k: round(v, 1) for k, v in us.items()},
      "us_per_batch_min": {k: round(v, 1) for k, v in us_min.items()},
      "ratio_to_floor": {k: round(v, 3) for k, v in ratios.items()},
      "cpu_us_per_batch_median": {k: round(v, 1) for k, v in cpu_us.items()},
      "floor_variant": floor_name,
      "ours_variant": ours_name,
      "floor_us": round(floor_us, 1),
      "ours_us": round(us[ours_name], 1),
      "ours_ratio": round(ours_ratio, 3),
      "target_ratio": TARGET_RATIO,
      "meets_target": bool(ours_ratio <= TARGET_RATIO),
  })


if __name__ == "__main__":
  main()
