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
"""Benchmarks `CuckooHashTable` inserts: keys/s by load, and maximum load.

Fills tables with new random keys in batches through a `tf.function`
around `table.insert_flat(keys, 0)`, until the first failed placement or a
full table:

* `8x`: `CuckooHashTable(capacity=C, num_buckets=C // 8)` (8 slots/bucket);
* `4x`: `CuckooHashTable(capacity=C, slots_per_bucket=4,
  num_buckets=C // 4)`;
* `default`: `CuckooHashTable(capacity=C)`, the table the embedding layer
  builds (4 slots/bucket, an index of `C / 0.9` slots).

The first two are tight: the index has exactly `C` slots, so its load
equals the row load (`table.load_factor()`, live keys / capacity), and
placements start to fail before the rows run out. Load here is the row
load for every layout.

It reports new keys per second per load band (a batch's keys and time are
shared out over the bands its load range spans), and the load at the
first failed placement: the first batch where some key got row -1,
`table.rejected` grew, or the table gave up keys it held to make room
(with the default `full_policy="evict_lru"`, a new key whose two buckets
stay full takes the slot of their least recently seen key). Above `--fine_from` load,
batches are `--fine_batch` keys (the last coarse batch is cut short at that
load), to locate the failure load finely. The failure
load is given as the load before the failing batch (every placement up to
it succeeded; this is the figure held against the target) and after it (the
load when the table gave up on the unplaced keys).

Each layout is filled `--fills` times with fresh tables and keys; the
figures are medians over fills. The last stdout line is the result as JSON.

Usage:
  python benchmarks/insert.py [--capacity 1000000] [--batch 65536] ...
"""

import argparse
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tfrs_monolith as tm
import tensorflow as tf

TARGET_KEYS_PER_S = 2e6  # Up to 80 % load.
TARGET_FAIL_LOAD = 0.98
BANDS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 0.9),
         (0.9, 1.0))


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--capacity", type=int, default=1_000_000,
                      help="Rows of each table (= index slots of a tight one).")
  parser.add_argument("--batch", type=int, default=65_536,
                      help="New keys per insert call.")
  parser.add_argument("--fine_from", type=float, default=0.9,
                      help="Load from which batches are --fine_batch keys.")
  parser.add_argument("--fine_batch", type=int, default=2_048,
                      help="New keys per insert call above --fine_from.")
  parser.add_argument("--layouts", default="8,4,default",
                      help="Comma-separated layouts: slots per bucket of a "
                      "tight index, or 'default'.")
  parser.add_argument("--fills", type=int, default=3,
                      help="Fills per layout (fresh table and keys each).")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args()


def band_name(band):
  return f"{round(band[0] * 100)}-{round(band[1] * 100)}%"


