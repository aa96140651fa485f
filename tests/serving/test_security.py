"""Who may change the served model: signed patches, TLS to the server."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import online_model
import sidecar_helpers as helpers
from tfrs_monolith import cli
from tfrs_monolith import patch as patch_lib
from tfrs_monolith import streams
from tfrs_monolith.serving import client as client_lib
from tfrs_monolith.serving import model_server
from tfrs_monolith.serving import sidecar as sidecar_lib

MODEL = helpers.MODEL


def _keys(key_id="k1", secret=b"s" * 32):
  return patch_lib.PatchKeys({key_id: secret})


def _patch(sequence=1, value=1.0, table="user"):
  return patch_lib.EmbeddingPatch(
      keys=[1, 2], values=np.full([2, 8], value, np.float32),
      model_name=MODEL, table_name=table, sequence=sequence)


class TestPatchKeys:

  def test_signed_patch_round_trips_and_names_its_key(self):
    keys = _keys()
    patch = _patch()
    chunks = patch.to_chunks(300, keys=keys)
    assert len(chunks) > 1
    back = patch_lib.EmbeddingPatch.from_chunks(reversed(chunks), keys=keys)
    assert back == patch and back.key_id == "k1"
    # A reader without keys decodes it unverified.
    plain = patch_lib.EmbeddingPatch.from_chunks(chunks)
    assert plain == patch and plain.key_id is None

  @pytest.mark.parametrize("reader, data, kind", [
      (_keys(), lambda p: p.serialize(), "unsigned_patch"),
      (_keys(), lambda p: p.sign(_keys(secret=b"x" * 32)), "bad_signature"),
      (_keys(), lambda p: p.sign(_keys("k2")), "unknown_key"),
  ])
  def test_verification_failures_are_named(self, reader, data, kind):
    with pytest.raises(patch_lib.PatchSignatureError) as info:
      patch_lib.EmbeddingPatch.deserialize(data(_patch()), keys=reader)
    assert info.value.kind == kind
    assert isinstance(info.value, patch_lib.PatchError)

  def test_any_altered_byte_fails_the_signature_or_the_format(self):
    keys = _keys()
    signed = bytearray(_patch().sign(keys))
    for i in range(0, len(signed), 7):
      altered = bytearray(signed)
      altered[i] ^= 0x01
      with pytest.raises(patch_lib.PatchError):
        patch_lib.EmbeddingPatch.deserialize(bytes(altered), keys=keys)

  def test_a_signature_binds_the_table_and_sequence(self):
    keys = _keys()
    signed = _patch(sequence=3).sign(keys)
    # Moving the signature onto another patch's body fails.
    other = _patch(sequence=4).serialize()
    forged = signed[:len(signed) - len(other)] + other
    with pytest.raises(patch_lib.PatchSignatureError, match="HMAC"):
      patch_lib.EmbeddingPatch.deserialize(forged, keys=keys)

  def test_keys_load_from_a_file_or_the_environment(self, tmp_path,
                                                     monkeypatch):
    path = tmp_path / "keys.json"
    path.write_text(patch_lib.PatchKeys.generate("2026-11"))
    from_file = patch_lib.PatchKeys.load(str(path))
    assert from_file.key_ids == ["2026-11"] and from_file.sign_with == "2026-11"
    monkeypatch.delenv(patch_lib.PATCH_KEYS_ENV, raising=False)
    assert patch_lib.PatchKeys.load() is None
    secret = "ab" * 32
    monkeypatch.setenv(patch_lib.PATCH_KEYS_ENV, json.dumps(
        {"keys": {"old": "cd" * 32, "new": secret}, "sign_with": "new"}))
    from_env = patch_lib.PatchKeys.load()
    assert from_env.key_ids == ["new", "old"] and from_env.sign_with == "new"
    assert secret not in repr(from_env)
    # Rotation: a reader holding both keys accepts either.
    old_only = patch_lib.PatchKeys({"old": bytes.fromhex("cd" * 32)})
    patch_lib.EmbeddingPatch.deserialize(_patch().sign(old_only),
                                         keys=from_env)

  @pytest.mark.parametrize("text, message", [
      ("not json", "JSON"),
      ('{"keys": {"k": "zz' + "0" * 40 + '"}}', "non-hexadecimal"),
      ('{"keys": {"k": "00"}}', "at least 16 bytes"),
      ('{"keys": {}}', "non-empty"),
      ('{"keys": {"k": "' + "0" * 40 + '"}, "sign_with": "j"}', "sign_with"),
  ])
  def test_bad_key_text_names_the_problem_not_the_secret(self, text, message):
    with pytest.raises(ValueError, match=message) as info:
      patch_lib.PatchKeys.from_json(text)
    assert "0" * 40 not in str(info.value)

  def test_verify_only_keys_cannot_sign(self):
    keys = patch_lib.PatchKeys({"a": b"a" * 16, "b": b"b" * 16})
    assert keys.sign_with is None
    with pytest.raises(ValueError, match="only verify"):
      _patch().sign(keys)

  def test_oversize_patches_are_refused_from_the_header(self):
    chunks = _patch().to_chunks(200)
    with pytest.raises(patch_lib.PatchError, match="over the limit of 100"):
      patch_lib.EmbeddingPatch.from_chunks(chunks[:1], max_bytes=100)

  def test_the_command_line_takes_keys_only_from_files(self, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tfrs_monolith.cli", "patch-key", "--id", "z"],
        check=True,
        capture_output=True, text=True).stdout
    assert patch_lib.PatchKeys.from_json(out).key_ids == ["z"]
    with pytest.raises(SystemExit, match="(?i)no such file"):
      cli.main(["sidecar", "--serving", "127.0.0.1:1", "--model", "m",
                "--patches", f"file://{tmp_path}", "--state-dir",
                str(tmp_path / "s"), "--patch-keys",
                str(tmp_path / "missing.json")])


@pytest.fixture
def signed(tmp_path):
  """A trainer that signs its patches, its version 1 served by the
  stand-in; yields (transport, trainer, client, keys)."""
  keys = _keys()
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  server = model_server.ModelServer(str(tmp_path / "base"), MODEL,
                                    poll_seconds=0.2)
  with server, helpers.make_trainer(transport, tmp_path,
                                    patch_keys=keys) as trainer:
    first = trainer.export()
    server.wait_ready(version=int(os.path.basename(first)))
    with client_lib.ServingClient(server.address, MODEL,
                                  timeout=20.0) as client:
      yield transport, trainer, client, keys


def _produce(transport, values, topic):
  with transport.producer() as producer:
    for value in values:
      producer.send(topic, value)


def test_sidecar_applies_only_signed_fresh_patches(signed, tmp_path):
  transport, trainer, client, keys = signed
  _produce(transport, online_model.examples(600, seed=11), "examples")
  trainer.run(idle_timeout=0.5)
  published = helpers.sequences(trainer)
  with transport.consumer(["patches"], "copy") as consumer:
    genuine = consumer.poll(10_000, 0.5)
  user_keys = np.array(sorted(online_model.live_rows(trainer.model.user)),
                       np.int64)[:4]

  def attack(sequence, sign_with):
    patch = patch_lib.EmbeddingPatch(
        keys=user_keys, values=np.full([len(user_keys), 8], 9.0, np.float32),
        model_name=MODEL, table_name="user", sequence=sequence)
    return patch.to_chunks(keys=sign_with)

  nxt = published["user"] + 1
  attacker = patch_lib.PatchKeys({"k1": b"not the trainer's key!"})
  stranger = patch_lib.PatchKeys({"k9": b"x" * 32})
  # The first user patch again, word for word (a valid signature).
  replay = [r.value for r in genuine if patch_lib.EmbeddingPatch.read_chunk(
      r.value)[0] == f"{MODEL}/user/1"]
  assert replay
  big = patch_lib.EmbeddingPatch(
      keys=np.arange(40_000), values=np.zeros([40_000, 8], np.float32),
      model_name=MODEL, table_name="user", sequence=10**6)
  oversize = big.to_chunks(keys=keys)
  assert len(oversize) == 2
  _produce(transport, attack(nxt, None) + attack(nxt, attacker) +
           attack(nxt, stranger) + replay + oversize, "patches")
  # The trainer goes on: its next patches take the sequences the forged
  # ones claimed.
  _produce(transport, online_model.examples(300, seed=12), "examples")
  trainer.run(idle_timeout=0.5)
  target = helpers.sequences(trainer)
  assert target["user"] >= nxt

  with sidecar_lib.Sidecar(client, transport, str(tmp_path / "state"),
                           patch_keys=keys, metrics_port=0,
                           max_patch_bytes=1_000_000) as sidecar:
    assert sidecar.metrics_address[0] == "127.0.0.1"
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target,
                      what=f"sequences {target}")
    stats = sidecar.stats
    helpers.assert_served_equal(client, trainer.model)
    metrics = sidecar.metrics()
  assert (stats.patches_unsigned, stats.patches_bad_signature,
          stats.patches_replayed, stats.patches_oversize) == (1, 2, 1, 1)
  assert stats.patches_applied == sum(target.values())
  assert stats.sequence_gaps == 0
  assert metrics["patches_bad_signature"] == 2
  with transport.consumer(["dead-letters"], "audit") as consumer:
    letters = [streams.DeadLetterQueue.decode(r.value)
               for r in consumer.poll(10_000, 0.5)]
  kinds = sorted({l["reason"].split(":")[0] for l in letters})
  assert kinds == ["bad_signature", "oversize_patch", "replayed_patch",
                   "unknown_key", "unsigned_patch"]
  replayed = [l for l in letters if l["reason"].startswith("replayed")]
  assert [l["value"] for l in replayed] == replay


def test_unsigned_trainer_with_a_verifying_sidecar_changes_nothing(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  server = model_server.ModelServer(str(tmp_path / "base"), MODEL,
                                    poll_seconds=0.2)
  with server, helpers.make_trainer(transport, tmp_path) as trainer:
    server.wait_ready(version=int(os.path.basename(trainer.export())))
    _produce(transport, online_model.examples(300, seed=2), "examples")
    trainer.run(idle_timeout=0.5)
    published = sum(helpers.sequences(trainer).values())
    with client_lib.ServingClient(server.address, MODEL) as client, \
        sidecar_lib.Sidecar(client, transport, str(tmp_path / "state"),
                            patch_keys=_keys()) as sidecar:
      helpers.run_until(
          sidecar, lambda: sidecar.stats.patches_unsigned == published)
      assert sidecar.stats.patches_applied == 0
      keys = np.array(sorted(online_model.live_rows(trainer.model.user)),
                      np.int64)
      assert not client.rows("user", keys)[1].any()


# ----------------------------------------------------------------- TLS


def _certificate(directory, name):
  key, cert = directory / f"{name}.key", directory / f"{name}.pem"
  subprocess.run(
      ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
       "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
       "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
      check=True, capture_output=True)
  return key, cert


def test_tls_to_the_model_server(tmp_path):
  server_key, server_cert = _certificate(tmp_path, "server")
  client_key, client_cert = _certificate(tmp_path, "client")
  config = tmp_path / "ssl.config"
  config.write_text(
      f"server_key: {json.dumps(server_key.read_text())}\n"
      f"server_cert: {json.dumps(server_cert.read_text())}\n"
      f"custom_ca: {json.dumps(client_cert.read_text())}\n"
      "client_verify: true\n")
  assert model_server.read_ssl_config(config.read_text())["client_verify"]
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  with helpers.make_trainer(transport, tmp_path) as trainer:
    version = int(os.path.basename(trainer.export()))
  with model_server.ModelServer(
      str(tmp_path / "base"), MODEL, ssl_config_file=str(config),
      ca_file=str(server_cert), client_cert_file=str(client_cert),
      client_key_file=str(client_key)) as server:
    server.wait_ready(version=version)
    credentials = client_lib.tls_credentials(
        str(server_cert), str(client_cert), str(client_key))
    with client_lib.ServingClient(server.address, MODEL,
                                  credentials=credentials) as client:
      assert client.served_version() == version
    # Plaintext, or TLS without the client certificate, is refused.
    with client_lib.ServingClient(server.address, MODEL, timeout=3,
                                  retries=0) as plain:
      with pytest.raises(client_lib.ServingUnavailable):
        plain.served_version()
    anonymous = client_lib.tls_credentials(str(server_cert))
    with client_lib.ServingClient(server.address, MODEL, timeout=3,
                                  retries=0,
                                  credentials=anonymous) as stranger:
      with pytest.raises(client_lib.ServingUnavailable):
        stranger.served_version()
  with pytest.raises(ValueError, match="go together"):
    client_lib.tls_credentials(str(server_cert), cert_file=str(client_cert))
  with pytest.raises(ValueError, match="cannot read `ca_file`"):
    client_lib.tls_credentials(str(tmp_path / "none.pem"))


def test_the_serving_signature_refuses_oversize_requests(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tfrs_monolith import export  # pylint: disable=g-import-not-at-top
  model = online_model.make_model()
  model({"user_id": tf.constant(["a"]), "item_id": tf.constant(["b"])})
  path = export.export_saved_model(model, str(tmp_path / "1"),
                                   max_ids_per_request=4, max_id_bytes=8)
  serve = tf.saved_model.load(path).signatures["serving_default"]

  def request(users, items):
    return serve(user_id=tf.constant(users), item_id=tf.constant(items))

  assert request(["a"] * 4, ["b"] * 4)["outputs"].shape == (4, 1)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"(?s)feature item_id holds.*5.*"
                     r"max_ids_per_request=4"):
    request(["a"] * 5, ["b"] * 5)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"(?s)feature user_id has a.*9.*max_id_bytes=8"):
    request(["a" * 9], ["b"])
  with pytest.raises(ValueError, match="max_id_bytes"):
    export.export_saved_model(model, str(tmp_path / "2"), max_id_bytes=0)
