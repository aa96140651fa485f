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
"""Kafka security: client `.properties` files and a SASL_SSL broker.

The broker (fixture `kafka_secure_broker`) has one client listener, which
takes SCRAM logins over TLS only. Clients are configured the way commands
are: through `TFRS_MONOLITH_KAFKA_CONFIG` (and `TFRS_MONOLITH_KAFKA_PASSWORD`).
"""

import json
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import pytest

from kafka_fixtures import KafkaBroker
from kafka_fixtures import SECURE_USERS
from tfrs_monolith import streams
from tfrs_monolith.beam import topics as beam_topics

CONFIG_ENV = "TFRS_MONOLITH_KAFKA_CONFIG"
PASSWORD_ENV = "TFRS_MONOLITH_KAFKA_PASSWORD"
ALICE = SECURE_USERS["alice"]
# Refused clients give up after this long (the default is 30 s).
BOOTSTRAP_TIMEOUT_MS = 3000

SCRAM_JAAS = ("org.apache.kafka.common.security.scram.ScramLoginModule "
              'required username="alice" password="{password}";')


@pytest.fixture(autouse=True)
def _no_security_from_the_caller(monkeypatch):
  """Tests start without the security variables of whoever runs them."""
  monkeypatch.delenv(CONFIG_ENV, raising=False)
  monkeypatch.delenv(PASSWORD_ENV, raising=False)


def _url(broker):
  return f"kafka://{broker.bootstrap_servers}"


def _use(monkeypatch, path):
  monkeypatch.setenv(CONFIG_ENV, str(path))


# ----------------------------------------------------- kafka_client_config


def _write(tmp_path, text, name="client.properties"):
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture
def ca_file(tmp_path):
  return _write(tmp_path, "-----BEGIN CERTIFICATE-----\n", "ca.pem")


