"""The sidecar against the stand-in model server, over the file transport."""

import os
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest

from tfrs_monolith.serving import model_server
import online_model
import saved_model_checks
import sidecar_helpers as helpers
from tfrs_monolith import export
from tfrs_monolith import hashing
from tfrs_monolith import patch as patch_lib
from tfrs_monolith import streams
from tfrs_monolith.serving import client as client_lib
from tfrs_monolith.serving import sidecar as sidecar_lib
from tfrs_monolith.serving import warmup

MODEL = helpers.MODEL


def _produce(transport, values, topic="examples"):
  with transport.producer() as producer:
    for value in values:
      producer.send(topic, value)


def _dead_letters(transport, topic="dead-letters"):
  with transport.consumer([topic], "audit") as consumer:
    return [streams.DeadLetterQueue.decode(r.value)
            for r in consumer.poll(10_000, 0.5)]


@pytest.fixture
def served(tmp_path):
  """A trainer on the file transport whose version 1 (untrained) is served
  by the stand-in, limited to 64 KB requests; yields (transport, trainer,
  server, client)."""
  transport = streams.FileTransport(str(tmp_path / "topics"))
  transport.create_topics(["examples"])
  # The server starts first: its start-up overlaps the export.
  server = model_server.ModelServer(
      str(tmp_path / "base"), MODEL, poll_seconds=0.2,
      channel_arguments={"grpc.max_receive_message_length": 65536},
      apply_log=str(tmp_path / "applied.jsonl"))
  with server, helpers.make_trainer(transport, tmp_path) as trainer:
    first = trainer.export()
    server.wait_ready(version=int(os.path.basename(first)))
    with client_lib.ServingClient(server.address, MODEL,
                                  timeout=20.0) as client:
      yield transport, trainer, server, client


def test_exported_versions_load_warm_and_use_core_ops_only(served, tmp_path):
  _, trainer, server, client = served
  [first] = helpers.version_dirs(tmp_path / "base")
  path = export.export_saved_model(
      trainer.model, str(tmp_path / "base" / str(first + 1)),
      assets_extra={warmup.WARMUP_FILE: warmup.warmup_requests(
          MODEL, {"user_id": ["1", "2"], "item_id": ["3", "4"]},
          tables=["user", "item"], repeat=2)})
  server.wait_ready(version=first + 1)
  assert "replayed 8 warm-up records" in server.log_tail(200)
  # The warm-up patches are empty: nothing changed.
  assert not client.rows("user", hashing.to_keys(["1"]).numpy())[1].any()
  assert client.watermark("user") == 0
  saved_model_checks.assert_servable(
      path, ("serving_default", "apply_patch", "embedding_rows",
             "patch_watermark"))
  with pytest.raises(ValueError, match="assets_extra"):
    export.export_saved_model(trainer.model, str(tmp_path / "x"),
                              assets_extra={"watermark.json": b"{}"})


def test_patches_reach_the_served_model(served, tmp_path):
  transport, trainer, server, client = served
  _produce(transport, online_model.examples(1500, seed=3))
  trainer.run(idle_timeout=0.5)
  target = helpers.sequences(trainer)
  user = hashing.to_keys(["7"]).numpy()
  pair = {"user_id": np.array([b"7"], object),
          "item_id": np.array([b"3"], object)}
  before = client.predict(pair)["outputs"]
  assert not client.rows("user", user)[1][0]      # Untrained version 1.

  # ~2 KB requests: 26 rows of dim 8 each, so patches take several.
  with sidecar_lib.Sidecar(client, transport, str(tmp_path / "state"),
                           max_request_bytes=2100,
                           metrics_port=0) as sidecar:
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target,
                      what=f"sequences {target}")
    stats = sidecar.stats
    assert stats.patches_applied == sum(target.values())
    assert stats.requests > stats.patches_applied       # Chunked.
    assert helpers.assert_served_equal(client, trainer.model) > 100
    assert client.predict(pair)["outputs"] != before

    host, port = sidecar.metrics_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics") as reply:
      text = reply.read().decode()
    assert (f'tfrs_monolith_sidecar_patches_applied_total{{model="{MODEL}"}} '
            f"{stats.patches_applied}") in text
    assert f'tfrs_monolith_sidecar_served_version{{model="{MODEL}"}}' in text
    assert 'applied_sequence{model="ranker",table="user"}' in text
    with urllib.request.urlopen(f"http://{host}:{port}/healthz") as reply:
      assert reply.status == 200
    metrics = sidecar.metrics()
    assert metrics["lag_sequences"] == 0 and metrics["up"] == 1
  # Every request landed once: no patch was applied twice.
  hashes = [line["sha256"] for line in server.applied()]
  assert len(hashes) == len(set(hashes)) == stats.requests


