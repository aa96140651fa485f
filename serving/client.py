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
"""A gRPC client of TF Serving for the signatures tfrs-monolith exports.

`ServingClient` speaks to a stock `tensorflow_model_server` through the
stubs of `tensorflow-serving-api`: `PredictionService.Predict` runs the
`serving_default`, `apply_patch`, `embedding_rows`, `table_keys` and
`patch_watermark` signatures (`tfrs_monolith.export`), and `ModelService.GetModelStatus`
says which versions are loaded.

Every call has a deadline. Calls that fail for a passing reason
(unavailable, deadline exceeded, aborted) are retried with exponential
backoff; what still fails raises `ServingUnavailable`. A request the server
refuses (bad argument, unknown table, missing signature) raises
`ServingRejected` at once: retrying it cannot help.
"""

import logging
import random
import time
from typing import Dict, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

__all__ = ["ServingClient", "ServingError", "ServingUnavailable",
           "tls_credentials",
           "ServingRejected", "TooLarge"]

_TRANSIENT = frozenset([
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
])
# TF Serving's ManagerState names, by enum value.
_STATES = {
    value: name for name, value in
    get_model_status_pb2.ModelVersionStatus.State.items()
}


class ServingError(Exception):
  """A call to the model server failed."""

  def __init__(self, message, code=None, details=""):
    super().__init__(message)
    self.code = code
    self.details = details


class ServingUnavailable(ServingError):
  """The server could not be reached or did not answer in time (after the
  retries)."""


class ServingRejected(ServingError):
  """The server refused the request; retrying the same request cannot help."""


class TooLarge(ServingRejected):
  """The request was larger than the server accepts (RESOURCE_EXHAUSTED)."""


def _describe(error: grpc.RpcError) -> str:
  return f"{error.code().name}: {error.details()}"


def tls_credentials(ca_file: Optional[str] = None,
                    cert_file: Optional[str] = None,
                    key_file: Optional[str] = None) -> grpc.ChannelCredentials:
  """gRPC TLS credentials from PEM files.

  Args:
    ca_file: the CA (or self-signed server certificate) that signs the
      server's certificate; None: the system's roots.
    cert_file: this client's certificate, for servers that verify clients
      (TF Serving's `client_verify`).
    key_file: the private key of `cert_file`.

  Raises:
    ValueError: if only one of `cert_file` and `key_file` is given, or a
      file cannot be read (naming it).
  """
  if (cert_file is None) != (key_file is None):
    raise ValueError("`cert_file` and `key_file` go together. Received: "
                     f"cert_file={cert_file!r}, key_file={key_file!r}")

  def read(name, path):
    if path is None:
      return None
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as error:
      raise ValueError(f"cannot read `{name}` {path!r}: {error.strerror}"
                       ) from None

  return grpc.ssl_channel_credentials(
      root_certificates=read("ca_file", ca_file),
      private_key=read("key_file", key_file),
      certificate_chain=read("cert_file", cert_file))