class TestKafkaClientConfig:

  def test_maps_a_java_client_file(self, tmp_path, ca_file):
    path = _write(tmp_path, f"""\
# Java client settings
! another comment
security.protocol = sasl_ssl
sasl.mechanism: SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \\
    required username="alice" \\
    password="p=w;\\\\"x\\\\"";
ssl.truststore.type=PEM
ssl.truststore.location={ca_file.name}
ssl.endpoint.identification.algorithm=
client.id=trainer-1
""")
    assert streams.kafka_client_config(path) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": 'p=w;"x"',
        "ssl_cafile": str(ca_file),   # relative to the file's folder
        "ssl_check_hostname": False,
        "client_id": "trainer-1",
    }

  def test_maps_librdkafka_names_and_text(self, ca_file):
    text = ("security.protocol=SASL_PLAINTEXT\nsasl.mechanisms=PLAIN\n"
            "sasl.username=bob\nsasl.password=bob-pw\n")
    assert streams.kafka_client_config(text) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "bob", "sasl_plain_password": "bob-pw"}
    text = (f"security.protocol=SSL\nssl.ca.location={ca_file}\n"
            f"ssl.endpoint.identification.algorithm=https\n")
    assert streams.kafka_client_config(text) == {
        "security_protocol": "SSL", "ssl_cafile": str(ca_file),
        "ssl_check_hostname": True}

  def test_password_from_the_environment_wins(self, tmp_path, monkeypatch):
    path = _write(tmp_path, "security.protocol=SASL_PLAINTEXT\n"
                  "sasl.mechanism=SCRAM-SHA-256\n"
                  f"sasl.jaas.config={SCRAM_JAAS.format(password='old')}\n")
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    config = streams.kafka_client_config(path)
    assert config["sasl_plain_password"] == "from-env"
    # The file need not hold a password at all.
    path = _write(tmp_path, "security.protocol=SASL_PLAINTEXT\n"
                  "sasl.mechanism=SCRAM-SHA-256\nsasl.username=alice\n")
    assert streams.kafka_client_config(path)["sasl_plain_password"] == (
        "from-env")
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ValueError, match=PASSWORD_ENV):
      streams.kafka_client_config(path)

  @pytest.mark.parametrize("text,pattern", [
      ("bootstrap.servers=h:9092\n",
       r"`bootstrap.servers` is not a Kafka client setting.*kafka:// URL"
       r".*Received: bootstrap.servers='h:9092' \(line 1"),
      ("security.protocol=TLS\n",
       r"`security.protocol` must be one of PLAINTEXT, SSL, SASL_PLAINTEXT,"
       r" SASL_SSL. Received: security.protocol='TLS'"),
      ("security.protocol=SASL_SSL\nsasl.mechanism=GSSAPI\n",
       r"`sasl.mechanism` must be one of .*Received: "
       r"sasl.mechanism='GSSAPI' \(line 2"),
      ("security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n",
       r"needs a user name .* and a password"),
      ("sasl.mechanism=PLAIN\nsasl.username=a\nsasl.password=b\n",
       r"`sasl.mechanism` is a SASL setting, but "
       r"security.protocol='PLAINTEXT'"),
      ("security.protocol=SASL_PLAINTEXT\nssl.ca.location=/x.pem\n",
       r"`ssl.ca.location` is a TLS setting"),
      ("security.protocol=SSL\nssl.ca.location=/no/such/ca.pem\n",
       r"`ssl.ca.location` must name an existing file. Received: "
       r"ssl.ca.location='/no/such/ca.pem'"),
      ("security.protocol=SSL\nssl.truststore.location=/x.jks\n",
       r"`ssl.truststore.type` must be PEM.*Received: "
       r"ssl.truststore.type='JKS'"),
      ("security.protocol=SSL\nssl.endpoint.identification.algorithm=x\n",
       r"must be https .*Received: "
       r"ssl.endpoint.identification.algorithm='x'"),
  ])
  def test_bad_settings_are_named(self, text, pattern):
    with pytest.raises(ValueError, match=pattern):
      streams.kafka_client_config(text)

  @pytest.mark.parametrize("text", [
      "ssl.keystore.password=hunter2-secret\n",
      "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
      "sasl.jaas.config=ScramLoginModule password=hunter2-secret\n",
      "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
      "sasl.jaas.config=com.example.Login required username=\"a\" "
      "password=\"hunter2-secret\";\n",
      "security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
      f"sasl.jaas.config={SCRAM_JAAS.format(password='hunter2-secret')}\n",
      "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
      "sasl.username=alice\nsasl.password=hunter2-secret\n"
      "ssl.ca.location=/no/such/ca.pem\n",
  ])
  def test_errors_never_show_a_password(self, text):
    with pytest.raises(ValueError) as error:
      streams.kafka_client_config(text)
    assert "hunter2" not in str(error.value)

  def test_open_transport_reads_the_file_named_by_the_environment(
      self, tmp_path, monkeypatch):
    _use(monkeypatch, _write(tmp_path, "security.protocol=SASL_SSL\n"))
    with pytest.raises(ValueError, match=rf"\${CONFIG_ENV}: .*needs "
                       r"sasl.mechanism"):
      streams.open_transport("kafka://127.0.0.1:9")
    _use(monkeypatch, tmp_path / "missing.properties")
    with pytest.raises(ValueError, match=r"cannot read .*missing"):
      streams.open_transport("kafka://127.0.0.1:9")
    # File logs have no security settings: the variable does not apply.
    assert isinstance(streams.open_transport(f"file://{tmp_path}/log"),
                      streams.FileTransport)

  def test_java_clients_get_the_same_login(self, tmp_path, ca_file,
                                           monkeypatch):
    text = ("security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-256\n"
            "sasl.username=alice\nclient.id=joiner\n"
            f"ssl.ca.location={ca_file}\n"
            "ssl.endpoint.identification.algorithm=none\n")
    _use(monkeypatch, _write(tmp_path, text))
    monkeypatch.setenv(PASSWORD_ENV, 'pa"ss')
    java = streams.kafka_java_config()
    python = streams.kafka_client_config(text)
    assert java == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "client.id": "joiner",
        "sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule "
            'required username="alice" password="pa\\"ss";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(ca_file),
        "ssl.endpoint.identification.algorithm": "",
    }
    monkeypatch.delenv(PASSWORD_ENV)
    # Read back (escaped as in a .properties file): the same settings.
    java_text = "".join(f"{k}={v}\n".replace("\\", "\\\\")
                        for k, v in java.items())
    assert streams.kafka_client_config(java_text) == python
    monkeypatch.delenv(CONFIG_ENV)
    assert not streams.kafka_java_config()

  def test_reads_the_files_the_broker_script_writes(self, tmp_path):
    broker = KafkaBroker(tmp_path / "kafka", security="sasl_plaintext")
    password = 'p"w\\x y='
    path = broker.client_properties(tmp_path / "c.properties", "alice",
                                    password)
    assert os.stat(path).st_mode & 0o077 == 0
    assert streams.kafka_client_config(path) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice", "sasl_plain_password": password}

  def test_unknown_client_settings_are_rejected(self):
    with pytest.raises(ValueError, match=r"unknown settings \['sasl_user'\]"):
      streams.KafkaTransport("127.0.0.1:9", sasl_user="alice")