def test_new_version_never_rolls_rows_back(served, tmp_path):
  """Version 2 is exported at patch k but loaded after the sidecar applied
  k+1...: the sidecar replays them onto version 2."""
  transport, trainer, server, client = served
  values = online_model.examples(2400, seed=8)
  _produce(transport, values[:1200])
  trainer.run(idle_timeout=0.5)
  old = trainer.export()
  marks = helpers.sequences(trainer)
  aside = str(tmp_path / "aside")
  shutil.move(old, aside)              # Held back: loaded later.
  _produce(transport, values[1200:])
  trainer.run(idle_timeout=0.5)
  target = helpers.sequences(trainer)
  assert all(target[t] > marks[t] for t in target)

  with sidecar_lib.Sidecar(client, transport,
                           str(tmp_path / "state")) as sidecar:
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target)
    first = sidecar.served_version
    shutil.move(aside, old)            # Version 2 appears, with older rows.
    second = int(os.path.basename(old))
    server.wait_ready(version=second)
    helpers.run_until(
        sidecar, lambda: (sidecar.served_version == second and
                          sidecar.applied_sequences == target),
        what="the replay onto version 2")
    assert second > first and sidecar.stats.replays >= 2
    # Exactly the patches newer than version 2's watermark, once more.
    replayed = sum(target[t] - marks[t] for t in target)
    assert sidecar.stats.patches_applied == sum(target.values()) + replayed
    helpers.assert_served_equal(client, trainer.model, version=second)


def test_corrupt_patches_go_to_dead_letters(served, tmp_path):
  transport, trainer, server, client = served
  _produce(transport, online_model.examples(400, seed=5))
  trainer.run(idle_timeout=0.5)
  good = helpers.sequences(trainer)
  # A patch chunk with one flipped byte, then a patch of a table the model
  # has not got (the server rejects it), then more training.
  chunk = bytearray(patch_lib.EmbeddingPatch(
      keys=[1, 2], values=np.ones([2, 8], np.float32), model_name=MODEL,
      table_name="user", sequence=good["user"] + 1).to_chunks()[0])
  chunk[-3] ^= 0xFF
  stranger = patch_lib.EmbeddingPatch(
      keys=[5], values=np.ones([1, 8], np.float32), model_name=MODEL,
      table_name="genre", sequence=1)
  _produce(transport, [bytes(chunk)] + stranger.to_chunks(), "patches")
  trainer.model.user.patch_sequence.assign_add(1)   # Skip the corrupt one.
  _produce(transport, online_model.examples(400, seed=6), "examples")
  trainer.run(idle_timeout=0.5)
  target = helpers.sequences(trainer)

  with sidecar_lib.Sidecar(client, transport,
                           str(tmp_path / "state")) as sidecar:
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target)
    stats = sidecar.stats
    assert (stats.patches_corrupt, stats.patches_failed) == (1, 1)
    # A version from before every patch: the replay reads the bad patches
    # again, but they are dead-lettered (and counted) once.
    newer = max(helpers.version_dirs(tmp_path / "base")) + 1
    export.export_saved_model(trainer.model,
                              str(tmp_path / "base" / str(newer)),
                              watermark={"user": 0, "item": 0})
    server.wait_ready(version=newer)
    helpers.run_until(sidecar, lambda: (sidecar.served_version == newer and
                                        sidecar.applied_sequences == target))
    helpers.assert_served_equal(client, trainer.model)
  assert (stats.patches_corrupt, stats.patches_failed) == (1, 1)
  assert stats.sequence_gaps == 1 and stats.dead_letters == 2
  letters = _dead_letters(transport)
  reasons = sorted(l["reason"].split(":")[0] for l in letters)
  assert reasons == ["corrupt_patch", "rejected_patch"]
  corrupt = [l for l in letters if l["reason"].startswith("corrupt")][0]
  assert corrupt["value"] == bytes(chunk) and "checksum" in corrupt["reason"]
  assert "genre" in [l for l in letters
                     if l["reason"].startswith("rejected")][0]["reason"]


