#!/usr/bin/env python3
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
"""Install, start, wait for, restart and stop a real Apache Kafka broker.

A single-node KRaft cluster (one process that is both broker and controller)
listening on loopback only, for tests and local runs.  Standard library only
(but for ``KafkaBroker.add_user``, which uses kafka-python).

The broker jars come from Maven Central through ``scripts/kafka/pom.xml`` and
are copied into ``<repo>/.cache/kafka/lib`` (never committed)::

    python scripts/kafka_broker.py fetch
    python scripts/kafka_broker.py start --data-dir runs/kafka --port 9092
    python scripts/kafka_broker.py status --data-dir runs/kafka
    python scripts/kafka_broker.py stop --data-dir runs/kafka

From Python::

    from kafka_broker import KafkaBroker, fetch
    fetch()
    with KafkaBroker("/tmp/kafka-data") as broker:
        print(broker.bootstrap_servers)   # 127.0.0.1:<port>

A secured broker (``security="sasl_ssl"``) accepts clients only over TLS and
only after SASL/SCRAM authentication (SCRAM-SHA-512 or SCRAM-SHA-256)::

    broker = KafkaBroker("/tmp/kafka-secure", security="sasl_ssl",
                         users={"alice": "alice-secret"}).start()
    broker.client_properties("/tmp/alice.properties", "alice",
                             "alice-secret")
    # TFRS_MONOLITH_KAFKA_CONFIG=/tmp/alice.properties for tfrs_monolith.

From the command line, the password of ``--user alice`` comes from
``$TFRS_MONOLITH_KAFKA_PASSWORD`` (``--user alice:secret`` also works, for
local tests only: command lines are visible to other local users)::

    export TFRS_MONOLITH_KAFKA_PASSWORD=alice-secret
    python scripts/kafka_broker.py start --data-dir runs/kafka-secure \\
        --security sasl_ssl --user alice \\
        --client-properties runs/alice.properties

Needs Java 17+ (``$JAVA_HOME/bin/java`` or ``java`` on PATH; its ``keytool``
makes the TLS certificate) and, for ``fetch``, Maven (``$MVN`` or ``mvn`` on
PATH).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["KafkaBroker", "fetch", "lib_dir", "KAFKA_VERSION"]

KAFKA_VERSION = "4.4.0"

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
POM = SCRIPTS_DIR / "kafka" / "pom.xml"
CACHE_DIR = REPO_ROOT / ".cache" / "kafka"
LIB_DIR = CACHE_DIR / "lib"
STAMP_NAME = ".fetched"

# Files kept in a broker's data directory.
PROPS_NAME = "server.properties"
LOG4J_NAME = "log4j2.properties"
STATE_NAME = "broker.json"   # ports and cluster id, reused by restarts
PID_NAME = "kafka.pid"
SERVER_LOG_NAME = "server.log"  # log4j2 output of the broker
STDOUT_NAME = "kafka.out"    # the JVM's own stdout/stderr
LOG_DIRS_NAME = "logs"       # log.dirs: partitions and KRaft metadata
SECRETS_NAME = "secrets.json"  # generated passwords (mode 0600)
TLS_DIR_NAME = "tls"         # the broker's key store and its CA (PEM)
KEYSTORE_NAME = "broker.p12"
CA_NAME = "ca.pem"
ADMIN_PROPS_NAME = "admin.properties"  # the admin user's client settings

# Client security of a broker (``KafkaBroker(security=...)``).
SECURITY_PROTOCOLS = {
    "plaintext": "PLAINTEXT",
    "sasl_plaintext": "SASL_PLAINTEXT",
    "sasl_ssl": "SASL_SSL",
}
SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")
SCRAM_ITERATIONS = 8192
ADMIN_USER = "admin"  # inter-broker and controller logins
# Where the CLI reads a --user's password from when none is given after ':'.
PASSWORD_ENV = "TFRS_MONOLITH_KAFKA_PASSWORD"
_USER_NAME = re.compile(r"[A-Za-z0-9._@-]+")

# Printed (INFO, logger kafka.server.KafkaRaftServer) once the broker is
# registered with the controller, unfenced and serving on its listeners.
STARTED_MARKER = "Kafka Server started"
MAIN_CLASS = "kafka.Kafka"
NODE_ID = 1


# --------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------

def lib_dir() -> Path:
  """The folder holding the broker's jars (``$KAFKA_LIB_DIR`` overrides)."""
  override = os.environ.get("KAFKA_LIB_DIR")
  return Path(override).resolve() if override else LIB_DIR


def _pom_digest() -> str:
  return hashlib.sha256(POM.read_bytes()).hexdigest()


def _is_fetched(lib: Path) -> bool:
  stamp = lib / STAMP_NAME
  try:
    recorded = stamp.read_text().strip()
  except OSError:
    return False
  return recorded == _pom_digest() and any(lib.glob("kafka_2.13-*.jar"))


