"""A local stand-in for `tensorflow_model_server` (development, demos, tests).

Not a production server: use TF Serving itself in production. Where its
binary cannot be installed (the project's tests, `make demo`, a laptop),
this module serves the same gRPC API (`tensorflow.serving.PredictionService`
and `ModelService`) by loading each SavedModel version the way TF Serving
does: a fresh `tf.Graph` and `tf.compat.v1.Session` per version,
`tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)`, feeds and
fetches by the signature's tensor names. It does not import `tfrs_monolith`
(the real server has no such package): only TensorFlow, the
`tensorflow_serving.apis` protos and gRPC. What it covers:

* Version management like TF Serving's default "latest" policy: the base
  path is polled every `--file_system_poll_wait_seconds` for all-digit
  subdirectories; a newer version is loaded, warmed up from
  `<version>/assets.extra/tf_serving_warmup_requests` (a TFRecord of
  `PredictionLog`s whose `predict_log.request`s are run once), marked
  AVAILABLE, and only then is the older one unloaded (state END). A version
  that fails to load (or to warm up) is reported as END with the load
  error and is not retried; the older one stays served. Only the newest
  version on disk is ever aspired: a broken newest version is not replaced
  by an older one (at startup nothing is served then, where the real server
  would exit). Versions present at startup are loaded before the gRPC port
  opens; with none, the port opens at once.
* `PredictionService.Predict` (and `GetModelMetadata` with the
  `signature_def` map), `ModelService.GetModelStatus`. Errors use TF
  Serving's codes: NOT_FOUND for an unknown model or version,
  INVALID_ARGUMENT for an unknown signature or missing/extra/mistyped
  inputs, and a TensorFlow error from `session.run` keeps its code (e.g.
  `InvalidArgumentError` -> INVALID_ARGUMENT) and message.
* `--grpc_channel_arguments` are passed to `grpc.server`, so e.g.
  `grpc.max_receive_message_length=65536` makes larger requests fail with
  RESOURCE_EXHAUSTED, as on the real server.
* `--ssl_config_file`: TF Serving's `SSLConfig` text proto (`server_key`,
  `server_cert`, `custom_ca`, `client_verify`, PEM text in strings): the
  gRPC port then serves TLS only, and with `client_verify` only to
  clients whose certificate `custom_ca` signed.
* Stand-in only: `--apply_log PATH` appends one JSON line per successful
  Predict on the `apply_patch` signature: `{"sha256": ..., "table": ...,
  "keys": n, "changed": n, "version": v}`, where `sha256` is over the
  serialized request input tensors in sorted input-name order, so tests can
  count duplicate applications.

Not covered: Classify/Regress/MultiInference, the REST API, model config
files, several models, batching, `HandleReloadConfigRequest` (UNIMPLEMENTED).

As a script:

  python -m tfrs_monolith.serving.model_server --port 8500 --model_name ranker \
      --model_base_path /tmp/base [--file_system_poll_wait_seconds 1] \
      [--grpc_channel_arguments grpc.max_receive_message_length=65536] \
      [--apply_log /tmp/applied.jsonl]

It listens on 127.0.0.1 only, logs to stderr and exits cleanly on SIGTERM.

From a test, with pytest fixtures:

  from tfrs_monolith.serving import model_server

  @pytest.fixture(scope="module")
  def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    export.export_saved_model(model, str(base / "1"))
    with model_server.ModelServer(str(base), "ranker") as server:
      server.wait_ready()
      yield server

  def test_scores(server):
    outputs = server.predict({"user_id": np.array([b"7"]), ...})

`ModelServer` runs the script in a subprocess (`sys.executable`), so a test
can `kill()` it and `restart()` it on the same port. Starting it imports
TensorFlow, which takes a few seconds.
"""

import argparse
import codecs
import collections
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,g-bad-import-order
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
# pylint: enable=g-import-not-at-top,g-bad-import-order

__all__ = ["ModelServer", "ServerError", "main", "predict_request", "wait_for"]