def test_requests_shrink_to_the_server_limit(served, tmp_path):
  transport, trainer, _, client = served
  _produce(transport, online_model.examples(3000, seed=9))
  trainer.run(idle_timeout=0.5)
  target = helpers.sequences(trainer)
  big = trainer.model.item.export_patch(MODEL)      # Nothing new: empty.
  assert len(big) == 0
  # The server takes 64 KB; the sidecar starts at 1 MB and learns.
  with sidecar_lib.Sidecar(client, transport, str(tmp_path / "state"),
                           max_request_bytes=1_000_000) as sidecar:
    user_keys = np.arange(10, 2010, dtype=np.int64)
    full = patch_lib.EmbeddingPatch(
        keys=user_keys, values=np.full([2000, 8], 0.25, np.float32),
        model_name=MODEL, table_name="user", sequence=target["user"] + 1)
    _produce(transport, full.to_chunks(), "patches")
    target["user"] += 1
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target)
    assert sidecar.max_request_bytes <= 65536
    values, present = client.rows("user", user_keys)
    assert present.all() and (values == 0.25).all()

    # A snapshot of 1,500 keys, in 20 KB requests: the served table ends
    # with exactly its keys.
    sidecar.max_request_bytes = 20_000
    snapshot = patch_lib.EmbeddingPatch(
        keys=user_keys[500:], values=np.full([1500, 8], 0.5, np.float32),
        model_name=MODEL, table_name="user", sequence=target["user"] + 1,
        full=True)
    _produce(transport, snapshot.to_chunks(), "patches")
    target["user"] += 1
    requests = sidecar.stats.requests
    helpers.run_until(sidecar, lambda: sidecar.applied_sequences == target)
    assert sidecar.stats.requests - requests > 2
  np.testing.assert_array_equal(np.sort(client.table_keys("user")),
                                user_keys[500:])
  values, present = client.rows("user", user_keys)
  assert (present == (user_keys >= user_keys[500])).all()
  assert (values[500:] == 0.5).all()


def test_sidecar_reports_an_unreachable_server(tmp_path):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  with client_lib.ServingClient(f"127.0.0.1:{model_server.free_port()}",
                                MODEL, timeout=0.5, retries=1) as client:
    with pytest.raises(client_lib.ServingUnavailable):
      client.status()
    with sidecar_lib.Sidecar(client, transport, str(tmp_path / "state"),
                             metrics_port=0) as sidecar:
      for _ in range(3):
        sidecar.step()
      assert not sidecar.healthy and sidecar.stats.serving_errors >= 1
      host, port = sidecar.metrics_address
      with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"http://{host}:{port}/healthz")
      assert error.value.code == 503


@pytest.mark.parametrize("kwargs, message", [
    ({"max_request_bytes": 100}, "max_request_bytes"),
    ({"status_interval": 0}, "status_interval"),
    ({"poll_timeout": -1.0}, "poll_timeout"),
])
def test_bad_settings_name_the_argument(tmp_path, kwargs, message):
  transport = streams.FileTransport(str(tmp_path / "topics"))
  client = client_lib.ServingClient("127.0.0.1:1", MODEL)
  with pytest.raises(ValueError, match=message):
    sidecar_lib.Sidecar(client, transport, str(tmp_path / "state"), **kwargs)
  with pytest.raises(ValueError, match="target"):
    client_lib.ServingClient("nohostport", MODEL)


def test_patch_index_survives_a_torn_line_and_is_compacted(tmp_path):
  state = tmp_path / "state"
  state.mkdir()
  lines = ['["user", %d, 0, %d]\n' % (k % 5 + 1, k % 5) for k in range(3000)]
  (state / "index.jsonl").write_text("".join(lines) + '["user", 6, 0')
  transport = streams.FileTransport(str(tmp_path / "topics"))
  client = client_lib.ServingClient("127.0.0.1:1", MODEL)
  with sidecar_lib.Sidecar(client, transport, str(state)):
    pass
  entries = [line for line in (state / "index.jsonl").read_text().splitlines()]
  assert sorted(entries) == [f'["user", {s}, 0, {s - 1}]' for s in range(1, 6)]
