"""Shared pieces of the sidecar tests: a trainer that exports, row checks,
a proxy that holds the model server's writes."""

import concurrent.futures
import os
import threading
import time
import zlib

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

import online_model
from tfrs_monolith import export
from tfrs_monolith import online

MODEL = "ranker"
TABLES = ("user", "item")


def make_trainer(transport, tmp_path, topics=None, **kwargs):
  """The online test model's trainer, exporting versions to tmp/base."""
  kwargs.setdefault("batch_size", 64)
  kwargs.setdefault("sparse_interval", 0.2)
  kwargs.setdefault("poll_timeout", 0.05)
  if topics is not None:
    kwargs["topics"] = topics
  return online.OnlineTrainer(
      online_model.make_model(), transport, str(tmp_path / "ckpt"),
      model_name=MODEL, export_dir=str(tmp_path / "base"),
      export_fn=export.export_saved_model, **kwargs)


def sequences(trainer):
  return {t.name: int(t.patch_sequence.numpy()) for t in trainer.tables}


def checksum(keys, values):
  order = np.argsort(keys)
  return zlib.crc32(np.asarray(keys, "<i8")[order].tobytes() +
                    np.asarray(values, "<f4")[order].tobytes())


def assert_served_equal(client, model, version=None):
  """Every live row of the trainer's tables is served with the same value
  (checksum over the keys); returns how many keys were compared."""
  total = 0
  for name in TABLES:
    live = online_model.live_rows(getattr(model, name))
    keys = np.array(sorted(live), np.int64)
    expected = np.stack([live[k] for k in keys])
    values, present = client.rows(name, keys, version=version)
    missing = int((~present).sum())
    differ = int((np.abs(values - expected).max(axis=1) > 0).sum())
    assert missing == 0 and checksum(keys, values) == checksum(
        keys, expected), (f"{name}: {missing} of {len(keys)} keys not "
                          f"served, {differ} differ")
    total += len(keys)
  return total


def run_until(sidecar, condition, timeout=60.0, what="condition"):
  """Steps `sidecar` until `condition()` holds."""
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}; sidecar metrics: "
                           f"{sidecar.metrics()}")
    sidecar.step()


def version_dirs(base):
  return sorted(int(v) for v in os.listdir(base) if v.isdigit())


class HoldingProxy(grpc.GenericRpcHandler):
  """A gRPC proxy to a model server that holds its `hold_at`-th write.

  Every call is forwarded as bytes, until the `hold_at`-th `apply_patch`
  request: that one, and any write after it, waits (`holding` is set) and
  fails with UNAVAILABLE on `close`, without reaching the server. A client
  killed while `holding` is set is thus killed between two writes of one
  stream, whatever the speed of the host.
  """

  def __init__(self, target, hold_at):
    self.hold_at = hold_at
    self.writes = 0
    self.holding = threading.Event()
    self._released = threading.Event()
    self._lock = threading.Lock()
    unlimited = [("grpc.max_receive_message_length", -1),
                 ("grpc.max_send_message_length", -1)]
    self._channel = grpc.insecure_channel(target, options=unlimited)
    self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(8),
                               handlers=[self], options=unlimited)
    port = self._server.add_insecure_port("127.0.0.1:0")
    self.address = f"127.0.0.1:{port}"
    self._server.start()

  def _held(self, method, request):
    if not method.endswith("/Predict"):
      return False
    spec = predict_pb2.PredictRequest.FromString(request).model_spec
    if spec.signature_name != "apply_patch":
      return False
    with self._lock:
      self.writes += 1
      return self.writes >= self.hold_at

  def service(self, handler_call_details):
    method = handler_call_details.method
    forward = self._channel.unary_unary(method)

    def handle(request, context):
      if self._held(method, request):
        self.holding.set()
        self._released.wait()
        context.abort(grpc.StatusCode.UNAVAILABLE, "held by the test proxy")
      try:
        return forward(request, timeout=context.time_remaining())
      except grpc.RpcError as error:
        context.abort(error.code(), error.details())

    return grpc.unary_unary_rpc_method_handler(handle)

  def close(self):
    self._released.set()
    self._server.stop(grace=5).wait()
    self._channel.close()
