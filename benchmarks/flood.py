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
"""Benchmarks a full `CollisionlessEmbedding` under a flood of fresh ids.

A table of `--capacity` rows (`min_count=2`) trains on batches that each
hold every one of `--frequent` ids once plus as many Zipf(`--zipf`) draws
among them. After `--warm_batches` such batches, each of `--flood_batches`
batches also holds `--flood_factor` times that traffic of ids never seen
again. The clock moves one second per batch (event time, as the online
trainer sets it).

The hit rate of the frequent ids is the fraction of their lookups in a
batch that find a live row: before the batch is trained (what serving
reads) and after (what the batch's admissions and evictions left).
Variants:

* `once_seen`: each flood id occurs once; the admission sketch has the
  layer's default width (`max(4096, capacity)`) and window (its counts
  halve after as many occurrences of ids without a row).
* `once_seen_no_aging`: the same with counts that never age
  (`admission_window=0`).
* `once_seen_wide`: the same with `--wide_width` counters per row, no aging.
* `repeated`: each flood id occurs `--repeat` times in its batch, so it
  passes admission and the table fills: least-recently-seen eviction.
* `oversized`: as `repeated`, with more new ids per batch than the rows
  the frequent ids leave (`capacity - frequent`).

Per variant: the hit rate after the last warm-up batch
(`hit_before_flood`), before each flood batch (`hit_during_flood_mean`,
`_min`) and after each (`hit_after_batch_min`); the fraction of each
batch's flood ids that hold a row after it; table sizes; ids the full
table refused (`rejected`); and whether every live key has its own row
(`rows_unshared`).

Baseline (`hashing`, per variant): the same ids in a hashing-trick table
of `--capacity` slots (`id % capacity`); a frequent id's lookup "hits"
when no other id seen so far shares its slot. Before the flood that is
the frequent ids alone; during it, with every flood id seen so far.

The last stdout line is the result as JSON.

Usage:
  python benchmarks/flood.py [--capacity 65536] [--frequent 4096] ...
"""

import argparse
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tfrs_monolith as tm
import tensorflow as tf

VARIANTS = ("once_seen", "once_seen_no_aging", "once_seen_wide", "repeated",
            "oversized")


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--capacity", type=int, default=65_536)
  parser.add_argument("--frequent", type=int, default=4_096,
                      help="Frequent ids, each in every batch.")
  parser.add_argument("--zipf", type=float, default=1.1,
                      help="Zipf exponent of the frequent ids' repeats.")
  parser.add_argument("--flood_factor", type=int, default=10,
                      help="Flood lookups per frequent lookup.")
  parser.add_argument("--repeat", type=int, default=4,
                      help="Occurrences of a flood id in `repeated`.")
  parser.add_argument("--warm_batches", type=int, default=3)
  parser.add_argument("--flood_batches", type=int, default=16)
  parser.add_argument("--wide_width", type=int, default=1 << 23,
                      help="Admission sketch width of `once_seen_wide`.")
  parser.add_argument("--dim", type=int, default=8)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args()


def hashing_hit_rate(seen_slots_count, frequent_slots, lookups):
  """Fraction of `lookups` (indices into the frequent ids) whose slot no
  other seen id shares."""
  alone = seen_slots_count[frequent_slots] == 1
  return float(alone[lookups].mean())


