"""The local model store (runnerlib.models): tags, save/get/list/delete, metadata, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import pickle

import numpy as np
import pytest
from store_fixtures import Scaler, save_in_loop

import runnerlib
from runnerlib import models, picklable_model
from runnerlib.models import ModelNotFound, ModelStore, Tag


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNERLIB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_tags():
    assert Tag.from_taglike("iris:latest") == Tag("iris")
    assert Tag.from_taglike("iris") == Tag("iris", None)
    assert str(Tag.from_taglike("Iris:V1")) == "iris:v1"
    for bad in ("", "-x", "a:", "a b", "x" * 64, "a:b:c"):
        with pytest.raises(ValueError):
            Tag.from_taglike(bad)


def test_save_get_list_delete_and_metadata(home):
    m1 = picklable_model.save_model(
        "scaler", Scaler(2.0), signatures={"predict": {"batchable": True, "batch_dim": 0}},
        metadata={"owner": "me", "score": 0.9}, labels={"stage": "dev"},
    )
    m2 = picklable_model.save_model("scaler", Scaler(3.0), signatures={"predict": {}})
    assert m1.path.parent == home / "models" / "scaler"
    meta = json.loads((m1.path / "model.json").read_text())
    assert meta["framework"] == "picklable_model" and meta["module"] == "runnerlib.picklable_model"
    assert meta["signatures"] == {"predict": {"batchable": True, "batch_dim": [0, 0]}}
    assert meta["metadata"] == {"owner": "me", "score": 0.9} and meta["labels"] == {"stage": "dev"}
    assert meta["python_version"] and meta["runnerlib_version"] and meta["creation_time"]
    assert m1.creation_time <= m2.creation_time

    assert models.get("scaler:latest") == m2 == models.get("scaler")
    assert models.get(f"scaler:{m1.tag.version}") == m1
    assert runnerlib.models.list_models() == [m1, m2]
    assert ModelStore(home).list("scaler") == [m1, m2]
    assert picklable_model.load_model("scaler:latest").factor == 3.0

    assert pickle.loads(pickle.dumps(m1)) == m1
    assert models.delete("scaler:latest") == m2
    assert models.get("scaler:latest") == m1
    models.delete(m1)
    assert models.list_models() == []
    assert not (home / "models" / "scaler").exists()


def test_missing_tag_lists_what_exists():
    picklable_model.save_model("alpha", Scaler(1.0))
    beta = picklable_model.save_model("beta", Scaler(1.0))
    with pytest.raises(ModelNotFound) as info:
        models.get("gamma:latest")
    msg = str(info.value)
    assert "gamma:latest" in msg and "alpha" in msg and beta.tag.version in msg
    assert isinstance(info.value, LookupError) and isinstance(info.value, runnerlib.RunnerError)
    with pytest.raises(ModelNotFound, match="beta"):
        models.get("beta:nosuchversion")


def test_empty_store_message(home):
    with pytest.raises(ModelNotFound, match="empty"):
        models.get("anything")


def test_bad_signatures_and_objects():
    with pytest.raises(ValueError, match="no method 'predict_proba'"):
        picklable_model.save_model("s", Scaler(1.0), signatures={"predict_proba": {}})
    with pytest.raises(ValueError, match="unknown option"):
        picklable_model.save_model("s", Scaler(1.0), signatures={"predict": {"batch": True}})
    import threading

    with pytest.raises(TypeError, match="cannot be pickled"):
        picklable_model.save_model("s", threading.Lock())
    with pytest.raises(TypeError, match="JSON"):
        picklable_model.save_model("s", Scaler(1.0), metadata={"x": object()})
    assert models.list_models() == []  # nothing half-written stays


def test_wrong_framework_is_a_clear_error():
    picklable_model.save_model("plain", Scaler(1.0))
    with pytest.raises(ValueError, match="saved by runnerlib.picklable_model"):
        runnerlib.sklearn.get("plain:latest")


def test_explicit_store_and_home_default(tmp_path, monkeypatch):
    store = ModelStore(tmp_path / "other")
    m = picklable_model.save_model("elsewhere", Scaler(5.0), store=store)
    assert store.get("elsewhere") == m and models.list_models() == []
    monkeypatch.delenv("RUNNERLIB_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert models.store_root() == tmp_path / "user" / ".runnerlib"


def test_concurrent_saves_of_one_name_from_two_processes(home):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(save_in_loop, [(str(home), 15, 1.0), (str(home), 15, 2.0)])
    saved = {t for r in results for t in r}
    assert len(saved) == 30
    listed = models.list_models("race")
    assert {str(m.tag) for m in listed} == saved
    for m in listed:
        assert picklable_model.load_model(m).predict(np.ones(1))[0] in (1.0, 2.0)
    assert not [p for p in (home / "models" / "race").iterdir() if p.name.startswith(".")]