_LOG = logging.getLogger("model_server")
_State = get_model_status_pb2.ModelVersionStatus.State
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
APPLY_SIGNATURE = "apply_patch"
DEFAULT_SIGNATURE = "serving_default"
# gRPC sends the status message in a trailer; keep it well under the
# default 8 KiB metadata limit.
_MAX_MESSAGE_CHARS = 4000
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServerError(Exception):
  """An error with a gRPC status code, raised inside the servicers."""

  def __init__(self, code, message):
    super().__init__(message)
    self.code = code
    self.message = message


# ---------------------------------------------------------------------------
# The server side.


class _Version:
  """One loaded SavedModel version: its session, signatures and users."""

  def __init__(self, version, path):
    self.version = version
    self.path = path
    self.graph = tf.Graph()
    self.session = tf.compat.v1.Session(graph=self.graph)
    try:
      with self.graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(
            self.session, ["serve"], path)
    except BaseException:
      self.session.close()
      raise
    self.meta_graph = meta_graph
    self.signatures = dict(meta_graph.signature_def)
    self._users = 0
    self._idle = threading.Condition()

  def acquire(self):
    with self._idle:
      self._users += 1

  def release(self):
    with self._idle:
      self._users -= 1
      if not self._users:
        self._idle.notify_all()

  def close(self):
    """Waits for the requests in flight, then closes the session."""
    with self._idle:
      self._idle.wait_for(lambda: not self._users)
    self.session.close()

  def run(self, signature_name, inputs, output_filter=()):
    """Runs a signature on `{alias: TensorProto}` -> `{alias: ndarray}`."""
    signature_name = signature_name or DEFAULT_SIGNATURE
    if signature_name not in self.signatures:
      raise ServerError(
          grpc.StatusCode.INVALID_ARGUMENT,
          f"Serving signature name: \"{signature_name}\" not found in "
          f"signature def")
    signature = self.signatures[signature_name]
    expected, sent = set(signature.inputs), set(inputs)
    if expected != sent:
      raise ServerError(
          grpc.StatusCode.INVALID_ARGUMENT,
          f"input size does not match signature: {len(sent)}!="
          f"{len(expected)} len({{{','.join(sorted(sent))}}}) != "
          f"len({{{','.join(sorted(expected))}}}). Sent extra: "
          f"{{{','.join(sorted(sent - expected))}}}. Missing but required: "
          f"{{{','.join(sorted(expected - sent))}}}.")
    feeds = {}
    for alias in sorted(inputs):
      tensor_info = signature.inputs[alias]
      proto = inputs[alias]
      if proto.dtype != tensor_info.dtype:
        raise ServerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Expects arg[{alias}] to be "
            f"{tf.dtypes.as_dtype(tensor_info.dtype).name} but "
            f"{_dtype_name(proto.dtype)} is provided")
      try:
        feeds[tensor_info.name] = tf.make_ndarray(proto)
      except Exception as e:  # pylint: disable=broad-except
        raise ServerError(grpc.StatusCode.INVALID_ARGUMENT,
                          f"input {alias!r} is not a valid tensor: {e}") from e
    aliases = list(output_filter) or sorted(signature.outputs)
    for alias in aliases:
      if alias not in signature.outputs:
        raise ServerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"output tensor alias not found in signature: {alias} Outputs "
            f"expected to be in the set {{{','.join(sorted(signature.outputs))}"
            f"}}.")
    fetches = [signature.outputs[alias].name for alias in aliases]
    try:
      values = self.session.run(fetches, feeds)
    except tf.errors.OpError as e:
      raise ServerError(_GRPC_CODES.get(e.error_code, grpc.StatusCode.UNKNOWN),
                        e.message) from e
    except (ValueError, TypeError) as e:   # Shapes the feed cannot take.
      raise ServerError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
    return dict(zip(aliases, values))


def _dtype_name(enum):
  try:
    return tf.dtypes.as_dtype(enum).name
  except TypeError:
    return f"dtype {enum}"


