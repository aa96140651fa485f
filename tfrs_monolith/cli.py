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
"""The `tfrs-monolith` command line.

Usage:

  tfrs-monolith train-online --transport kafka://127.0.0.1:9092 \\
      --model my_models.py:make_model --checkpoint-dir /var/lib/trainer \\
      [--sparse-interval 60] [--dense-interval 3600] [--export-dir base/]

  tfrs-monolith join --impressions 'events/imp*.jsonl' \
      --actions 'events/act*.jsonl' --output store/examples \
      [--window_seconds 600] [--negative_rate 0.25] [Beam pipeline flags]

  tfrs-monolith train-batch --examples 'store/examples-*' \
      --model my_models.py:make_model --export-dir base/ \
      --checkpoint-dir /var/lib/trainer [--epochs 1]

  tfrs-monolith sidecar --serving 127.0.0.1:8500 --model ranker \
      --patches kafka://127.0.0.1:9092 --state-dir /var/lib/sidecar \
      [--metrics-port 9108]

  tfrs-monolith patch-key --id 2026-11 > patch-keys.json

`join` and `train-batch` need the `[beam]` extra, `sidecar` the `[serving]`
extra.

Security (every flag names a file; no secret is ever given on the command
line):

* `--patch-keys FILE` (train-online: sign patches; sidecar: apply only
  signed patches), or the JSON text in `TFRS_MONOLITH_PATCH_KEYS`.
* `--kafka-config FILE`: a Kafka client properties file (TLS, SASL PLAIN or
  SCRAM) for every Kafka client of the command; the same as setting
  `TFRS_MONOLITH_KAFKA_CONFIG`, which `join` reads too.
* sidecar `--serving-ca/--serving-cert/--serving-key`: TLS to TF Serving.

`--model` names a function (`module:function` or `path/to/file.py:function`)
that returns a compiled Keras model with `tm.CollisionlessEmbedding` tables.
"""

import argparse
import dataclasses
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
from typing import Callable, List, Optional

__all__ = ["main", "load_factory"]


def load_factory(spec: str) -> Callable:
  """The function named by `module:function` or `file.py:function`."""
  module_name, sep, attr = spec.rpartition(":")
  if not sep or not module_name or not attr:
    raise ValueError("--model must look like module:function or "
                     f"path/to/file.py:function. Received: {spec!r}")
  if module_name.endswith(".py"):
    path = os.path.abspath(module_name)
    if not os.path.exists(path):
      raise ValueError(f"--model file not found: {path}")
    name = "_tfrs_monolith_model_" + os.path.splitext(
        os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
  else:
    module = importlib.import_module(module_name)
  try:
    return getattr(module, attr)
  except AttributeError:
    raise ValueError(f"--model: {module_name} has no {attr!r}") from None


def _positive(kind):
  def parse(text):
    value = kind(text)
    if value <= 0:
      raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
  return parse


def _security_args(parser):
  parser.add_argument("--patch-keys", default=None, metavar="FILE",
                      help="JSON patch keys (tfrs-monolith patch-key); "
                      "default: $TFRS_MONOLITH_PATCH_KEYS")
  parser.add_argument("--kafka-config", default=None, metavar="FILE",
                      help="Kafka client properties (security.protocol, "
                      "sasl.mechanism, ...); default: "
                      "$TFRS_MONOLITH_KAFKA_CONFIG")


def _apply_security(args):
  """Sets the Kafka config for every client; returns the patch keys."""
  from tfrs_monolith import patch  # pylint: disable=g-import-not-at-top
  if args.kafka_config:
    if not os.path.isfile(args.kafka_config):
      raise SystemExit(f"--kafka-config: no such file {args.kafka_config!r}")
    os.environ["TFRS_MONOLITH_KAFKA_CONFIG"] = os.path.abspath(
        args.kafka_config)
  try:
    return patch.PatchKeys.load(args.patch_keys)
  except (OSError, ValueError) as error:
    raise SystemExit(f"--patch-keys: {error}") from None


def _train_online_args(parser):
  _security_args(parser)
  parser.add_argument("--transport", required=True,
                      help="kafka://host:port or file:///path")
  parser.add_argument("--model", required=True,
                      help="module:function returning a compiled model")
  parser.add_argument("--checkpoint-dir", required=True)
  parser.add_argument("--model-name", default="model")
  parser.add_argument("--examples-topic", default="examples")
  parser.add_argument("--patches-topic", default="patches")
  parser.add_argument("--dead-letter-topic", default="dead-letters")
  parser.add_argument("--group-id", default="online-trainer")
  parser.add_argument("--batch-size", type=_positive(int), default=256)
  parser.add_argument("--sparse-interval", type=_positive(float), default=60.0,
                      help="seconds between patches")
  parser.add_argument("--dense-interval", type=_positive(float),
                      default=3600.0,
                      help="seconds between SavedModel exports")
  parser.add_argument("--export-dir", default=None,
                      help="TF Serving base path for exported versions")
  parser.add_argument("--summary-dir", default=None,
                      help="TensorBoard log directory")
  parser.add_argument("--log-interval", type=_positive(float), default=10.0)
  parser.add_argument("--max-examples", type=_positive(int), default=None)
  parser.add_argument("--idle-timeout", type=_positive(float), default=None,
                      help="stop after this many seconds without examples")


def _train_online(args):
  # pylint: disable=g-import-not-at-top
  import tfrs_monolith  # noqa: F401  Selects Keras 2 before TensorFlow.
  from tfrs_monolith import distribute
  from tfrs_monolith import export
  from tfrs_monolith import online
  from tfrs_monolith import streams
  patch_keys = _apply_security(args)
  if patch_keys is not None and patch_keys.sign_with is None:
    raise SystemExit("--patch-keys: the keys name no signing key "
                     "(\"sign_with\")")
  with distribute.strategy_scope():   # A cluster when TF_CONFIG names one.
    model = load_factory(args.model)()
  transport = streams.open_transport(args.transport)
  topics = streams.Topics(examples=args.examples_topic,
                          patches=args.patches_topic,
                          dead_letters=args.dead_letter_topic)
  trainer = online.OnlineTrainer(
      model, transport, checkpoint_dir=args.checkpoint_dir,
      model_name=args.model_name, topics=topics, group_id=args.group_id,
      batch_size=args.batch_size, sparse_interval=args.sparse_interval,
      dense_interval=args.dense_interval, export_dir=args.export_dir,
      export_fn=(lambda m, path, watermark: export.export_saved_model(
          m, path, watermark)) if args.export_dir else None,
      log_interval=args.log_interval, summary_dir=args.summary_dir,
      patch_keys=patch_keys)
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: trainer.stop())
  with trainer:
    if trainer.restored_from:
      logging.info("resumed from %s", trainer.restored_from)
    stats = trainer.run(max_examples=args.max_examples,
                        idle_timeout=args.idle_timeout)
    summary = trainer.metrics()
  summary["checkpoints"] = stats.checkpoints
  summary["exports"] = stats.exports
  print(json.dumps(summary, sort_keys=True, default=float))
  return 0


