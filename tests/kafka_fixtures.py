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
"""Pytest fixtures that run a real Apache Kafka broker on 127.0.0.1.

tests/conftest.py pulls them in with::

    sys.path.insert(0, os.path.dirname(__file__))
    from kafka_fixtures import *  # noqa: F401,F403

Fixtures:

* ``kafka_broker`` (session): one broker for the whole run, started lazily by
  the first test that asks for it; a ``scripts/kafka_broker.KafkaBroker``.
* ``kafka_broker_factory`` (function): ``kafka_broker_factory()`` starts an
  extra broker in a fresh temporary folder and stops it after the test (for
  tests that restart or kill a broker without disturbing the shared one).
* ``kafka_topic_prefix`` (function): a prefix unique to the test, for topic and
  group names, so that tests never share topics on the session broker.
* ``kafka_secure_broker`` (module): a broker whose only client listener takes
  SASL/SCRAM logins over TLS (``security="sasl_ssl"``), with the users of
  ``SECURE_USERS``; ``broker.client_properties(path, user, password)``
  writes a client ``.properties`` file for ``TFRS_MONOLITH_KAFKA_CONFIG``
  and ``broker.ca_file`` is its CA certificate (PEM).

``from kafka_fixtures import KafkaBroker`` gives the broker class itself.

The jars are fetched with Maven on first use (``make kafka-fetch`` does it up
front).  The broker's data lives under pytest's ``tmp_path_factory`` folders
and is deleted when the broker stops.
"""

import importlib.util
import itertools
import re
import shutil
import sys
from pathlib import Path

import pytest

__all__ = ["kafka_broker", "kafka_broker_factory", "kafka_topic_prefix",
           "kafka_secure_broker"]

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka_broker.py"


def _load_kafka_broker_module():
  """scripts/ is no package: load scripts/kafka_broker.py by its path."""
  name = "tfrs_monolith_scripts_kafka_broker"
  module = sys.modules.get(name)
  if module is None:
    spec = importlib.util.spec_from_file_location(name, _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses/pickling look it up
    spec.loader.exec_module(module)
  return module


kafka_broker_module = _load_kafka_broker_module()
# For tests that run brokers of their own:
#   from kafka_fixtures import KafkaBroker
KafkaBroker = kafka_broker_module.KafkaBroker
fetch = kafka_broker_module.fetch

_counter = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
  """One real Kafka broker (KRaft, loopback only) shared by the session."""
  yield from _running_broker(tmp_path_factory, "kafka")


def _running_broker(tmp_path_factory, name, **kwargs):
  """Starts a broker in a fresh folder; stops it and deletes the folder."""
  kafka_broker_module.fetch(quiet=True)
  data_dir = tmp_path_factory.mktemp(name)
  broker = kafka_broker_module.KafkaBroker(data_dir, **kwargs)
  broker.start()
  try:
    yield broker
  finally:
    broker.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def kafka_broker_factory(tmp_path_factory):
  """Starts extra brokers, each in its own temporary folder; stops them all."""
  kafka_broker_module.fetch(quiet=True)
  brokers = []

  def start(**kwargs):
    data_dir = tmp_path_factory.mktemp("kafka-extra")
    broker = kafka_broker_module.KafkaBroker(data_dir, **kwargs)
    brokers.append((broker, data_dir))
    return broker.start()

  try:
    yield start
  finally:
    for broker, data_dir in reversed(brokers):
      broker.stop()
      shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def kafka_topic_prefix(request):
  """e.g. ``t3-test_kafka_broker-test_produce_consume_in_order-``.

  Legal in topic names (``[a-zA-Z0-9._-]``, at most 249 characters) and
  unique per test within a session.
  """
  name = re.sub(r"[^a-zA-Z0-9._-]+", "_", request.node.name)
  module = re.sub(r"[^a-zA-Z0-9._-]+", "_", request.node.path.stem)
  return f"t{next(_counter)}-{module}-{name}"[:180] + "-"


# The SCRAM users of ``kafka_secure_broker``: {name: password}.
SECURE_USERS = {"alice": "alice-secret-5c1e", "bob": "bob-secret-93d0"}


@pytest.fixture(scope="module")
def kafka_secure_broker(tmp_path_factory):
  """A SASL_SSL (SCRAM) broker for the tests of one module."""
  yield from _running_broker(tmp_path_factory, "kafka-secure",
                             security="sasl_ssl", users=SECURE_USERS)