class _Model:
  """The versions of one model under a base path, per the latest policy."""

  def __init__(self, name, base_path):
    self.name = name
    self.base_path = base_path
    self._lock = threading.Lock()
    self._served = None                    # The AVAILABLE _Version.
    self._states = {}                      # version -> (state, code, msg)
    self._failed = set()

  # Status ---------------------------------------------------------------

  def _set_state(self, version, state, code=0, message=""):
    with self._lock:
      self._states[version] = (state, code, message)
    _LOG.info("%s version %d: %s%s", self.name, version,
              _State.Name(state), f" ({message})" if message else "")

  def states(self):
    with self._lock:
      return dict(self._states)

  def acquire(self, version=None):
    """The served `_Version` (acquired), or NOT_FOUND."""
    with self._lock:
      served = self._served
      if served is not None and (version is None or
                                 served.version == version):
        served.acquire()
        return served
    request = (f"Specific({self.name}, {version})" if version is not None
               else f"Latest({self.name})")
    raise ServerError(grpc.StatusCode.NOT_FOUND,
                      f"Servable not found for request: {request}")

  # Loading --------------------------------------------------------------

  def versions_on_disk(self):
    try:
      names = os.listdir(self.base_path)
    except OSError as e:
      _LOG.warning("cannot list base path %s: %s", self.base_path, e)
      return []
    return sorted(int(n) for n in names
                  if n.isdigit() and
                  os.path.isdir(os.path.join(self.base_path, n)))

  def poll(self, on_loaded=None):
    """Loads the newest version on disk if it is not served yet."""
    versions = self.versions_on_disk()
    if not versions:
      return
    newest = versions[-1]      # The only aspired version, as in TF Serving.
    served = self._served
    if newest in self._failed or (served is not None and
                                  served.version == newest):
      return
    if served is None:
      _LOG.info("%s: found version %d under %s", self.name, newest,
                self.base_path)
    self._set_state(newest, _State.LOADING)
    path = os.path.join(self.base_path, str(newest))
    loaded = None
    try:
      loaded = _Version(newest, path)
      if on_loaded is not None:
        on_loaded(loaded)
    except Exception as e:  # pylint: disable=broad-except
      if loaded is not None:
        loaded.close()
      self._failed.add(newest)
      if isinstance(e, ServerError):
        code = e.code.value[0]
      else:
        code = getattr(e, "error_code", None) or 2    # UNKNOWN
      _LOG.error("%s version %d failed to load: %s", self.name, newest, e)
      self._set_state(newest, _State.END, code,
                      f"Failed to load {path}: {_message_of(e)}"[
                          :_MAX_MESSAGE_CHARS])
      return
    with self._lock:     # Served and reported AVAILABLE at once.
      old, self._served = self._served, loaded
      self._states[newest] = (_State.AVAILABLE, 0, "")
    _LOG.info("%s version %d: AVAILABLE", self.name, newest)
    if old is not None:
      self._set_state(old.version, _State.UNLOADING)
      old.close()
      self._set_state(old.version, _State.END)

  def close(self):
    with self._lock:
      served, self._served = self._served, None
    if served is not None:
      self._set_state(served.version, _State.UNLOADING)
      served.close()
      self._set_state(served.version, _State.END)


def _message_of(error):
  if isinstance(error, (tf.errors.OpError, ServerError)):
    return error.message
  return str(error)