def _train_batch_args(parser):
  parser.add_argument("--examples", required=True,
                      help="batch store shards (glob)")
  parser.add_argument("--model", required=True,
                      help="module:function returning a compiled model")
  parser.add_argument("--export-dir", default=None,
                      help="TF Serving base path for version --version")
  parser.add_argument("--version", type=_positive(int), default=1)
  parser.add_argument("--checkpoint-dir", default=None,
                      help="where the online trainer will start from")
  parser.add_argument("--epochs", type=_positive(int), default=1)
  parser.add_argument("--batch-size", type=_positive(int), default=1024)
  parser.add_argument("--negative-sampling-rate", type=float, default=None,
                      help="the joiner's --negative_rate, for the serving "
                      "signature's log-odds correction")


def _train_batch(args):
  # pylint: disable=g-import-not-at-top
  import tfrs_monolith  # noqa: F401  Selects Keras 2 before TensorFlow.
  from tfrs_monolith import distribute
  from tfrs_monolith.beam import training
  with distribute.strategy_scope():   # A cluster when TF_CONFIG names one.
    model = load_factory(args.model)()
  result = training.train(
      model, args.examples, epochs=args.epochs, batch_size=args.batch_size,
      export_dir=args.export_dir, version=args.version,
      checkpoint_dir=args.checkpoint_dir,
      negative_sampling_rate=args.negative_sampling_rate)
  print(json.dumps(dataclasses.asdict(result), sort_keys=True, default=str))
  return 0


def _sidecar_args(parser):
  _security_args(parser)
  parser.add_argument("--serving", required=True,
                      help="TF Serving gRPC address, host:port")
  parser.add_argument("--serving-ca", default=None, metavar="FILE",
                      help="PEM CA of TF Serving's certificate: use TLS")
  parser.add_argument("--serving-cert", default=None, metavar="FILE",
                      help="PEM client certificate (client_verify servers)")
  parser.add_argument("--serving-key", default=None, metavar="FILE",
                      help="PEM key of --serving-cert")
  parser.add_argument("--serving-server-name", default=None,
                      help="the name on TF Serving's certificate, if not "
                      "the --serving host")
  parser.add_argument("--max-patch-bytes", type=_positive(int),
                      default=None,
                      help="refuse larger patches (dead-lettered; "
                      "default 1 GiB)")
  parser.add_argument("--model", required=True,
                      help="the model name in TF Serving's model config")
  parser.add_argument("--patches", required=True,
                      help="where the patches topic lives: kafka://host:port "
                      "or file:///path")
  parser.add_argument("--state-dir", required=True,
                      help="where the sidecar keeps its position (one per "
                      "served replica)")
  parser.add_argument("--topic", default="patches")
  parser.add_argument("--dead-letter-topic", default="dead-letters")
  parser.add_argument("--patch-model", default=None,
                      help="the trainer's --model-name, if it differs")
  parser.add_argument("--base-path", default=None,
                      help="the model's base path, for versions exported "
                      "without the patch_watermark signature")
  parser.add_argument("--group-id", default=None)
  parser.add_argument("--timeout", type=_positive(float), default=10.0,
                      help="seconds allowed for each gRPC call")
  parser.add_argument("--max-request-bytes", type=_positive(int),
                      default=4_000_000)
  parser.add_argument("--status-interval", type=_positive(float),
                      default=1.0,
                      help="seconds between served-version checks")
  parser.add_argument("--metrics-port", type=int, default=None,
                      help="serve /metrics and /healthz on this port")
  parser.add_argument("--metrics-host", default="127.0.0.1")
  parser.add_argument("--max-seconds", type=_positive(float), default=None,
                      help="stop after this long (default: run until "
                      "SIGTERM)")