@contextlib.contextmanager
def _file_lock(path: Path):
  """An exclusive advisory lock (POSIX), so parallel fetches do not race."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a+") as handle:
    try:
      import fcntl  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover - not POSIX
      yield
      return
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(quiet: bool = False) -> Path:
  """Copies the broker's jars from Maven into ``.cache/kafka/lib`` once.

  Idempotent: a stamp file (the SHA-256 of ``pom.xml``) written after a
  successful download makes later calls return at once; editing the POM
  fetches again.  Returns the jar folder.
  """
  lib = lib_dir()
  if _is_fetched(lib):
    return lib
  if os.environ.get("KAFKA_LIB_DIR"):
    raise RuntimeError(
        f"KAFKA_LIB_DIR={lib} holds no fetched Kafka jars "
        f"(no {STAMP_NAME} matching {POM}); unset it or fill it first")
  mvn = os.environ.get("MVN") or shutil.which("mvn")
  if not mvn:
    raise RuntimeError("Maven (mvn) not found on PATH: install Maven 3.6+ "
                       "or set MVN=/path/to/mvn")
  with _file_lock(CACHE_DIR / ".fetch.lock"):
    if _is_fetched(lib):  # another process fetched while we waited
      return lib
    # Download into a fresh folder and swap it in, so that a failed or
    # interrupted fetch never leaves a half-filled lib/ behind.
    staging = Path(tempfile.mkdtemp(prefix="lib.", dir=CACHE_DIR))
    staging.chmod(0o755)
    cmd = [mvn, "-q", "-B", "-f", str(POM),
           "dependency:copy-dependencies",
           f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    if not quiet:
      print(f"Fetching Kafka {KAFKA_VERSION} jars into {lib} ...",
            file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
      result = subprocess.run(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
      if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with exit code {result.returncode}:"
            f"\n{(result.stdout + result.stderr)[-4000:]}")
      if not any(staging.glob("kafka_2.13-*.jar")):
        raise RuntimeError(f"{' '.join(cmd)} copied no kafka_2.13 jar")
      (staging / STAMP_NAME).write_text(_pom_digest() + "\n")
      if lib.exists():
        shutil.rmtree(lib)
      staging.rename(lib)
    finally:
      if staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    if not quiet:
      print(f"Fetched {len(list(lib.glob('*.jar')))} jars in "
            f"{time.monotonic() - started:.1f}s", file=sys.stderr,
            flush=True)
  return lib


def _java() -> str:
  java_home = os.environ.get("JAVA_HOME")
  if java_home and (Path(java_home) / "bin" / "java").exists():
    return str(Path(java_home) / "bin" / "java")
  java = shutil.which("java")
  if not java:
    raise RuntimeError("java not found: install Java 17+ or set JAVA_HOME")
  return java


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _free_port(exclude=()) -> int:
  while True:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
      sock.bind(("127.0.0.1", 0))
      port = sock.getsockname()[1]
    if port not in exclude:
      return port


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
  try:
    with socket.create_connection((host, port), timeout=0.5):
      return True
  except OSError:
    return False


def _random_cluster_id() -> str:
  """What ``kafka-storage.sh random-uuid`` prints: a base64url 16-byte UUID."""
  while True:
    text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not text.startswith("-"):  # Kafka's Uuid.randomUuid() avoids these
      return text


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  # A zombie (exited, not yet reaped by its parent) is not running.
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return True


def _cmdline(pid: int) -> str | None:
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
      return handle.read().replace(b"\0", b" ").decode(errors="replace")
  except OSError:
    return None  # no /proc (not Linux) or no such process


def _tail(path: Path, max_bytes: int = 6000) -> str:
  try:
    with open(path, "rb") as handle:
      handle.seek(0, os.SEEK_END)
      size = handle.tell()
      handle.seek(max(0, size - max_bytes))
      return handle.read().decode(errors="replace")
  except OSError:
    return ""


def _write_properties(path: Path, props: dict, private: bool = False) -> None:
  """Writes ``props``; ``private`` files (they hold passwords) get 0600."""
  _write_text(path, _property_lines(props), private)


def _property_lines(props: dict) -> str:
  """``key=value`` lines that ``java.util.Properties.load`` reads back."""
  def escape(text):
    text = (str(text).replace("\\", "\\\\").replace("\n", "\\n")
            .replace("\r", "\\r"))
    return "\\" + text if text.startswith((" ", "\t")) else text
  return "".join(f"{escape(key)}={escape(value)}\n"
                 for key, value in props.items())


def _write_text(path: Path, text: str, private: bool = False) -> None:
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.unlink(missing_ok=True)
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
               0o600 if private else 0o644)
  with os.fdopen(fd, "w", encoding="utf-8") as handle:
    handle.write(text)
  tmp.replace(path)


def _check_user(name, password) -> None:
  if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
    raise ValueError("a SCRAM user name must be letters, digits, '.', '_', "
                     f"'@' or '-'. Received: user={name!r}")
  if not isinstance(password, str) or not password:
    # Never echo a password.
    raise ValueError(f"the password of user {name!r} must be a non-empty "
                     "string")


def _jaas_quote(text: str) -> str:
  return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def scram_credential(mechanism: str, name: str, password: str,
                     iterations: int = SCRAM_ITERATIONS) -> str:
  """A ``kafka-storage format --add-scram`` argument for one user.

  Carries the salted password (RFC 5802 ``Hi()``, i.e. PBKDF2), not the
  password itself, so that neither the password nor characters in it that
  the tool's syntax reserves reach its command line.
  """
  _check_user(name, password)
  digest = {"SCRAM-SHA-512": "sha512", "SCRAM-SHA-256": "sha256"}[mechanism]
  salt = secrets.token_bytes(16)
  salted = hashlib.pbkdf2_hmac(digest, password.encode("utf-8"), salt,
                               iterations)
  return (f"{mechanism}=[name={name},iterations={iterations},"
          f'salt="{base64.b64encode(salt).decode()}",'
          f'saltedpassword="{base64.b64encode(salted).decode()}"]')


_LOG4J2 = """\
# Written by scripts/kafka_broker.py: broker logs go to {log} only.
name = tfrs-monolith-kafka
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