# ------------------------------------------------------- a secured broker


def test_the_broker_has_no_unauthenticated_client_listener(
    kafka_secure_broker):
  props = kafka_secure_broker.properties()
  assert props["listeners"] == (
      f"SASL_SSL://127.0.0.1:{kafka_secure_broker.port},"
      f"CONTROLLER://127.0.0.1:{kafka_secure_broker.controller_port}")
  assert props["listener.security.protocol.map"] == (
      "CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL")
  assert props["inter.broker.listener.name"] == "SASL_SSL"
  assert os.stat(kafka_secure_broker.properties_file).st_mode & 0o077 == 0


def test_every_client_kind_logs_in_through_the_environment(
    kafka_secure_broker, kafka_topic_prefix, tmp_path, monkeypatch):
  _use(monkeypatch, kafka_secure_broker.client_properties(
      tmp_path / "alice.properties", "alice", ALICE))
  transport = streams.open_transport(_url(kafka_secure_broker))
  topic = f"{kafka_topic_prefix}events"
  transport.create_topics([topic], partitions=2)            # admin client
  with transport.producer() as producer:                     # producer
    for i in range(20):
      producer.send(topic, f"v{i}".encode(), key=f"k{i % 4}".encode())
    producer.flush()
  ends = transport.end_offsets([topic])                      # its consumer
  assert set(ends) == {(topic, 0), (topic, 1)}
  assert sum(ends.values()) == 20
  with transport.consumer([topic], f"{topic}-group") as consumer:  # consumer
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 20 and time.monotonic() < deadline:
      got += consumer.poll(100, 0.5)
    consumer.commit(consumer.position())
    assert consumer.committed() == ends
  assert sorted(r.value for r in got) == sorted(
      f"v{i}".encode() for i in range(20))


def test_scram_sha_256_and_a_password_from_the_environment(
    kafka_secure_broker, kafka_topic_prefix, tmp_path, monkeypatch):
  path = kafka_secure_broker.client_properties(tmp_path / "bob.properties",
                                               "bob")
  text = path.read_text().replace("SCRAM-SHA-512", "SCRAM-SHA-256")
  assert "secret" not in text
  _use(monkeypatch, _write(tmp_path, text, "bob-256.properties"))
  monkeypatch.setenv(PASSWORD_ENV, SECURE_USERS["bob"])
  topic = f"{kafka_topic_prefix}t"
  streams.open_transport(_url(kafka_secure_broker)).create_topics([topic])


def test_users_added_to_a_running_broker_can_log_in(
    kafka_secure_broker, kafka_topic_prefix, tmp_path, monkeypatch):
  kafka_secure_broker.add_user("carol", "carol-secret-11")
  _use(monkeypatch, kafka_secure_broker.client_properties(
      tmp_path / "carol.properties", "carol", "carol-secret-11"))
  streams.open_transport(_url(kafka_secure_broker)).create_topics(
      [f"{kafka_topic_prefix}t"])