def _sidecar(args):
  # pylint: disable=g-import-not-at-top
  import tfrs_monolith  # noqa: F401  Selects Keras 2 before TensorFlow.
  from tfrs_monolith import patch
  from tfrs_monolith import serving
  from tfrs_monolith import streams
  patch_keys = _apply_security(args)
  credentials = None
  if args.serving_ca or args.serving_cert or args.serving_key:
    try:
      credentials = serving.tls_credentials(args.serving_ca,
                                            args.serving_cert,
                                            args.serving_key)
    except ValueError as error:
      raise SystemExit(f"--serving-ca/--serving-cert/--serving-key: {error}"
                       ) from None
  client = serving.ServingClient(args.serving, args.model,
                                 timeout=args.timeout,
                                 credentials=credentials,
                                 server_name=args.serving_server_name)
  sidecar = serving.Sidecar(
      client, streams.open_transport(args.patches), args.state_dir,
      topic=args.topic, dead_letter_topic=args.dead_letter_topic,
      patch_model=args.patch_model, base_path=args.base_path,
      group_id=args.group_id, max_request_bytes=args.max_request_bytes,
      status_interval=args.status_interval, metrics_port=args.metrics_port,
      metrics_host=args.metrics_host, patch_keys=patch_keys,
      max_patch_bytes=(patch.DEFAULT_MAX_PATCH_BYTES
                       if args.max_patch_bytes is None
                       else args.max_patch_bytes))
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: sidecar.stop())
  with sidecar:
    if sidecar.metrics_address:
      logging.info("metrics on http://%s:%d/metrics",
                   *sidecar.metrics_address)
    sidecar.run(max_seconds=args.max_seconds)
    summary = sidecar.metrics()
  client.close()
  print(json.dumps(summary, sort_keys=True))
  return 0


def _patch_key(args):
  from tfrs_monolith import patch  # pylint: disable=g-import-not-at-top
  print(patch.PatchKeys.generate(args.id))
  return 0


def _server(args):
  del args
  # pylint: disable=g-import-not-at-top
  import tfrs_monolith  # noqa: F401  Selects Keras 2 before TensorFlow.
  from tfrs_monolith import distribute
  distribute.run_server()
  return 0


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="tfrs-monolith",
                                   description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  _train_online_args(commands.add_parser(
      "train-online", help="train on the examples stream, publish patches"))
  _train_batch_args(commands.add_parser(
      "train-batch", help="train on the batch store, export version 1"))
  _sidecar_args(commands.add_parser(
      "sidecar", help="apply embedding patches to a model TF Serving serves"))
  commands.add_parser(
      "server", help="run this task's parameter server or worker (from "
      "TF_CONFIG) for cluster training; serves until killed")
  commands.add_parser(
      "patch-key", help="print a new random patch signing key (JSON) for "
      "--patch-keys").add_argument("--id", default="k1",
                                   help="the key id")
  commands.add_parser(
      "join", add_help=False,
      help="join impressions with actions into examples (Beam pipeline; "
      "flags: python -m tfrs_monolith.beam.pipelines --help)")
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["join"]:
    # pylint: disable=g-import-not-at-top
    import tfrs_monolith  # noqa: F401  Selects Keras 2 before TensorFlow.
    from tfrs_monolith.beam import pipelines
    logging.basicConfig(level=logging.INFO)
    pipelines.run(argv[1:])
    return 0
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(name)s %(levelname)s %(message)s")
  if args.command == "train-online":
    return _train_online(args)
  if args.command == "train-batch":
    return _train_batch(args)
  if args.command == "sidecar":
    return _sidecar(args)
  if args.command == "server":
    return _server(args)
  if args.command == "patch-key":
    return _patch_key(args)
  parser.error(f"unknown command {args.command}")
  return 2


if __name__ == "__main__":
  sys.exit(main())
