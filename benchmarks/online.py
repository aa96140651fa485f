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
"""Benchmarks the online trainer: examples/s through Kafka vs from memory.

The same ranking model (user and item `CollisionlessEmbedding` tables, an
MLP, Adagrad) trains on the same `--examples` serialized `tf.train.Example`s
in batches of `--batch`:

* `memory`: the trainer's own step (`OnlineTrainer.train_batch`) fed
  records already in memory: parse + train, no transport;
* `kafka`: `OnlineTrainer.run` reading the examples topic of a real Kafka
  broker started for the run, with patches every `--sparse_interval`
  seconds (published and checkpointed, as in production);
* `file`: the same on the file transport.

Each variant gets a fresh model; its first `--warmup` batches (tracing) are
not timed. The ratio kafka / memory is the cost of streaming.
The last stdout line is the result as JSON.

Usage:
  python benchmarks/online.py [--examples 60000] [--batch 512]
"""

import argparse
import importlib.util
import pathlib
import sys
import tempfile
import time

import bench_util  # Imports tfrs_monolith before TensorFlow.
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tfrs_monolith as tm
from tfrs_monolith import online
from tfrs_monolith import streams

_ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--examples", type=int, default=60_000)
  parser.add_argument("--warmup", type=int, default=8,
                      help="Untimed batches first (tracing).")
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--users", type=int, default=50_000)
  parser.add_argument("--items", type=int, default=20_000)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--sparse_interval", type=float, default=5.0)
  parser.add_argument("--no_kafka", action="store_true")
  return parser.parse_args()


class Ranking(tm.Model):

  def __init__(self, dim):
    super().__init__()
    self.user = tm.CollisionlessEmbedding(dim, capacity=65_536, name="user")
    self.item = tm.CollisionlessEmbedding(dim, capacity=32_768, name="item")
    self.mlp = tf.keras.Sequential([
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(1)])
    self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.MeanSquaredError())

  def call(self, features, training=None):
    return self.mlp(tf.concat([self.user(features["user_id"], training=training),
                               self.item(features["item_id"], training=training)],
                              axis=1))

  def compute_loss(self, features, training=False):
    return self.task(labels=features["label"],
                     predictions=self(features, training=training)[:, 0])


def make_model(args):
  model = Ranking(args.dim)
  model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
  return model


def make_examples(args):
  rng = np.random.default_rng(0)
  users = bench_util.zipf_ranks(rng, 1.2, args.users, args.examples)
  items = bench_util.zipf_ranks(rng, 1.2, args.items, args.examples)
  out = []
  for k, (u, i) in enumerate(zip(users, items)):
    out.append(tf.train.Example(features=tf.train.Features(feature={
        "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"u%d" % u])),
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[b"i%d" % i])),
        "label": tf.train.Feature(float_list=tf.train.FloatList(
            value=[float((u + i) % 5)])),
        "event_time": tf.train.Feature(int64_list=tf.train.Int64List(
            value=[1_700_000_000 + k])),
    })).SerializeToString())
  return out


def run_memory(args, values, tmp):
  transport = streams.FileTransport(f"{tmp}/unused")
  trainer = online.OnlineTrainer(make_model(args), transport, f"{tmp}/m",
                                 batch_size=args.batch)
  records = [streams.Record("examples", 0, k, None, v, 0)
             for k, v in enumerate(values)]
  batches = [records[i:i + args.batch]
             for i in range(0, len(records), args.batch)]
  for batch in batches[:args.warmup]:
    trainer.train_batch(batch)
  start = time.perf_counter()
  for batch in batches[args.warmup:]:
    trainer.train_batch(batch)
  seconds = time.perf_counter() - start
  trainer.close()
  return (len(values) - args.warmup * args.batch) / seconds


def run_stream(args, values, transport, tmp, name):
  transport.create_topics(["examples"])
  with transport.producer() as producer:
    for value in values:
      producer.send("examples", value)
  trainer = online.OnlineTrainer(
      make_model(args), transport, f"{tmp}/{name}", batch_size=args.batch,
      sparse_interval=args.sparse_interval, poll_timeout=0.5)
  trainer.run(max_examples=args.warmup * args.batch)
  start = time.perf_counter()
  stats = trainer.run(idle_timeout=1.0)
  seconds = time.perf_counter() - start - 1.0    # Less the idle wait.
  trained = stats.examples - args.warmup * args.batch
  assert stats.examples == len(values), stats
  trainer.close()
  return trained / seconds, stats.patches


def main():
  args = parse_args()
  values = make_examples(args)
  print(f"{len(values):,} examples, batch {args.batch}, dim {args.dim}, "
        f"patches every {args.sparse_interval} s")
  tmp = tempfile.TemporaryDirectory()
  rates, patches = {}, {}
  rates["memory"] = run_memory(args, values, tmp.name)
  print(f"memory: {rates['memory']:,.0f} examples/s")
  rates["file"], patches["file"] = run_stream(
      args, values, streams.FileTransport(f"{tmp.name}/topics"), tmp.name,
      "file")
  print(f"file:   {rates['file']:,.0f} examples/s ({patches['file']} patches)")
  if not args.no_kafka:
    spec = importlib.util.spec_from_file_location(
        "kafka_broker", _ROOT / "scripts" / "kafka_broker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.fetch(quiet=True)
    broker = module.KafkaBroker(pathlib.Path(tmp.name) / "kafka")
    broker.start()
    try:
      rates["kafka"], patches["kafka"] = run_stream(
          args, values,
          streams.open_transport(f"kafka://{broker.bootstrap_servers}"),
          tmp.name, "kafka")
    finally:
      broker.stop()
    print(f"kafka:  {rates['kafka']:,.0f} examples/s "
          f"({patches['kafka']} patches); kafka / memory = "
          f"{rates['kafka'] / rates['memory']:.3f}")
  tmp.cleanup()
  bench_util.emit({
      "benchmark": "online",
      "examples": len(values),
      "batch": args.batch,
      "dim": args.dim,
      "sparse_interval": args.sparse_interval,
      "examples_per_s": {k: round(v, 1) for k, v in rates.items()},
      "ratio_to_memory": {k: round(v / rates["memory"], 3)
                          for k, v in rates.items()},
      "patches": patches,
  })


if __name__ == "__main__":
  sys.exit(main())