def _refused(case, broker, tmp_path, monkeypatch):
  """Sets up `case`; returns a call that must be refused."""
  config = {"bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS}
  alice = broker.client_properties(tmp_path / "alice.properties", "alice",
                                   ALICE)
  if case == "tls_without_sasl":
    _use(monkeypatch, _write(tmp_path, "security.protocol=SSL\n"
                             f"ssl.ca.location={broker.ca_file}\n"))
  elif case == "untrusted_certificate":
    _use(monkeypatch, _write(tmp_path, "".join(
        line + "\n" for line in alice.read_text().splitlines()
        if not line.startswith("ssl."))))
  elif case == "wrong_password_in_environment":
    _use(monkeypatch, alice)
    monkeypatch.setenv(PASSWORD_ENV, "hunter2-wrong")
  elif case == "wrong_password_given":
    _use(monkeypatch, alice)
    config["sasl_plain_password"] = "hunter2-wrong"   # wins over the file
  transport = streams.open_transport(_url(broker), **config)
  return {
      "plaintext": lambda: transport.create_topics(["t"]),
      "tls_without_sasl": transport.producer,
      "untrusted_certificate": lambda: transport.end_offsets(["t"]),
      "wrong_password_in_environment": lambda: transport.end_offsets(["t"]),
      "wrong_password_given": lambda: transport.consumer(["t"], "g"),
  }[case]


@pytest.mark.parametrize("case,protocol,hint", [
    ("plaintext", "PLAINTEXT", CONFIG_ENV),
    ("tls_without_sasl", "SSL", CONFIG_ENV),
    ("untrusted_certificate", "SASL_SSL", "not trusted"),
    ("wrong_password_in_environment", "SASL_SSL", "password"),
    ("wrong_password_given", "SASL_SSL", "password"),
])
def test_clients_without_a_valid_login_are_refused_in_bounded_time(
    kafka_secure_broker, tmp_path, monkeypatch, case, protocol, hint):
  call = _refused(case, kafka_secure_broker, tmp_path, monkeypatch)
  started = time.monotonic()
  with pytest.raises(streams.BrokerConnectionError) as error:
    call()
  assert time.monotonic() - started < 20
  message = str(error.value)
  assert (f"could not connect to Kafka at "
          f"{kafka_secure_broker.bootstrap_servers} with "
          f"security_protocol={protocol}") in message
  assert hint in message
  if protocol.startswith("SASL"):
    assert "sasl_mechanism=SCRAM-SHA-512, user 'alice'" in message
  assert "hunter2" not in message and ALICE not in message


def test_the_controller_port_refuses_unauthenticated_clients(
    kafka_secure_broker):
  transport = streams.open_transport(
      f"kafka://127.0.0.1:{kafka_secure_broker.controller_port}",
      bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS)
  with pytest.raises(streams.BrokerConnectionError):
    transport.create_topics(["t"])


# -------------------------------------------------------------------- Beam


def test_beam_transforms_log_in_through_the_environment(
    kafka_secure_broker, kafka_topic_prefix, tmp_path, monkeypatch):
  _use(monkeypatch, kafka_secure_broker.client_properties(
      tmp_path / "alice.properties", "alice"))
  monkeypatch.setenv(PASSWORD_ENV, ALICE)
  url, topic = _url(kafka_secure_broker), f"{kafka_topic_prefix}beam"
  values = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(12)]
  options = PipelineOptions([], runner="BundleBasedDirectRunner")
  with beam.Pipeline(options=options) as p:
    _ = p | beam.Create(values) | beam_topics.WriteToTopic(url, topic)
  sink = tmp_path / "read"
  with beam.Pipeline(options=options) as p:
    _ = (p | beam_topics.ReadFromTopic(url, topic, timeout=30)
         | beam.Map(lambda kv: json.dumps([kv[0].decode(), kv[1].decode()]))
         | beam.io.WriteToText(str(sink), shard_name_template=""))
  read = [tuple(x.encode() for x in json.loads(line))
          for line in sink.read_text().splitlines()]
  assert sorted(read) == sorted(values)