def run(args, name):
  """Trains one variant; returns its figures.

  Every variant gets the same frequent ids and Zipf draws (`--seed`).
  """
  capacity, num_frequent = args.capacity, args.frequent
  frequent_lookups = 2 * num_frequent
  flood_lookups = args.flood_factor * frequent_lookups
  repeat = 1 if name.startswith("once_seen") else args.repeat
  if name == "oversized":
    # New ids per batch: 25 % more than the rows left by the frequent ids.
    flood_lookups = repeat * (capacity - num_frequent) * 5 // 4
  fresh_per_batch = flood_lookups // repeat
  frequent = bench_util.random_keys(np.random.default_rng(args.seed),
                                    num_frequent)
  flood = bench_util.random_keys(np.random.default_rng(args.seed + 1),
                                 fresh_per_batch * args.flood_batches)
  # (Random 62-bit keys: a frequent one among them is practically never.)
  flood = flood[~np.isin(flood, frequent)]
  zipf_rng = np.random.default_rng(args.seed + 2)
  shuffle_rng = np.random.default_rng(args.seed + 3)
  layer = tm.CollisionlessEmbedding(
      args.dim, capacity=capacity, min_count=2,
      admission_width=args.wide_width if name == "once_seen_wide" else None,
      admission_window=(0 if name in ("once_seen_no_aging", "once_seen_wide")
                        else None))
  slot_count = np.zeros(capacity, np.int64)
  np.add.at(slot_count, frequent % capacity, 1)
  frequent_slots = frequent % capacity
  now = 1_700_000_000
  rows = []
  start = time.perf_counter()
  train_seconds = 0.0
  for b in range(args.warm_batches + args.flood_batches):
    lookups = np.concatenate([
        np.arange(num_frequent),
        bench_util.zipf_ranks(zipf_rng, args.zipf, num_frequent,
                              frequent_lookups - num_frequent)])
    batch = [frequent[lookups]]
    in_flood = b >= args.warm_batches
    if in_flood:
      i = b - args.warm_batches
      fresh = flood[i * fresh_per_batch:(i + 1) * fresh_per_batch]
      np.add.at(slot_count, fresh % capacity, 1)
      batch.append(np.repeat(fresh, repeat))
    batch = np.concatenate(batch)
    shuffle_rng.shuffle(batch)
    now += 1
    layer.advance_clock(now)
    looked_up = tf.constant(frequent[lookups])
    hit_before = float(layer.read_rows(looked_up)[1].numpy().mean())
    t = time.perf_counter()
    with tm.embedding.learning():
      layer(tf.constant(batch, tf.int64)).numpy()
    train_seconds += time.perf_counter() - t
    rows.append({
        "flood": in_flood,
        "hit_before": hit_before,
        "hit_after": float(layer.read_rows(looked_up)[1].numpy().mean()),
        "hashing_hit": hashing_hit_rate(slot_count, frequent_slots, lookups),
        "size": int(layer.table.size()),
        # The batch's flood ids that hold a row after it: admitted (and
        # given room).
        "flood_live": (float(layer.read_rows(tf.constant(fresh))[1].numpy()
                             .mean()) if in_flood else None),
    })
  # No two live keys share a row, and each row knows its key.
  live = layer.live_keys().numpy()
  live_rows = layer.table.lookup(tf.constant(live)).numpy()
  unshared = bool(
      len(np.unique(live)) == len(live) and (live_rows >= 0).all() and
      len(np.unique(live_rows)) == len(live_rows) and
      (layer.table.row_keys.numpy()[live_rows] == live).all())
  warm = rows[args.warm_batches - 1]
  during = rows[args.warm_batches:]
  return {
      "flood_id_repeats": repeat,
      "admission_width": layer.sketch.width,
      "admission_window": layer.sketch.window,
      "flood_lookups_per_batch": flood_lookups,
      "new_flood_ids_per_batch": fresh_per_batch,
      "flood_ids_total": fresh_per_batch * args.flood_batches,
      "flood_ids_total_over_capacity": round(
          fresh_per_batch * args.flood_batches / capacity, 2),
      "hit_before_flood": round(warm["hit_after"], 5),
      "hit_during_flood_mean": round(
          float(np.mean([r["hit_before"] for r in during])), 5),
      "hit_during_flood_min": round(
          min(r["hit_before"] for r in during), 5),
      "hit_after_batch_min": round(min(r["hit_after"] for r in during), 5),
      "hashing_hit_before_flood": round(warm["hashing_hit"], 5),
      "hashing_hit_during_flood_mean": round(
          float(np.mean([r["hashing_hit"] for r in during])), 5),
      "hashing_hit_end_of_flood": round(during[-1]["hashing_hit"], 5),
      "table_size_before_flood": warm["size"],
      "table_size_end": during[-1]["size"],
      "flood_ids_live_after_their_batch": round(
          float(np.mean([r["flood_live"] for r in during])), 5),
      "rejected": int(layer.table.rejected),
      "rows_unshared": unshared,
      "train_seconds": round(train_seconds, 2),
      "seconds": round(time.perf_counter() - start, 2),
  }


def main():
  args = parse_args()
  names = [v for v in args.variants.split(",") if v]
  for name in names:
    if name not in VARIANTS:
      raise SystemExit(f"unknown variant {name!r}; choose from {VARIANTS}")
  results = {}
  for name in names:
    results[name] = run(args, name)
    r = results[name]
    print(f"{name:15s} hit before flood {r['hit_before_flood']:.4f}, "
          f"during: mean {r['hit_during_flood_mean']:.4f} min "
          f"{r['hit_during_flood_min']:.4f}, after a batch min "
          f"{r['hit_after_batch_min']:.4f}; hashing trick "
          f"{r['hashing_hit_before_flood']:.4f} -> "
          f"{r['hashing_hit_during_flood_mean']:.4f}; table "
          f"{r['table_size_before_flood']} -> {r['table_size_end']} rows; "
          f"{r['flood_ids_live_after_their_batch']:.4f} of flood ids got a "
          f"row ({r['seconds']:.0f} s)", flush=True)
  bench_util.emit({
      "benchmark": "flood",
      "capacity": args.capacity,
      "num_frequent": args.frequent,
      "frequent_lookups_per_batch": 2 * args.frequent,
      "zipf": args.zipf,
      "flood_factor": args.flood_factor,
      "warm_batches": args.warm_batches,
      "flood_batches": args.flood_batches,
      "min_count": 2,
      "variants": results,
  })


if __name__ == "__main__":
  main()