class ServingClient:
  """Calls one model of a TF Serving server.

  Example:

  ```python
  client = ServingClient("127.0.0.1:8500", "ranker")
  version = client.served_version()
  client.apply_patch("user", keys, values, version=version)
  values, present = client.rows("user", keys)
  ```

  Args:
    target: the server's gRPC address, `host:port`.
    model_name: the model name in the server's model config.
    timeout: seconds allowed for each call.
    retries: attempts after the first for transient failures.
    backoff: seconds before the first retry; doubles each time, with jitter,
      up to `max_backoff`.
    max_backoff: the longest wait between retries.
    max_receive_bytes: the largest reply accepted.
    credentials: TLS credentials (`tls_credentials`) for a server started
      with `--ssl_config_file`; None: plaintext.
    server_name: the name the server's certificate must carry, when it is
      not the host of `target` (gRPC's `ssl_target_name_override`).
  """

  def __init__(self,
               target: str,
               model_name: str,
               timeout: float = 10.0,
               retries: int = 3,
               backoff: float = 0.1,
               max_backoff: float = 5.0,
               max_receive_bytes: int = 256 << 20,
               credentials: Optional[grpc.ChannelCredentials] = None,
               server_name: Optional[str] = None):
    if not isinstance(target, str) or ":" not in target:
      raise ValueError("`target` must be a host:port string. Received: "
                       f"target={target!r}")
    if not isinstance(model_name, str) or not model_name:
      raise ValueError("`model_name` must be a non-empty string. Received: "
                       f"model_name={model_name!r}")
    for name, value in (("timeout", timeout), ("backoff", backoff),
                        ("max_backoff", max_backoff)):
      if isinstance(value, bool) or not isinstance(
          value, (int, float)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number of seconds. "
                         f"Received: {name}={value!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
      raise ValueError("`retries` must be a non-negative integer. Received: "
                       f"retries={retries!r}")
    self.target = target
    self.model_name = model_name
    self.timeout = float(timeout)
    self.retries = retries
    self.backoff = float(backoff)
    self.max_backoff = float(max_backoff)
    self.retried = 0       # Transient failures retried so far.
    options = [
        ("grpc.max_receive_message_length", int(max_receive_bytes)),
        ("grpc.max_send_message_length", -1),
    ]
    if credentials is None:
      if server_name is not None:
        raise ValueError("`server_name` needs TLS `credentials`")
      self._channel = grpc.insecure_channel(target, options=options)
    else:
      if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
      self._channel = grpc.secure_channel(target, credentials,
                                          options=options)
    self._predict = prediction_service_pb2_grpc.PredictionServiceStub(
        self._channel).Predict
    self._status = model_service_pb2_grpc.ModelServiceStub(
        self._channel).GetModelStatus

  def close(self):
    self._channel.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # ------------------------------------------------------------------ calls

  def _call(self, method, request, what):
    delay = self.backoff
    for attempt in range(self.retries + 1):
      try:
        return method(request, timeout=self.timeout)
      except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
          raise TooLarge(f"{what}: {_describe(error)}", code,
                         error.details()) from None
        if code not in _TRANSIENT:
          raise ServingRejected(f"{what}: {_describe(error)}", code,
                                error.details()) from None
        if attempt == self.retries:
          raise ServingUnavailable(
              f"{what}: {_describe(error)} (after {attempt + 1} attempts)",
              code, error.details()) from None
        self.retried += 1
        logging.debug("%s failed (%s); retrying in %.2f s", what,
                      _describe(error), delay)
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, self.max_backoff)
    raise AssertionError("unreachable")

  def status(self) -> Dict[int, str]:
    """The model's versions known to the server: `{version: state}`, with
    TF Serving's state names (`AVAILABLE`, `LOADING`, `END`, ...)."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = self.model_name
    reply = self._call(self._status, request, "GetModelStatus")
    return {int(s.version): _STATES.get(s.state, str(s.state))
            for s in reply.model_version_status}

  def served_version(self) -> Optional[int]:
    """The newest AVAILABLE version, or None while none is."""
    available = [v for v, state in self.status().items()
                 if state == "AVAILABLE"]
    return max(available) if available else None

  def predict(self,
              inputs: Mapping[str, np.ndarray],
              signature: str = "serving_default",
              version: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Runs `signature` on `inputs`; returns its outputs as NumPy arrays."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = self.model_name
    request.model_spec.signature_name = signature
    if version is not None:
      request.model_spec.version.value = int(version)
    for name, value in inputs.items():
      request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    reply = self._call(self._predict, request, f"Predict({signature})")
    return {name: tf.make_ndarray(proto)
            for name, proto in reply.outputs.items()}

  # ------------------------------------------------- tfrs-monolith signatures

  def apply_patch(self,
                  table: str,
                  keys,
                  values,
                  evicted=None,
                  full: bool = False,
                  created_at: int = 0,
                  version: Optional[int] = None) -> int:
    """One `apply_patch` request; returns how many rows changed."""
    keys = np.asarray(keys, np.int64).reshape([-1])
    values = np.asarray(values, np.float32)
    if values.ndim != 2 or values.shape[0] != keys.shape[0]:
      raise ValueError("`values` must have shape [len(keys), dim]. "
                       f"Received: values with shape {values.shape} for "
                       f"{keys.shape[0]} keys")
    evicted = np.zeros([0], np.int64) if evicted is None else np.asarray(
        evicted, np.int64).reshape([-1])
    outputs = self.predict({
        "table": np.array(table, dtype=object),
        "keys": keys,
        "values": values,
        "evicted": evicted,
        "full": np.array(bool(full)),
        "created_at": np.array(int(created_at), np.int64),
    }, signature="apply_patch", version=version)
    return int(outputs["changed"])

  def rows(self, table: str, keys,
           version: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The served `(values, present)` of `keys` in `table`."""
    outputs = self.predict({
        "table": np.array(table, dtype=object),
        "keys": np.asarray(keys, np.int64).reshape([-1]),
    }, signature="embedding_rows", version=version)
    return outputs["values"], outputs["present"].astype(bool)

  def table_keys(self, table: str, version: Optional[int] = None) -> np.ndarray:
    """Every live key of the served `table`."""
    outputs = self.predict({"table": np.array(table, dtype=object)},
                           signature="table_keys", version=version)
    return outputs["keys"].astype(np.int64)

  def watermark(self, table: str, version: Optional[int] = None) -> int:
    """The last patch sequence of `table` included in the served version."""
    outputs = self.predict({"table": np.array(table, dtype=object)},
                           signature="patch_watermark", version=version)
    return int(outputs["sequence"])