def make_table(capacity, layout):
  """The table of a layout: "default", or slots per bucket of a tight one."""
  if layout == "default":
    return tm.CuckooHashTable(capacity)
  slots = int(layout)
  return tm.CuckooHashTable(capacity, slots_per_bucket=slots,
                            num_buckets=capacity // slots)


def fill(capacity, layout, args, rng):
  """Fills one table; returns its batch log and the failure point."""
  table = make_table(capacity, layout)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
  def insert(keys):
    return table.insert_flat(keys, 0)

  insert(tf.zeros([0], tf.int64))  # Traces and instantiates the function.
  keys = bench_util.random_keys(rng, capacity)
  # (load before, load after, new keys placed, wall seconds, CPU seconds)
  log = []
  failure = None
  pos = 0
  size = 0
  fine_start = int(args.fine_from * capacity)
  while pos < capacity:
    # Coarse batches stop at `fine_start`, fine ones follow.
    n = (min(args.batch, fine_start - size) if size < fine_start else
         args.fine_batch)
    batch = tf.constant(keys[pos:pos + n])
    pos += batch.shape[0]
    start = time.perf_counter()
    cpu_start = time.process_time()
    rows = insert(batch).numpy()
    cpu_seconds = time.process_time() - cpu_start
    seconds = time.perf_counter() - start
    new_size = int(table.size())
    rejected = int(table.rejected.numpy())
    unplaced = int(np.sum(rows < 0))
    # All keys are new and distinct: the size must grow by the batch size,
    # less the unplaced ones; any further shortfall is keys the table held
    # and lost.
    lost = size + batch.shape[0] - unplaced - new_size
    log.append((size / capacity, new_size / capacity,
                new_size - size, seconds, cpu_seconds))
    if unplaced or rejected or lost:
      failure = {
          "load_before": size / capacity,
          "load_after": new_size / capacity,
          "batch": int(batch.shape[0]),
          "unplaced": unplaced,
          "rejected": rejected,
          "lost": int(lost),
      }
      break
    size = new_size
  return log, failure, size / capacity, table


def band_rates(log, cpu=False):
  """New keys/s per load band, sharing each batch out over its load range.

  Args:
    log: the batch log of `fill`.
    cpu: use process CPU time instead of wall time.

  Returns:
    band name -> keys/s (None for bands not reached), plus "0-80%".
  """
  keys = {b: 0.0 for b in BANDS}
  seconds = {b: 0.0 for b in BANDS}
  for lo, hi, placed, wall, cpu_time in log:
    dt = cpu_time if cpu else wall
    if hi <= lo:
      continue
    for band in BANDS:
      overlap = max(0.0, min(hi, band[1]) - max(lo, band[0]))
      keys[band] += placed * overlap / (hi - lo)
      seconds[band] += dt * overlap / (hi - lo)
  rates = {band_name(b): (keys[b] / seconds[b] if seconds[b] else None)
           for b in BANDS}
  upto = [b for b in BANDS if b[1] <= 0.8]
  total_keys = sum(keys[b] for b in upto)
  total_seconds = sum(seconds[b] for b in upto)
  rates["0-80%"] = total_keys / total_seconds if total_seconds else None
  return rates


def median_or_none(values):
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def main():
  args = parse_args()
  rng = np.random.default_rng(args.seed)
  layouts = args.layouts.split(",")
  for layout in layouts:
    if layout != "default" and not layout.isdigit():
      raise ValueError(f"--layouts: {layout!r} is neither slots per bucket "
                       "nor 'default'")
  print(f"capacity {args.capacity:,}, batches of "
        f"{args.batch:,} keys, {args.fine_batch:,} above "
        f"{args.fine_from:.0%} load, {args.fills} fill(s) per layout")
  results = {}
  for layout in layouts:
    name = layout if layout == "default" else f"{layout}x"
    fills = []
    for i in range(args.fills):
      start = time.perf_counter()
      log, failure, final_load, table = fill(args.capacity, layout, args,
                                            rng)
      wall = time.perf_counter() - start
      rates = band_rates(log)
      cpu_rate = band_rates(log, cpu=True)["0-80%"]
      fills.append((rates, failure, final_load, cpu_rate))
      shown = "  ".join(
          f"{band} {rate / 1e6:.2f}" for band, rate in rates.items()
          if rate is not None)
      if failure:
        where = (f"first failed placement at load "
                 f"{failure['load_before']:.4f}-{failure['load_after']:.4f}"
                 f" ({failure['unplaced']} keys without a row, "
                 f"{failure['lost']} lost)")
      else:
        where = f"no failed placement up to load {final_load:.4f}"
      print(f"[{name} fill {i + 1}] M keys/s: {shown}  (0-80%: "
            f"{cpu_rate / 1e6:.2f} per CPU second)")
      print(f"[{name} fill {i + 1}] {where}; {wall:.1f} s")
    bands = {band: median_or_none([f[0][band] for f in fills])
             for band in fills[0][0]}
    failures = [f[1] for f in fills]
    # Load before the failing batch, or the final load if none failed.
    fail_loads = [failure["load_before"] if failure else final_load
                  for _, failure, final_load, _ in fills]
    after_loads = [f["load_after"] for f in failures if f]
    results[name] = {
        "slots_per_bucket": table.slots_per_bucket,
        "num_buckets": table.num_buckets,
        "index_slots": table.num_buckets * table.slots_per_bucket,
        "keys_per_s_by_band": {
            k: (round(v) if v is not None else None)
            for k, v in bands.items()},
        "keys_per_s_0_80": round(bands["0-80%"]),
        "keys_per_cpu_s_0_80": round(median_or_none([f[3] for f in fills])),
        "fail_load_before": [round(x, 5) for x in fail_loads],
        "fail_load_after": [
            round(f["load_after"], 5) if f else None for f in failures],
        "failed": [f is not None for f in failures],
        "fail_load_median": round(float(np.median(fail_loads)), 5),
        "fail_load_after_median": (round(median_or_none(after_loads), 5)
                                   if after_loads else None),
    }
    results[name]["meets_speed_target"] = bool(
        results[name]["keys_per_s_0_80"] >= TARGET_KEYS_PER_S)
    results[name]["meets_load_target"] = bool(
        results[name]["fail_load_median"] >= TARGET_FAIL_LOAD)
    results[name]["meets_both_targets"] = (
        results[name]["meets_speed_target"] and
        results[name]["meets_load_target"])

  print(f"\nmedians over {args.fills} fill(s), M new keys/s per load band:")
  header = "".join(f"{band_name(b):>10s}" for b in BANDS)
  print(f"  layout  {header}{'0-80%':>10s}   load at first failure "
        "(before-after the batch)")
  for name, r in results.items():
    cells = "".join(
        f"{v / 1e6:10.2f}" if v is not None else f"{'-':>10s}"
        for v in r["keys_per_s_by_band"].values())
    after = r["fail_load_after_median"]
    where = (f"{r['fail_load_median']:.4f}-{after:.4f}" if any(r["failed"])
             else f"none up to {r['fail_load_median']:.4f}")
    print(f"  {name:8s}{cells}   {where}")
  speed_ok = all(r["meets_speed_target"] for r in results.values())
  load_ok = all(r["meets_load_target"] for r in results.values())
  below = [n for n, r in results.items() if not r["meets_load_target"]]
  print(f"targets: >= {TARGET_KEYS_PER_S / 1e6:.0f} M keys/s up to 80 % "
        f"load: {'met' if speed_ok else 'missed'}; >= {TARGET_FAIL_LOAD} "
        f"load at the first failed placement: "
        f"{'met' if load_ok else 'missed'} "
        f"(below: {', '.join(below) or 'none'})")
  both = [n for n, r in results.items() if r["meets_both_targets"]]
  print(f"layouts meeting both targets: {', '.join(both) or 'none'}")

  bench_util.emit({
      "benchmark": "insert",
      "capacity": args.capacity,
      "batch": args.batch,
      "fine_from": args.fine_from,
      "fine_batch": args.fine_batch,
      "fills": args.fills,
      "layouts": results,
      "target_keys_per_s_0_80": TARGET_KEYS_PER_S,
      "target_fail_load": TARGET_FAIL_LOAD,
      "meets_speed_target": bool(speed_ok),
      "meets_load_target": bool(load_ok),
      "layouts_meeting_both": both,
  })


if __name__ == "__main__":
  main()
