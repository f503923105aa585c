"""`ServingClient`'s sequential methods against the local server and a real export.

A tiny SINE run exported as `tests/test_export_sequential.py` builds it (a KuaiRec-layout
log -> the Beam job -> one short epoch with `train.export: true`), served by the local
server in a thread. The references are that module's: the reloaded `model.keras` for
`score`, a numpy ranking of the whole catalogue for `retrieve`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.test_export_sequential import (
    OOV_ID,
    K,
    Run,
    cases,
    check_retrieved,
    keras_score,
    train_run,
)
from tfnegseq.schema import fingerprint64
from tfnegseq.serving.client import ServingClient, ServingError

pytestmark = pytest.mark.serving
NAME = "sine"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    """The tiny log -> sequential samples -> one SINE epoch -> export."""
    from tests.helpers_data import write_log
    from tests.helpers_export import read_examples
    from tests.test_export_sequential import make_cfg
    from tfnegseq.data import job
    from tfnegseq.kinds.sequential.export import example_history, parse_samples

    root = tmp_path_factory.mktemp("client_sequential")
    write_log(root / "log", np.random.default_rng(3), users=16, per_user=40)
    cfg = make_cfg(root, "sine")
    job.run(cfg)
    parsed = parse_samples(read_examples(cfg.output.dir, "sequences"), cfg)
    histories = [example_history(s, cfg.model.negative_rule) for s in parsed]
    return train_run((root, histories), "sine")


@pytest.fixture(scope="module")
def client(run: Run):
    from tfnegseq.serving.server import serve_in_thread

    base = os.path.dirname(run.version_dir)
    with serve_in_thread(base, NAME, file_system_poll_wait_seconds=0) as server:
        with ServingClient(server.url, NAME, timeout=60) as c:
            yield c


def test_retrieve_one_user_equals_the_reference(run: Run, client: ServingClient) -> None:
    histories = [*cases(run)["one"], *cases(run)["mixed"]]  # long, short, empty, unknown id
    got = [client.retrieve(*history) for history in histories]
    for (ids, scores), (pos, _) in zip(got, histories, strict=True):
        assert len(ids) == len(scores) == K
        assert all(type(i) is int for i in ids) and all(type(s) is float for s in scores)
        assert not set(ids) & set(pos)
    check_retrieved(run, histories, [g[0] for g in got], [g[1] for g in got])


def test_retrieve_batch_is_columnar_and_equals_one_by_one(run: Run, client: ServingClient) -> None:
    histories = cases(run)["mixed"]
    pos = [p for p, _ in histories]
    neg = [n for _, n in histories]
    got = client.retrieve_batch(pos, neg)
    assert len(got) == len(histories)
    for (ids, scores), history in zip(got, histories, strict=True):
        one_ids, one_scores = client.retrieve(*history)  # other padding: float noise
        np.testing.assert_allclose(scores, one_scores, rtol=1e-5, atol=1e-6)
        assert ids == one_ids or not np.all(np.abs(np.diff(scores)) > 1e-4)
    check_retrieved(run, histories, [g[0] for g in got], [g[1] for g in got])
    # without negatives: the same as sending -1 for each
    no_neg = client.retrieve_batch(pos)
    assert no_neg == client.retrieve_batch(pos, [[-1] * len(p) for p in pos])


def test_retrieve_drops_unfilled_slots(run: Run, client: ServingClient) -> None:
    catalogue = [int(i) for i in run.vocab.ids]
    assert client.retrieve(catalogue) == ([], [])
    ids, scores = client.retrieve(catalogue[2:])  # two items left: two slots filled
    assert sorted(ids) == sorted(catalogue[:2]) and len(scores) == 2


def test_score_sequence_one_and_batch_equal_keras(run: Run, client: ServingClient) -> None:
    histories = cases(run)["mixed"]
    catalogue = [int(i) for i in run.vocab.ids]
    candidates = [catalogue[b : b + 2 + b] for b in range(len(histories))]  # ragged: 2..5
    candidates[-1] = [*candidates[-1][:-1], OOV_ID]
    batch = client.score_sequence_batch(
        [p for p, _ in histories], candidates, [n for _, n in histories]
    )
    assert [len(s) for s in batch] == [len(c) for c in candidates]
    for history, cands, scores in zip(histories, candidates, batch, strict=True):
        one = client.score_sequence(history[0], cands, history[1])
        np.testing.assert_allclose(one, scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            one, keras_score(run, [history], [cands])[0], rtol=1e-5, atol=1e-5
        )


def test_text_ids_are_sent_as_raw_ids(monkeypatch) -> None:
    sent: list = []
    client = ServingClient("http://127.0.0.1:1", "m")

    def predict(instances=None, inputs=None, signature_name=None):
        sent.append((signature_name, instances, inputs))
        if inputs is not None:
            rows = len(inputs["pos_item_id"])
            return {"item_id": [[5, -1]] * rows, "score": [[0.5, -3.4e38]] * rows}
        return [{"item_id": [5, -1], "score": [0.5, -3.4e38]}]

    monkeypatch.setattr(client, "predict", predict)
    assert client.retrieve(["i1", "42"], [None, "i0"]) == ([5], [0.5])
    assert client.retrieve([]) == ([5], [0.5])
    assert client.retrieve_batch([["i1"], []]) == [([5], [0.5])] * 2
    assert sent == [
        ("retrieve", [{"pos_item_id": [fingerprint64("i1"), 42],
                       "neg_item_id": [-1, fingerprint64("i0")]}], None),
        ("retrieve", [{"pos_item_id": [-1], "neg_item_id": [-1]}], None),  # empty history
        ("retrieve", None, {"pos_item_id": [[fingerprint64("i1")], [-1]],
                            "neg_item_id": [[-1], [-1]]}),
    ]  # fmt: skip


def test_errors(run: Run, client: ServingClient) -> None:
    with pytest.raises(ValueError, match="one entry per positive"):
        client.retrieve([1, 2], [3])
    with pytest.raises(ValueError, match="one entry .a list or None. per user"):
        client.retrieve_batch([[1]], [[1], [2]])
    with pytest.raises(ValueError, match="one list per user"):
        client.score_sequence_batch([[1], [2]], [[3]])
    item = int(run.vocab.ids[0])
    with pytest.raises(ServingError, match="pos_item_id is not left-padded") as info:
        client.retrieve([item, -1])
    assert info.value.status == 400
    with pytest.raises(ServingError, match="empty candidate list") as info:
        client.score_sequence([item], [])
    assert info.value.status == 400
    with pytest.raises(ServingError, match="empty candidate list"):
        client.score_sequence_batch([[item], []], [[], []])
    with pytest.raises(ServingError) as info:
        client.retrieve([item], signature_name="serving_default")
    assert info.value.status == 400