class _Service(prediction_service_pb2_grpc.PredictionServiceServicer,
               model_service_pb2_grpc.ModelServiceServicer):
  """Both gRPC services over one `_Model`."""

  def __init__(self, model, apply_log=None):
    self.model = model
    self._apply_log = apply_log
    self._log_lock = threading.Lock()

  # PredictionService ------------------------------------------------------

  def _requested_version(self, model_spec):
    """The version a request names (None: the latest), or NOT_FOUND."""
    version = (model_spec.version.value if model_spec.HasField("version")
               else None)
    if model_spec.name != self.model.name:
      request = (f"Specific({model_spec.name}, {version})"
                 if version is not None else f"Latest({model_spec.name})")
      raise ServerError(grpc.StatusCode.NOT_FOUND,
                        f"Servable not found for request: {request}")
    if version is not None:
      return version
    if model_spec.version_label:
      raise ServerError(grpc.StatusCode.UNIMPLEMENTED,
                        "version labels are not supported by the stand-in")
    return None

  def predict(self, request, version_obj=None, log=True):
    """Runs one PredictRequest; the shared code of Predict and warm-up."""
    if version_obj is None:
      version_obj = self.model.acquire(
          self._requested_version(request.model_spec))
      try:
        return self.predict(request, version_obj, log)
      finally:
        version_obj.release()
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    outputs = version_obj.run(signature_name, request.inputs,
                              request.output_filter)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = self.model.name
    response.model_spec.version.value = version_obj.version
    response.model_spec.signature_name = signature_name
    for alias, value in outputs.items():
      response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
    if log and signature_name == APPLY_SIGNATURE:
      self._log_apply(request, outputs, version_obj.version)
    return response

  def _log_apply(self, request, outputs, version):
    if not self._apply_log:
      return
    digest = hashlib.sha256()
    for alias in sorted(request.inputs):
      digest.update(request.inputs[alias].SerializeToString(deterministic=True))
    entry = {"sha256": digest.hexdigest(), "table": None, "keys": None,
             "changed": None, "version": version}
    if "table" in request.inputs:
      table = tf.make_ndarray(request.inputs["table"])
      entry["table"] = (table.item().decode("utf-8", "replace")
                        if table.size == 1 else None)
    if "keys" in request.inputs:
      entry["keys"] = int(tf.make_ndarray(request.inputs["keys"]).size)
    if "changed" in outputs:
      entry["changed"] = int(np.asarray(outputs["changed"]).sum())
    line = json.dumps(entry, sort_keys=True) + "\n"
    with self._log_lock:
      with open(self._apply_log, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()

  def Predict(self, request, context):  # pylint: disable=invalid-name
    try:
      return self.predict(request)
    except ServerError as e:
      context.abort(e.code, e.message[:_MAX_MESSAGE_CHARS])

  def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
    try:
      if list(request.metadata_field) != ["signature_def"]:
        raise ServerError(grpc.StatusCode.INVALID_ARGUMENT,
                          "Metadata field signature_def is the only one "
                          "supported")
      version_obj = self.model.acquire(
          self._requested_version(request.model_spec))
      try:
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in version_obj.signatures.items():
          signatures.signature_def[name].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.model.name
        response.model_spec.version.value = version_obj.version
        response.metadata["signature_def"].Pack(signatures)
        return response
      finally:
        version_obj.release()
    except ServerError as e:
      context.abort(e.code, e.message[:_MAX_MESSAGE_CHARS])

  # ModelService -----------------------------------------------------------

  def GetModelStatus(self, request, context):  # pylint: disable=invalid-name
    name = request.model_spec.name
    states = self.model.states() if name == self.model.name else {}
    if not states:
      context.abort(grpc.StatusCode.NOT_FOUND,
                    f"Could not find any versions of model {name}")
    if request.model_spec.HasField("version"):
      version = request.model_spec.version.value
      if version not in states:
        context.abort(grpc.StatusCode.NOT_FOUND,
                      f"Could not find version {version} of model {name}")
      states = {version: states[version]}
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in sorted(states):
      state, code, message = states[version]
      entry = response.model_version_status.add()
      entry.version = version
      entry.state = state
      entry.status.error_code = code
      entry.status.error_message = message
    return response

  # pylint: disable-next=invalid-name
  def HandleReloadConfigRequest(self, request, context):
    context.abort(grpc.StatusCode.UNIMPLEMENTED,
                  "the stand-in model server serves one model from flags")

  # Warm-up ----------------------------------------------------------------

  def warm_up(self, version_obj):
    """Replays `assets.extra/tf_serving_warmup_requests`, like TF Serving."""
    path = os.path.join(version_obj.path, WARMUP_FILE)
    if not os.path.exists(path):
      return
    count = 0
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      log = prediction_log_pb2.PredictionLog.FromString(record)
      if log.WhichOneof("log_type") != "predict_log":
        raise ServerError(grpc.StatusCode.UNIMPLEMENTED,
                          "only predict_log warm-up records are supported")
      try:
        self.predict(log.predict_log.request, version_obj, log=False)
      except ServerError as e:
        raise tf.errors.InvalidArgumentError(
            None, None, f"warm-up request {count} failed: {e.message}") from e
      count += 1
    _LOG.info("%s version %d: replayed %d warm-up records", self.model.name,
              version_obj.version, count)


def _channel_arguments(text):
  options = []
  for item in filter(None, (text or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--grpc_channel_arguments: expected key=value, got "
                       f"{item!r}")
    value = value.strip()
    try:
      options.append((key.strip(), int(value)))
    except ValueError:
      options.append((key.strip(), value))
  return options


_SSL_FIELDS = {"server_key": str, "server_cert": str, "custom_ca": str,
               "client_verify": bool}


def read_ssl_config(text: str) -> dict:
  """TF Serving's `SSLConfig` text proto as a dict of its four fields."""
  config = {"server_key": "", "server_cert": "", "custom_ca": "",
            "client_verify": False}
  pattern = re.compile(r"""(\w+)\s*:\s*("(?:[^"\\]|\\.)*"|"""
                       r"""'(?:[^'\\]|\\.)*'|true|false)""", re.S)
  pos = 0
  text = text.strip()
  while pos < len(text):
    match = pattern.match(text, pos)
    if not match:
      raise ValueError("--ssl_config_file: cannot parse "
                       f"{text[pos:pos + 40]!r}")
    name, value = match.groups()
    if name not in _SSL_FIELDS:
      raise ValueError(f"--ssl_config_file: unknown field {name!r} (SSLConfig "
                       f"has {sorted(_SSL_FIELDS)})")
    if _SSL_FIELDS[name] is bool:
      if value not in ("true", "false"):
        raise ValueError(f"--ssl_config_file: {name} must be true or false")
      config[name] = value == "true"
    else:
      if value in ("true", "false"):
        raise ValueError(f"--ssl_config_file: {name} must be a string")
      config[name] = codecs.decode(value[1:-1], "unicode_escape")
    pos = match.end()
    while pos < len(text) and text[pos].isspace():
      pos += 1
  if not config["server_key"] or not config["server_cert"]:
    raise ValueError("--ssl_config_file: server_key and server_cert are "
                     "required")
  if config["client_verify"] and not config["custom_ca"]:
    raise ValueError("--ssl_config_file: client_verify needs custom_ca")
  return config


def _server_credentials(path):
  with open(path, encoding="utf-8") as f:
    config = read_ssl_config(f.read())
  return grpc.ssl_server_credentials(
      [(config["server_key"].encode(), config["server_cert"].encode())],
      root_certificates=(config["custom_ca"].encode()
                         if config["custom_ca"] else None),
      require_client_auth=config["client_verify"])


def _parse_flags(argv):
  parser = argparse.ArgumentParser(
      description="Stand-in tensorflow_model_server for tests.")
  parser.add_argument("--port", type=int, default=8500)
  parser.add_argument("--model_name", default="default")
  parser.add_argument("--model_base_path", required=True)
  parser.add_argument("--file_system_poll_wait_seconds", type=float,
                      default=1.0)
  parser.add_argument("--grpc_channel_arguments", default="")
  parser.add_argument("--apply_log", default=None)
  parser.add_argument("--ssl_config_file", default=None)
  return parser.parse_args(argv)


def main(argv=None):
  """Runs the stand-in server until SIGTERM or SIGINT."""
  flags = _parse_flags(argv)
  logging.basicConfig(
      stream=sys.stderr, level=logging.INFO,
      format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
      datefmt="%H:%M:%S")
  logging.getLogger("tensorflow").propagate = False   # Has its own handler.
  stop = threading.Event()

  def on_signal(signum, unused_frame):
    _LOG.info("received signal %d, shutting down", signum)
    stop.set()

  signal.signal(signal.SIGTERM, on_signal)
  signal.signal(signal.SIGINT, on_signal)

  model = _Model(flags.model_name, os.path.abspath(flags.model_base_path))
  service = _Service(model, flags.apply_log)
  model.poll(service.warm_up)            # Versions present at startup.

  def poller():
    while not stop.wait(max(flags.file_system_poll_wait_seconds, 0.01)):
      try:
        model.poll(service.warm_up)
      except Exception:  # pylint: disable=broad-except
        _LOG.exception("polling %s failed", model.base_path)

  thread = threading.Thread(target=poller, name="poller", daemon=True)
  thread.start()

  server = grpc.server(
      concurrent.futures.ThreadPoolExecutor(max_workers=8),
      options=_channel_arguments(flags.grpc_channel_arguments))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      service, server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(service, server)
  address = f"127.0.0.1:{flags.port}"
  try:
    if flags.ssl_config_file:
      port = server.add_secure_port(
          address, _server_credentials(flags.ssl_config_file))
    else:
      port = server.add_insecure_port(address)
  except (RuntimeError, ValueError, OSError) as e:
    port = 0
    _LOG.error("cannot bind %s: %s", address, e)
  if not port:
    _LOG.error("cannot bind %s", address)
    stop.set()
    model.close()
    return 1
  server.start()
  _LOG.info("Running gRPC ModelServer at %s ...", address)
  stop.wait()
  server.stop(grace=2).wait()
  thread.join(timeout=30)
  model.close()
  _LOG.info("stopped")
  return 0


# ---------------------------------------------------------------------------
# The test helper.


def predict_request(model_name, inputs, signature=DEFAULT_SIGNATURE,
                    version=None, output_filter=()):
  """A `PredictRequest` for `{alias: array-like}` inputs."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = version
  for alias, value in inputs.items():
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
  request.output_filter.extend(output_filter)
  return request


def wait_for(predicate, timeout=30, interval=0.1):
  """Polls `predicate()` until it is true; raises TimeoutError after
  `timeout` seconds. gRPC errors while polling count as false."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      if predicate():
        return
    except grpc.RpcError:
      pass
    if time.monotonic() > deadline:
      raise TimeoutError(f"not true after {timeout}s: {predicate}")
    time.sleep(interval)


def free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class ModelServer:
  """Runs this module as a stand-in model server in a subprocess.

  Args:
    base_path: the model base path (version subdirectories).
    model_name: the served model's name.
    port: the gRPC port on 127.0.0.1; a free one when None.
    poll_seconds: `--file_system_poll_wait_seconds`.
    channel_arguments: `{grpc option: value}` for the server, e.g.
      `{"grpc.max_receive_message_length": 65536}`.
    apply_log: `--apply_log` path; a temporary file when None.
    log_path: where the server's stderr goes (appended across restarts); a
      temporary file when None.
    ssl_config_file: `--ssl_config_file` (serve TLS).
    ca_file: with `ssl_config_file`, the PEM CA this helper's own channel
      trusts (and `client_cert_file`/`client_key_file` when the server
      verifies clients).

  The server starts at construction; `wait_ready()` waits until it serves.
  Temporary files are removed by `close()` (or leaving the `with` block).
  """

  def __init__(self, base_path, model_name, port=None, poll_seconds=0.2,
               channel_arguments=None, apply_log=None, log_path=None,
               ssl_config_file=None, ca_file=None, client_cert_file=None,
               client_key_file=None):
    self.base_path = str(base_path)
    self.model_name = model_name
    self.port = port or free_port()
    self.poll_seconds = poll_seconds
    self.channel_arguments = dict(channel_arguments or {})
    self.ssl_config_file = ssl_config_file
    self._tls = (ca_file, client_cert_file, client_key_file)
    self._tmp = None
    if apply_log is None or log_path is None:
      self._tmp = tempfile.mkdtemp(prefix="model_server_")
    self.apply_log = str(apply_log or os.path.join(self._tmp, "applied.jsonl"))
    self.log_path = str(log_path or os.path.join(self._tmp, "server.log"))
    self.process = None
    self.channel = None
    self.prediction_stub = None
    self.model_stub = None
    self.start()

  @property
  def address(self):
    return f"127.0.0.1:{self.port}"

  def command(self):
    args = [sys.executable, os.path.abspath(__file__),
            f"--port={self.port}", f"--model_name={self.model_name}",
            f"--model_base_path={self.base_path}",
            f"--file_system_poll_wait_seconds={self.poll_seconds}",
            f"--apply_log={self.apply_log}"]
    if self.ssl_config_file:
      args.append(f"--ssl_config_file={self.ssl_config_file}")
    if self.channel_arguments:
      args.append("--grpc_channel_arguments=" + ",".join(
          f"{k}={v}" for k, v in self.channel_arguments.items()))
    return args

  def start(self):
    """Starts the subprocess (if not running) and a fresh channel."""
    if self.running():
      return
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(self.log_path, "ab") as log:
      log.write(f"--- starting {' '.join(self.command())}\n".encode())
      log.flush()
      self.process = subprocess.Popen(  # pylint: disable=consider-using-with
          self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
          env=env)
    self._close_channel()
    options = [
        ("grpc.max_receive_message_length", -1),
        ("grpc.max_send_message_length", -1),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
    ]
    if self.ssl_config_file:
      # The server side of this module stays free of the package, as TF
      # Serving is.
      from tfrs_monolith.serving import client  # pylint: disable=g-import-not-at-top
      self.channel = grpc.secure_channel(
          self.address, client.tls_credentials(*self._tls), options)
    else:
      self.channel = grpc.insecure_channel(self.address, options=options)
    self.prediction_stub = prediction_service_pb2_grpc.PredictionServiceStub(
        self.channel)
    self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)

  def running(self):
    return self.process is not None and self.process.poll() is None

  def log_tail(self, lines=40):
    try:
      with open(self.log_path, encoding="utf-8", errors="replace") as f:
        return "".join(collections.deque(f, maxlen=lines))
    except OSError:
      return ""

  def wait_ready(self, timeout=60, version=None):
    """Waits until `version` (any version when None) is AVAILABLE.

    Returns:
      The AVAILABLE version.

    Raises:
      ServerError: if the process exits or `timeout` seconds pass; the
        message ends with the server's log tail.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
      if not self.running():
        code = None if self.process is None else self.process.returncode
        raise ServerError(
            grpc.StatusCode.UNAVAILABLE,
            f"model server exited (code {code}) before it was ready; log:\n"
            f"{self.log_tail()}")
      try:
        for version_, state in sorted(self.status().items(), reverse=True):
          if state == "AVAILABLE" and version in (None, version_):
            return version_
      except grpc.RpcError as e:
        last = f"{e.code()}: {e.details()}"
      if time.monotonic() > deadline:
        raise ServerError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"model server not ready after {timeout}s (version {version}; "
            f"last: {last}); log:\n{self.log_tail()}")
      time.sleep(0.1)

  def model_status(self, version=None, timeout=5):
    """The raw `GetModelStatusResponse`."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = self.model_name
    if version is not None:
      request.model_spec.version.value = version
    return self.model_stub.GetModelStatus(request, timeout=timeout)

  def status(self):
    """`{version: state name}`, e.g. `{1: "END", 2: "AVAILABLE"}`."""
    return {s.version: _State.Name(s.state)
            for s in self.model_status().model_version_status}

  def predict_response(self, inputs, signature=DEFAULT_SIGNATURE,
                       version=None, output_filter=(), timeout=30):
    """The raw `PredictResponse`; raises `grpc.RpcError` on errors."""
    return self.prediction_stub.Predict(
        predict_request(self.model_name, inputs, signature, version,
                        output_filter), timeout=timeout)

  def predict(self, inputs, signature=DEFAULT_SIGNATURE, version=None,
              timeout=30):
    """`{alias: ndarray}` outputs for `{alias: array-like}` inputs."""
    response = self.predict_response(inputs, signature, version,
                                     timeout=timeout)
    return {alias: tf.make_ndarray(proto)
            for alias, proto in response.outputs.items()}

  def applied(self):
    """The `--apply_log` entries so far, as dicts."""
    try:
      with open(self.apply_log, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
      return []

  def kill(self):
    """SIGKILL, as in a crash."""
    if self.running():
      self.process.kill()
    if self.process is not None:
      self.process.wait()

  def stop(self, timeout=30):
    """SIGTERM, then waits (SIGKILL after `timeout` seconds)."""
    if self.running():
      self.process.terminate()
      try:
        self.process.wait(timeout)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._close_channel()
    return None if self.process is None else self.process.returncode

  def restart(self):
    """Stops (if running) and starts again on the same port."""
    self.stop()
    self.start()

  def _close_channel(self):
    if self.channel is not None:
      self.channel.close()
      self.channel = None

  def close(self):
    self.stop()
    if self._tmp is not None:
      shutil.rmtree(self._tmp, ignore_errors=True)
      self._tmp = None

  def __enter__(self):
    return self

  def __exit__(self, *unused_exc_info):
    self.close()


if __name__ == "__main__":
  sys.exit(main())
