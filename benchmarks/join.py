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
"""Benchmarks the batch joiner pipeline on Beam's local runners.

`--impressions` impression and `--actions` action events (JSON lines files,
written first) go through the whole batch joiner (`tfrs-monolith join`:
read, parse, `CoGroupByKey` join, negative sampling, `tf.train.Example`
serialization, gzip TFRecord shards). Reported: events/s (impressions +
actions over the pipeline's wall time) per runner, with the machine's core
count, and the ratio to a single-process plain-Python join of the same
events in the same run (parse, group in a dict, `attribute`, serialize),
the floor any framework overhead is measured against. The last stdout line
is the result as JSON.

Usage:
  python benchmarks/join.py [--impressions 1000000] [--actions 100000]
"""

import argparse
import collections
import json
import os
import tempfile
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
from tfrs_monolith import streams
from tfrs_monolith.beam import events as events_lib
from tfrs_monolith.beam import join as join_lib
from tfrs_monolith.beam import pipelines


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--impressions", type=int, default=1_000_000)
  parser.add_argument("--actions", type=int, default=100_000)
  parser.add_argument("--per_request", type=int, default=10,
                      help="Impressions per request.")
  parser.add_argument(
      "--runners",
      default="FnApiRunner,FnApiRunner/multi_processing,"
      "BundleBasedDirectRunner",
      help="Comma-separated Beam runners to time; FnApiRunner/<mode> sets "
      "--direct_running_mode.")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  if args.actions > args.impressions:
    parser.error("--actions must not exceed --impressions")
  return args


def write_events(args, directory):
  """JSON lines files of impressions and clicks on a share of them."""
  rng = np.random.default_rng(args.seed)
  users = rng.integers(0, 100_000, args.impressions // args.per_request + 1)
  items = rng.integers(0, 50_000, args.impressions)
  clicked = rng.choice(args.impressions, args.actions, replace=False)
  imp_path = os.path.join(directory, "impressions.jsonl")
  act_path = os.path.join(directory, "actions.jsonl")
  with open(imp_path, "w", encoding="utf-8") as f:
    for i in range(args.impressions):
      r = i // args.per_request
      f.write(json.dumps({"request_id": f"r{r}", "user_id": int(users[r]),
                          "item_id": int(items[i]),
                          "event_time": 1_700_000_000 + r,
                          "features": {"slot": i % args.per_request}}))
      f.write("\n")
  with open(act_path, "w", encoding="utf-8") as f:
    for i in np.sort(clicked):
      r = int(i) // args.per_request
      f.write(json.dumps({"request_id": f"r{r}", "item_id": int(items[i]),
                          "action": "click",
                          "event_time": 1_700_000_000 + r + 20}))
      f.write("\n")
  return imp_path, act_path


def plain_python_join(imp_path, act_path, config):
  """The same join in one process: parse, group in a dict, serialize."""
  groups = collections.defaultdict(lambda: ([], []))
  with open(imp_path, "rb") as f:
    for line in f:
      event = streams.parse_impression(line)
      groups[join_lib.join_key(event)][0].append(event)
  with open(act_path, "rb") as f:
    for line in f:
      event = streams.parse_action(line)
      groups[join_lib.join_key(event)][1].append(event)
  n = 0
  for impressions, actions in groups.values():
    example, _ = join_lib.attribute(impressions, actions, config)
    if example is not None:
      events_lib.to_example(example).SerializeToString()
      n += 1
  return n


def main():
  args = parse_args()
  cores = os.cpu_count()
  events = args.impressions + args.actions
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    imp_path, act_path = write_events(args, directory)
    print(f"wrote {args.impressions:,} impressions and {args.actions:,} "
          f"actions in {time.perf_counter() - start:.1f} s; {cores} cores")

    config = join_lib.JoinConfig(window_seconds=60)
    start = time.perf_counter()
    joined = plain_python_join(imp_path, act_path, config)
    plain_s = time.perf_counter() - start
    print(f"plain Python join: {joined:,} examples in {plain_s:.1f} s "
          f"({events / plain_s:,.0f} events/s)")

    seconds = {}
    for runner in args.runners.split(","):
      name, _, mode = runner.partition("/")
      if name == "FnApiRunner":
        name = pipelines.DEFAULT_RUNNER
      out = os.path.join(directory, runner.replace("/", "_"), "examples")
      argv = ["--impressions", imp_path, "--actions", act_path,
              "--output", out, "--window_seconds", "60",
              "--runner", name]
      if mode:
        argv += ["--direct_running_mode", mode, "--direct_num_workers", "0"]
      start = time.perf_counter()
      pipelines.run(argv, save_main_session=False)
      seconds[runner] = time.perf_counter() - start
      print(f"{runner}: {seconds[runner]:.1f} s "
            f"({events / seconds[runner]:,.0f} events/s, "
            f"{plain_s / seconds[runner]:.2f}x the plain Python join)")

  bench_util.emit({
      "benchmark": "join",
      "impressions": args.impressions,
      "actions": args.actions,
      "examples": joined,
      "cores": cores,
      "plain_python_seconds": round(plain_s, 2),
      "plain_python_events_per_s": round(events / plain_s),
      "runner_seconds": {k: round(v, 2) for k, v in seconds.items()},
      "events_per_s": {k: round(events / v) for k, v in seconds.items()},
      "ratio_to_plain_python": {k: round(plain_s / v, 3)
                                for k, v in seconds.items()},
  })


if __name__ == "__main__":
  main()