# --------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------

class KafkaBroker:
  """One Kafka broker+controller process (KRaft) on 127.0.0.1.

  ``port`` and ``controller_port`` of 0 pick free loopback ports on the first
  start; restarts (and later ``KafkaBroker`` objects on the same
  ``data_dir``) reuse the ports recorded in ``data_dir/broker.json``.  The
  caller owns ``data_dir``: nothing here ever deletes it.

  ``security`` chooses how clients connect to ``port``:

  * ``"plaintext"`` (the default): no TLS, no authentication.
  * ``"sasl_plaintext"``: SASL/SCRAM authentication (SCRAM-SHA-512 and
    SCRAM-SHA-256), no TLS.
  * ``"sasl_ssl"``: SASL/SCRAM over TLS. A self-signed certificate for
    ``127.0.0.1`` and ``localhost`` is made in ``data_dir/tls`` on the first
    start; clients trust it through ``ca_file`` (PEM).

  With SASL, ``port`` is the only listener clients can use, and it serves
  authenticated clients only; it is the inter-broker listener too, where the
  broker logs in as a generated ``admin`` SCRAM user. The KRaft controller
  listener (``controller_port``) takes SASL/PLAIN logins of that same admin
  user only. The generated passwords live in ``data_dir/secrets.json`` and
  ``server.properties`` (both mode 0600). ``users`` (``{name: password}``)
  are the SCRAM users clients log in as (both mechanisms). They are created
  when the storage is formatted (first start); users new to a formatted
  ``data_dir`` are added once the broker runs (see `add_user`). The security
  of a ``data_dir`` is recorded: ``security=None`` reuses it.
  No authorizer is configured: every authenticated user may do anything.
  """

  def __init__(self, data_dir, port: int = 0, controller_port: int = 0,
               heap: str = "512m", lib=None, extra_properties=None,
               security: str | None = None, users=None):
    self.data_dir = Path(data_dir).resolve()
    self.heap = heap
    self.lib = Path(lib).resolve() if lib else None
    self.extra_properties = dict(extra_properties or {})
    state = self._read_state()
    self.port = int(port) or int(state.get("port", 0))
    self.controller_port = (int(controller_port)
                            or int(state.get("controller_port", 0)))
    self.cluster_id = state.get("cluster_id")
    recorded = state.get("security", "plaintext")
    if security is None:
      security = recorded
    if security not in SECURITY_PROTOCOLS:
      raise ValueError(f"`security` must be one of "
                       f"{', '.join(SECURITY_PROTOCOLS)}. Received: "
                       f"security={security!r}")
    if (security != "plaintext" and recorded == "plaintext"
        and self.formatted):
      raise ValueError(
          f"{self.data_dir} was formatted for security='plaintext' and has "
          f"no admin SCRAM user: use a fresh data_dir for "
          f"security={security!r}")
    self.security = security
    users = dict(users or {})
    if users and security == "plaintext":
      raise ValueError("`users` need security='sasl_plaintext' or "
                       f"'sasl_ssl'. Received: security={security!r}")
    for name, password in users.items():
      _check_user(name, password)
      if name == ADMIN_USER:
        raise ValueError(f"the user name {ADMIN_USER!r} is the broker's own."
                         f" Received: users with {name!r}")
    self.users = users
    self._known_users = list(state.get("users", []))
    self._proc: subprocess.Popen | None = None
    self._atexit_registered = False
    self.last_start_seconds: float | None = None

  # -- paths and state ----------------------------------------------------

  @property
  def bootstrap_servers(self) -> str:
    if not self.port:
      raise RuntimeError("the broker has no port yet: call start() first")
    return f"127.0.0.1:{self.port}"

  @property
  def security_protocol(self) -> str:
    """The protocol clients use: PLAINTEXT, SASL_PLAINTEXT or SASL_SSL."""
    return SECURITY_PROTOCOLS[self.security]

  @property
  def sasl(self) -> bool:
    return self.security != "plaintext"

  @property
  def tls(self) -> bool:
    return self.security == "sasl_ssl"

  @property
  def ca_file(self) -> Path | None:
    """The PEM certificate clients trust (``sasl_ssl`` only, else None).

    It exists once the broker has started.
    """
    return self.data_dir / TLS_DIR_NAME / CA_NAME if self.tls else None

  @property
  def keystore_file(self) -> Path:
    return self.data_dir / TLS_DIR_NAME / KEYSTORE_NAME

  @property
  def admin_properties_file(self) -> Path:
    """Client settings of the admin user, for Kafka's Java tools."""
    return self.data_dir / ADMIN_PROPS_NAME

  @property
  def properties_file(self) -> Path:
    return self.data_dir / PROPS_NAME

  @property
  def log_file(self) -> Path:
    return self.data_dir / SERVER_LOG_NAME

  @property
  def stdout_file(self) -> Path:
    return self.data_dir / STDOUT_NAME

  @property
  def pid_file(self) -> Path:
    return self.data_dir / PID_NAME

  @property
  def log_dirs(self) -> Path:
    return self.data_dir / LOG_DIRS_NAME

  @property
  def formatted(self) -> bool:
    return (self.log_dirs / "meta.properties").exists()

  def _read_state(self) -> dict:
    try:
      return json.loads((self.data_dir / STATE_NAME).read_text())
    except (OSError, ValueError):
      return {}

  def _write_state(self) -> None:
    state = {"port": self.port, "controller_port": self.controller_port,
             "cluster_id": self.cluster_id, "kafka_version": KAFKA_VERSION,
             "security": self.security, "users": self._known_users}
    (self.data_dir / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")

  def _secrets(self) -> dict:
    """Generated passwords (admin login, key store), made on first use."""
    path = self.data_dir / SECRETS_NAME
    try:
      data = json.loads(path.read_text())
    except (OSError, ValueError):
      data = {}
    if not {"admin_password", "keystore_password"} <= set(data):
      data = {"admin_password": secrets.token_urlsafe(24),
              "keystore_password": secrets.token_urlsafe(24), **data}
      _write_text(path, json.dumps(data, indent=2) + "\n", private=True)
    return data

  @property
  def pid(self) -> int | None:
    """The broker's pid if it is running (checked against /proc)."""
    if self._proc is not None:
      return self._proc.pid if self._proc.poll() is None else None
    try:
      pid = int(self.pid_file.read_text().strip())
    except (OSError, ValueError):
      return None
    if not _pid_alive(pid):
      return None
    cmdline = _cmdline(pid)
    # Guard against a recycled pid: it must be *this* broker.
    if cmdline is not None and (MAIN_CLASS not in cmdline
                                or str(self.properties_file) not in cmdline):
      return None
    return pid

  def is_running(self) -> bool:
    return self.pid is not None

  # -- configuration ------------------------------------------------------

  def properties(self) -> dict:
    port, cport = self.port, self.controller_port
    props = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{cport}",
        "listeners": (f"PLAINTEXT://127.0.0.1:{port},"
                      f"CONTROLLER://127.0.0.1:{cport}"),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map":
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(self.log_dirs),
        "num.partitions": 1,
        "default.replication.factor": 1,
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "log.retention.hours": 168,
    }
    if self.sasl:
      props.update(self._security_properties())
    props.update(self.extra_properties)
    return props

  def _security_properties(self) -> dict:
    """Listeners and logins of a SASL broker (see the class docstring)."""
    port, cport = self.port, self.controller_port
    name = self.security_protocol  # the listener's name is its protocol's
    admin = self._secrets()["admin_password"]
    scram_login = ("org.apache.kafka.common.security.scram.ScramLoginModule "
                   f"required username={_jaas_quote(ADMIN_USER)} "
                   f"password={_jaas_quote(admin)};")
    plain_login = ("org.apache.kafka.common.security.plain.PlainLoginModule "
                   f"required username={_jaas_quote(ADMIN_USER)} "
                   f"password={_jaas_quote(admin)} "
                   f"user_{ADMIN_USER}={_jaas_quote(admin)};")
    listener = f"listener.name.{name.lower()}"
    props = {
        "listeners": (f"{name}://127.0.0.1:{port},"
                      f"CONTROLLER://127.0.0.1:{cport}"),
        "advertised.listeners": f"{name}://127.0.0.1:{port}",
        "inter.broker.listener.name": name,
        "listener.security.protocol.map":
            f"CONTROLLER:SASL_PLAINTEXT,{name}:{name}",
        "sasl.enabled.mechanisms": ",".join(SCRAM_MECHANISMS),
        "sasl.mechanism.inter.broker.protocol": SCRAM_MECHANISMS[0],
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": plain_login,
    }
    for mechanism in SCRAM_MECHANISMS:
      props[f"{listener}.{mechanism.lower()}.sasl.jaas.config"] = scram_login
    if self.tls:
      keystore_password = self._secrets()["keystore_password"]
      props.update({
          "ssl.keystore.type": "PKCS12",
          "ssl.keystore.location": str(self.keystore_file),
          "ssl.keystore.password": keystore_password,
          "ssl.key.password": keystore_password,
          "ssl.truststore.type": "PEM",
          "ssl.truststore.location": str(self.ca_file),
          "ssl.client.auth": "none",
          "ssl.endpoint.identification.algorithm": "https",
      })
    return props

  def _client_settings(self, user: str, password: str | None) -> dict:
    settings = {"security.protocol": self.security_protocol,
                "sasl.mechanism": SCRAM_MECHANISMS[0]}
    if password is None:
      settings["sasl.username"] = user
    else:
      settings["sasl.jaas.config"] = (
          "org.apache.kafka.common.security.scram.ScramLoginModule required "
          f"username={_jaas_quote(user)} password={_jaas_quote(password)};")
    if self.tls:
      settings.update({"ssl.truststore.type": "PEM",
                       "ssl.truststore.location": str(self.ca_file),
                       "ssl.endpoint.identification.algorithm": "https"})
    return settings

  def client_properties(self, path, user: str,
                        password: str | None = None) -> Path:
    """Writes a Kafka client ``.properties`` file for ``user``; returns it.

    The file uses the standard client names (``security.protocol``,
    ``sasl.mechanism``, ``sasl.jaas.config``, a PEM trust store), so it
    serves Kafka's Java tools as well as ``TFRS_MONOLITH_KAFKA_CONFIG``.
    Without ``password`` the file names only the user (``sasl.username``,
    which only tfrs_monolith reads) and ``$TFRS_MONOLITH_KAFKA_PASSWORD``
    must supply the password. The file is written with mode 0600.
    """
    if not self.sasl:
      raise ValueError("client_properties needs a SASL broker. Received: "
                       f"security={self.security!r}")
    if password is not None:
      _check_user(user, password)
    elif not isinstance(user, str) or not _USER_NAME.fullmatch(user):
      raise ValueError(f"`user` must be a SCRAM user name. Received: "
                       f"user={user!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Kafka client settings for {user} at "
              f"{self.security_protocol}://127.0.0.1:{self.port}\n")
    _write_text(path, header + _property_lines(self._client_settings(
        user, password)), private=True)
    return path

  def _classpath(self) -> str:
    lib = self.lib or fetch()  # fetch() returns at once once fetched
    if not any(lib.glob("kafka_2.13-*.jar")):
      raise RuntimeError(f"no Kafka jars in {lib}: run "
                         "`python scripts/kafka_broker.py fetch` first")
    return str(lib / "*")

  def _java_cmd(self, heap: str) -> list:
    return [_java(), f"-Xmx{heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / LOG4J_NAME}",
            "-cp", self._classpath()]

  def _format(self) -> None:
    """``kafka-storage.sh format --standalone`` (first start only)."""
    if not self.cluster_id:
      self.cluster_id = _random_cluster_id()
    cmd = self._java_cmd("256m") + [
        "kafka.tools.StorageTool", "format", "--standalone",
        "-t", self.cluster_id, "-c", str(self.properties_file)]
    if self.sasl:
      # SCRAM users of a KRaft cluster are records of its metadata log:
      # the first ones are written at format time.
      cmd += ["--add-scram", scram_credential(
          SCRAM_MECHANISMS[0], ADMIN_USER,
          self._secrets()["admin_password"])]
      for name, password in sorted(self.users.items()):
        for mechanism in SCRAM_MECHANISMS:
          cmd += ["--add-scram", scram_credential(mechanism, name, password)]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True,
                            capture_output=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(
          f"formatting Kafka storage in {self.log_dirs} failed "
          f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
          f"\n{_tail(self.log_file, 3000)}")
    self._known_users = sorted(self.users)

  def _keytool(self) -> str:
    keytool = Path(_java()).resolve().parent / "keytool"
    if keytool.exists():
      return str(keytool)
    found = shutil.which("keytool")
    if not found:
      raise RuntimeError("keytool not found next to java or on PATH")
    return found

  def _ensure_tls(self) -> None:
    """A self-signed key pair and certificate (first start only).

    The certificate names ``IP:127.0.0.1`` and ``DNS:localhost``, so that
    clients verify the broker's host name; ``ca_file`` is it in PEM.
    """
    keystore, ca_file = self.keystore_file, self.ca_file
    if keystore.exists() and ca_file.exists():
      return
    keystore.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keystore.unlink(missing_ok=True)
    env = dict(os.environ,
               KAFKA_BROKER_STOREPASS=self._secrets()["keystore_password"])
    keytool = self._keytool()
    # Passwords reach keytool through its environment, never argv.
    commands = [
        [keytool, "-genkeypair", "-alias", "broker", "-keyalg", "EC",
         "-groupname", "secp256r1", "-sigalg", "SHA256withECDSA",
         "-validity", "3650", "-dname", "CN=localhost",
         "-ext", "SAN=ip:127.0.0.1,dns:localhost",
         "-ext", "BC:c=ca:true",
         "-storetype", "PKCS12", "-keystore", str(keystore),
         "-storepass:env", "KAFKA_BROKER_STOREPASS"],
        [keytool, "-exportcert", "-rfc", "-alias", "broker",
         "-storetype", "PKCS12", "-keystore", str(keystore),
         "-storepass:env", "KAFKA_BROKER_STOREPASS",
         "-file", str(ca_file) + ".tmp"],
    ]
    for cmd in commands:
      result = subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True,
                              capture_output=True, check=False, env=env)
      if result.returncode != 0:
        keystore.unlink(missing_ok=True)
        raise RuntimeError(
            f"{' '.join(cmd[:2])} failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}")
    keystore.chmod(0o600)
    Path(str(ca_file) + ".tmp").replace(ca_file)

  # -- lifecycle ----------------------------------------------------------

  def start(self, timeout: float = 90, *, detach: bool = False
           ) -> "KafkaBroker":
    """Starts the broker and waits until it serves on its port.

    Formats the storage on the first start.  Raises RuntimeError, with the
    tail of the broker's log, if it exits or is not ready within ``timeout``
    seconds.  ``detach=True`` leaves the broker running when this Python
    process exits (the CLI's ``start``); otherwise an ``atexit`` hook stops
    it should the caller forget to.
    """
    if self.is_running():
      raise RuntimeError(f"a broker is already running from {self.data_dir}"
                         f" (pid {self.pid})")
    self.data_dir.mkdir(parents=True, exist_ok=True)
    want_port, want_cport = self.port, self.controller_port
    for port in (want_port, want_cport):
      if port and _port_open(port):
        raise RuntimeError(f"cannot start a Kafka broker from "
                           f"{self.data_dir}: 127.0.0.1:{port} is "
                           "already in use")
    # Only ports picked here may be re-picked if someone else takes them.
    attempts = 1 if (want_port and want_cport) else 3
    for attempt in range(attempts):
      fresh = not self.formatted
      self._prepare(fresh)
      try:
        self._launch_and_wait(timeout, detach)
        new_users = {name: password for name, password in self.users.items()
                     if name not in self._known_users}
        if new_users:
          self._add_users(new_users)
        return self
      except _PortTaken:
        if attempt + 1 >= attempts:
          raise
        # Another process grabbed an auto-picked port between our
        # probe and the JVM's bind: wipe the new storage, pick again.
        if fresh:
          shutil.rmtree(self.log_dirs, ignore_errors=True)
        self.port, self.controller_port = want_port, want_cport
    raise AssertionError("unreachable")

  def _prepare(self, fresh: bool) -> None:
    if not self.port:
      self.port = _free_port(exclude={self.controller_port})
    if not self.controller_port:
      self.controller_port = _free_port(exclude={self.port})
    if self.port == self.controller_port:
      raise ValueError("port and controller_port must differ")
    (self.data_dir / LOG4J_NAME).write_text(
        _LOG4J2.format(log=self.log_file), encoding="utf-8")
    if self.tls:
      self._ensure_tls()
    _write_properties(self.properties_file, self.properties(),
                      private=self.sasl)
    if self.sasl:
      _write_properties(self.admin_properties_file, self._client_settings(
          ADMIN_USER, self._secrets()["admin_password"]), private=True)
    if fresh:
      self._format()
    self._write_state()

  def _launch_and_wait(self, timeout: float, detach: bool) -> None:
    for port in (self.port, self.controller_port):
      if _port_open(port):
        raise _PortTaken(f"127.0.0.1:{port} is already in use")
    try:
      log_offset = self.log_file.stat().st_size
    except OSError:
      log_offset = 0
    cmd = self._java_cmd(self.heap) + [MAIN_CLASS, str(self.properties_file)]
    started = time.monotonic()
    with open(self.stdout_file, "ab") as out:
      out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: "
                f"{' '.join(cmd)}\n".encode())
      out.flush()
      self._proc = subprocess.Popen(  # pylint: disable=consider-using-with
          cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=out,
          stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    self.pid_file.write_text(f"{self._proc.pid}\n")
    if not detach and not self._atexit_registered:
      atexit.register(self._stop_at_exit)
      self._atexit_registered = True
    deadline = started + timeout
    while True:
      code = self._proc.poll()
      if code is not None:
        self._proc = None
        self.pid_file.unlink(missing_ok=True)
        log = self._log_since(log_offset)
        message = (f"Kafka broker in {self.data_dir} exited with code "
                   f"{code} during start-up")
        output = log + _tail(self.stdout_file, 3000)
        if "BindException" in output or "Address already in use" in output:
          raise _PortTaken(message + "\n" + self._diagnostics(log))
        raise RuntimeError(message + "\n" + self._diagnostics(log))
      if _port_open(self.port) and STARTED_MARKER in self._log_since(
              log_offset):
        self.last_start_seconds = time.monotonic() - started
        return
      if time.monotonic() > deadline:
        log = self._log_since(log_offset)
        self.kill()
        raise RuntimeError(
            f"Kafka broker in {self.data_dir} not ready after "
            f"{timeout:.0f}s (port {self.port} open: "
            f"{_port_open(self.port)})\n" + self._diagnostics(log))
      time.sleep(0.2)

  def add_user(self, name: str, password: str) -> None:
    """Creates SCRAM user ``name`` (or sets its password) on the running
    broker, for both SCRAM mechanisms.  Needs kafka-python."""
    _check_user(name, password)
    if name == ADMIN_USER:
      raise ValueError(f"the user name {ADMIN_USER!r} is the broker's own. "
                       f"Received: name={name!r}")
    self._add_users({name: password})
    self.users[name] = password

  def _add_users(self, users: dict) -> None:
    if not self.sasl:
      raise ValueError("SCRAM users need security='sasl_plaintext' or "
                       f"'sasl_ssl'. Received: security={self.security!r}")
    if not self.is_running():
      raise RuntimeError(f"no broker runs from {self.data_dir}: start it "
                         "before adding users")
    try:
      # pylint: disable-next=import-outside-toplevel
      from kafka.admin import KafkaAdminClient, UserScramCredentialUpsertion
    except ImportError as error:
      raise RuntimeError("adding SCRAM users to a running broker needs "
                         "kafka-python (pip install kafka-python)") from error
    settings = {"security_protocol": self.security_protocol,
                "sasl_mechanism": SCRAM_MECHANISMS[0],
                "sasl_plain_username": ADMIN_USER,
                "sasl_plain_password": self._secrets()["admin_password"]}
    if self.tls:
      settings["ssl_cafile"] = str(self.ca_file)
    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                             bootstrap_timeout_ms=30_000, **settings)
    failed = {}
    try:
      # One request per mechanism: a request may alter a user only once.
      for mechanism in SCRAM_MECHANISMS:
        errors = admin.alter_user_scram_credentials([
            UserScramCredentialUpsertion(name, mechanism, password,
                                         iterations=SCRAM_ITERATIONS)
            for name, password in sorted(users.items())])
        failed.update({name: error for name, error in errors.items()
                       if error})
    finally:
      admin.close()
    if failed:
      raise RuntimeError(f"adding SCRAM users failed: {failed}")
    self._known_users = sorted(set(self._known_users) | set(users))
    self._write_state()

  def _log_since(self, offset: int) -> str:
    try:
      with open(self.log_file, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() < offset:
          offset = 0  # truncated or replaced
        handle.seek(offset)
        return handle.read().decode(errors="replace")
    except OSError:
      return ""

  def _diagnostics(self, log: str) -> str:
    return (f"--- tail of {self.log_file} ---\n{log[-6000:]}\n"
            f"--- tail of {self.stdout_file} ---\n"
            f"{_tail(self.stdout_file, 3000)}")

  def _signal(self, sig: int) -> bool:
    pid = self.pid
    if pid is None:
      return False
    try:
      os.killpg(pid, sig)  # the broker leads its own process group
    except ProcessLookupError:
      return False
    except PermissionError:
      os.kill(pid, sig)
    return True

  def _wait_exit(self, timeout: float) -> bool:
    if self._proc is not None:
      try:
        self._proc.wait(timeout=timeout)
        return True
      except subprocess.TimeoutExpired:
        return False
    deadline = time.monotonic() + timeout
    while self.pid is not None:
      if time.monotonic() > deadline:
        return False
      time.sleep(0.1)
    return True

  def stop(self, timeout: float = 30) -> None:
    """SIGTERM (clean shutdown), then SIGKILL after ``timeout``.  Keeps data."""
    if self._signal(signal.SIGTERM) and not self._wait_exit(timeout):
      self.kill()
      return
    self._forget_process()

  def kill(self) -> None:
    """SIGKILL: an unclean crash, for recovery tests.  Keeps data.

    The next start() takes ~10 s longer than after stop(): the controller
    re-registers the broker only once the killed incarnation's session
    expires (broker.session.timeout.ms, 9 s by default).
    """
    if self._signal(signal.SIGKILL):
      self._wait_exit(10)
    self._forget_process()

  def restart(self, timeout: float = 90,
              stop_timeout: float = 30) -> "KafkaBroker":
    """Stops and starts again on the same ports and data."""
    self.stop(timeout=stop_timeout)
    return self.start(timeout=timeout)

  def close(self) -> None:
    """Stops the broker; ``data_dir`` is left to its owner."""
    self.stop()

  def _forget_process(self) -> None:
    self._proc = None
    self.pid_file.unlink(missing_ok=True)
    if self._atexit_registered:
      atexit.unregister(self._stop_at_exit)
      self._atexit_registered = False

  def _stop_at_exit(self) -> None:
    with contextlib.suppress(Exception):
      self.stop(timeout=10)

  def status(self) -> dict:
    pid = self.pid
    status = {"running": pid is not None, "pid": pid,
              "bootstrap_servers": (f"127.0.0.1:{self.port}"
                                    if self.port else None),
              "port_open": bool(self.port) and _port_open(self.port),
              "data_dir": str(self.data_dir),
              "security_protocol": self.security_protocol}
    if self.sasl:
      status["users"] = self._known_users
    if self.tls:
      status["ca_file"] = str(self.ca_file)
    return status

  def __enter__(self) -> "KafkaBroker":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def __repr__(self) -> str:
    return (f"KafkaBroker(data_dir={str(self.data_dir)!r}, port={self.port},"
            f" controller_port={self.controller_port}, "
            f"security={self.security!r})")


class _PortTaken(RuntimeError):
  """The broker could not bind one of its ports."""


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=f"A local Apache Kafka {KAFKA_VERSION} broker (KRaft, "
      "127.0.0.1 only) for tests and local runs.")
  sub = parser.add_subparsers(dest="command", required=True)
  sub.add_parser("fetch", help="download the broker's jars (once)")
  start = sub.add_parser("start", help="start a detached broker and print "
                         "its bootstrap address")
  start.add_argument("--data-dir", required=True, type=Path)
  start.add_argument("--port", type=int, default=0,
                     help="client port (default: the last one, else free)")
  start.add_argument("--controller-port", type=int, default=0)
  start.add_argument("--heap", default="512m")
  start.add_argument("--timeout", type=float, default=90)
  start.add_argument(
      "--security", choices=sorted(SECURITY_PROTOCOLS), default=None,
      help="client security: plaintext (default for a new data dir), "
      "sasl_plaintext (SCRAM logins) or sasl_ssl (SCRAM logins over TLS); "
      "default: the data dir's")
  start.add_argument(
      "--user", action="append", default=[], metavar="NAME[:PASSWORD]",
      help="a SCRAM user clients log in as (repeatable). Without "
      f":PASSWORD the password is read from ${PASSWORD_ENV}. A password "
      "on the command line is for local tests only: other local users can "
      "see it")
  start.add_argument(
      "--client-properties", type=Path, metavar="PATH",
      help="write a Kafka client .properties file for the first --user "
      "(for TFRS_MONOLITH_KAFKA_CONFIG); it holds the password only when "
      "the password was given on the command line")
  for name, text in (("stop", "stop the broker of a data dir"),
                     ("status", "is the broker of a data dir running?")):
    cmd = sub.add_parser(name, help=text)
    cmd.add_argument("--data-dir", required=True, type=Path)
    if name == "stop":
      cmd.add_argument("--timeout", type=float, default=30)
  args = parser.parse_args(argv)

  def users():
    out, from_env = {}, {}
    for spec in args.user:
      name, sep, password = spec.partition(":")
      if not sep:
        password = os.environ.get(PASSWORD_ENV, "")
        if not password:
          raise ValueError(f"--user {name} needs a password: set "
                           f"${PASSWORD_ENV} (or use NAME:PASSWORD)")
      out[name] = password
      from_env[name] = not sep
    return out, from_env

  try:
    if args.command == "fetch":
      print(fetch())
      return 0
    if args.command == "start":
      fetch()
      running = KafkaBroker(args.data_dir)
      if running.is_running():
        if args.port and args.port != running.port:
          print(f"error: a broker already runs from {running.data_dir} on "
                f"port {running.port}", file=sys.stderr)
          return 1
        print(f"already running (pid {running.pid})", file=sys.stderr)
        print(running.bootstrap_servers)
        return 0
      user_passwords, from_env = users()
      if args.client_properties and not user_passwords:
        raise ValueError("--client-properties needs a --user")
      broker = KafkaBroker(args.data_dir, port=args.port,
                           controller_port=args.controller_port,
                           heap=args.heap, security=args.security,
                           users=user_passwords)
      broker.start(timeout=args.timeout, detach=True)
      print(f"Kafka {KAFKA_VERSION} started in "
            f"{broker.last_start_seconds:.1f}s (pid {broker.pid}, "
            f"{broker.security_protocol}, logs in {broker.log_file})",
            file=sys.stderr)
      if broker.tls:
        print(f"CA certificate (PEM): {broker.ca_file}", file=sys.stderr)
      if args.client_properties:
        name = next(iter(user_passwords))
        path = broker.client_properties(
            args.client_properties, name,
            None if from_env[name] else user_passwords[name])
        print(f"client settings of {name}: {path}", file=sys.stderr)
      print(broker.bootstrap_servers)
      return 0
    broker = KafkaBroker(args.data_dir)
    if args.command == "stop":
      if not broker.is_running():
        print(f"no broker running from {broker.data_dir}", file=sys.stderr)
        broker.pid_file.unlink(missing_ok=True)
        return 0
      broker.stop(timeout=args.timeout)
      print(f"stopped the broker of {broker.data_dir}", file=sys.stderr)
      return 0
    status = broker.status()
    print(json.dumps(status, indent=2))
    return 0 if status["running"] else 1
  except (RuntimeError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
