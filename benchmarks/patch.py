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
"""Benchmarks sparse patches: size on the wire, build and publish time.

A `CollisionlessEmbedding` table with `--rows` touched rows (of
`--capacity`) exports one patch. Reported per embedding dimension:

* size ratio: bytes of all chunks of the patch / (rows x row bytes), where
  a row is `dim` float32 values (target <= 1.10): the overhead of keys,
  headers, chunking and checksums;
* build seconds: `export_patch()` (gather of the touched rows, keys,
  evicted keys) plus serialization into 1 MB chunks;
* publish seconds: sending every chunk to a topic and waiting until the
  broker has acknowledged all (`acks=all`), on a real Kafka broker started
  for the run (and on the file transport).

The last stdout line is the result as JSON.

Usage:
  python benchmarks/patch.py [--rows 100000] [--dims 16,32,64]
"""

import argparse
import importlib.util
import pathlib
import tempfile
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tfrs_monolith as tm
import tensorflow as tf
from tfrs_monolith import streams

TARGET_RATIO = 1.10
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=100_000)
  parser.add_argument("--capacity", type=int, default=200_000)
  parser.add_argument("--dims", default="16,32,64")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_kafka", action="store_true",
                      help="Skip the Kafka broker (file transport only).")
  return parser.parse_args()


def _broker_module():
  spec = importlib.util.spec_from_file_location(
      "kafka_broker", _ROOT / "scripts" / "kafka_broker.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _touched_layer(dim, args, rng):
  layer = tm.CollisionlessEmbedding(dim, capacity=args.capacity)
  keys = bench_util.random_keys(rng, args.rows)
  for start in range(0, args.rows, 65_536):
    layer(tf.constant(keys[start:start + 65_536]), training=True)
  layer.export_patch()            # Clears; the next export sees the touch.
  return layer, keys


def main():
  args = parse_args()
  rng = np.random.default_rng(0)
  transports = {}
  tmp = tempfile.TemporaryDirectory()
  broker = None
  if not args.no_kafka:
    module = _broker_module()
    module.fetch(quiet=True)
    broker = module.KafkaBroker(pathlib.Path(tmp.name) / "kafka")
    broker.start()
    transports["kafka"] = streams.open_transport(
        f"kafka://{broker.bootstrap_servers}")
  transports["file"] = streams.FileTransport(f"{tmp.name}/topics")
  results = {}
  try:
    for dim in [int(d) for d in args.dims.split(",")]:
      layer, keys = _touched_layer(dim, args, rng)
      builds, publishes = [], {name: [] for name in transports}
      for repeat in range(args.repeats):
        layer(tf.constant(keys), training=True)          # Touch them all.
        start = time.perf_counter()
        patch = layer.export_patch("bench")
        chunks = patch.to_chunks()
        builds.append(time.perf_counter() - start)
        assert len(patch) == args.rows, len(patch)
        for name, transport in transports.items():
          topic = f"patches-{dim}-{repeat}"
          transport.create_topics([topic])
          with transport.producer() as producer:
            start = time.perf_counter()
            for chunk in chunks:
              producer.send(topic, chunk, key=patch.patch_id.encode())
            producer.flush()
            publishes[name].append(time.perf_counter() - start)
      size = sum(len(c) for c in chunks)
      raw = args.rows * dim * 4
      results[dim] = {
          "bytes": size,
          "chunks": len(chunks),
          "ratio": round(size / raw, 4),
          "build_s": round(float(np.median(builds)), 4),
          "publish_s": {k: round(float(np.median(v)), 4)
                        for k, v in publishes.items()},
      }
      print(f"dim {dim:3d}: {size:,} bytes in {len(chunks)} chunks for "
            f"{args.rows:,} rows = {size / raw:.3f}x the raw rows; build "
            f"{results[dim]['build_s'] * 1e3:.0f} ms, publish " +
            ", ".join(f"{k} {v * 1e3:.0f} ms"
                      for k, v in results[dim]["publish_s"].items()))
  finally:
    if broker is not None:
      broker.stop()
    tmp.cleanup()
  meets = {dim: r["ratio"] <= TARGET_RATIO for dim, r in results.items()}
  print(f"target <= {TARGET_RATIO:.2f}x: " + ", ".join(
      f"dim {d} {'met' if ok else 'missed'}" for d, ok in meets.items()))
  bench_util.emit({
      "benchmark": "patch",
      "rows": args.rows,
      "capacity": args.capacity,
      "repeats": args.repeats,
      "by_dim": {str(d): r for d, r in results.items()},
      "target_ratio": TARGET_RATIO,
      "meets_target": {str(d): ok for d, ok in meets.items()},
  })


if __name__ == "__main__":
  main()
