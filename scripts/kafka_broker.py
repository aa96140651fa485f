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
listening on loopback only, for tests and local runs.  Standard library only.

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

Needs Java 17+ (``$JAVA_HOME/bin/java`` or ``java`` on PATH) and, for
``fetch``, Maven (``$MVN`` or ``mvn`` on PATH).
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import json
import os
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


def _write_properties(path: Path, props: dict) -> None:
  lines = [f"{key}={value}" for key, value in props.items()]
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
  tmp.replace(path)


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
  """

  def __init__(self, data_dir, port: int = 0, controller_port: int = 0,
               heap: str = "512m", lib=None, extra_properties=None):
    self.data_dir = Path(data_dir).resolve()
    self.heap = heap
    self.lib = Path(lib).resolve() if lib else None
    self.extra_properties = dict(extra_properties or {})
    state = self._read_state()
    self.port = int(port) or int(state.get("port", 0))
    self.controller_port = (int(controller_port)
                            or int(state.get("controller_port", 0)))
    self.cluster_id = state.get("cluster_id")
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
             "cluster_id": self.cluster_id, "kafka_version": KAFKA_VERSION}
    (self.data_dir / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")

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
    props.update(self.extra_properties)
    return props

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
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True,
                            capture_output=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(
          f"formatting Kafka storage in {self.log_dirs} failed "
          f"(exit {result.returncode}):\n{result.stdout}{result.stderr}"
          f"\n{_tail(self.log_file, 3000)}")

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
    _write_properties(self.properties_file, self.properties())
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
    return {"running": pid is not None, "pid": pid,
            "bootstrap_servers": (f"127.0.0.1:{self.port}"
                                  if self.port else None),
            "port_open": bool(self.port) and _port_open(self.port),
            "data_dir": str(self.data_dir)}

  def __enter__(self) -> "KafkaBroker":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def __repr__(self) -> str:
    return (f"KafkaBroker(data_dir={str(self.data_dir)!r}, port={self.port},"
            f" controller_port={self.controller_port})")


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
  for name, text in (("stop", "stop the broker of a data dir"),
                     ("status", "is the broker of a data dir running?")):
    cmd = sub.add_parser(name, help=text)
    cmd.add_argument("--data-dir", required=True, type=Path)
    if name == "stop":
      cmd.add_argument("--timeout", type=float, default=30)
  args = parser.parse_args(argv)

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
      broker = KafkaBroker(args.data_dir, port=args.port,
                           controller_port=args.controller_port,
                           heap=args.heap)
      broker.start(timeout=args.timeout, detach=True)
      print(f"Kafka {KAFKA_VERSION} started in "
            f"{broker.last_start_seconds:.1f}s (pid {broker.pid}, logs in "
            f"{broker.log_file})", file=sys.stderr)
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
