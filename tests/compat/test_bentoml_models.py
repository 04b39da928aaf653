"""BentoML's model store calls with their keywords (``save_model(..., custom_objects=,
external_modules=, labels=, metadata=)``, ``Model.custom_objects``, ``Model.with_options``,
``<framework>.get_runnable``, ``bentoml.models.create/get/list/delete``) and its errors
(``bentoml.exceptions.NotFound``), ported by changing the import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from compat_framework import Lookup

import runnerlib as bentoml
from runnerlib.errors import NotFound

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNERLIB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _fresh_python(code: str, home: Path, cwd: Path) -> str:
    """Run ``code`` in a new interpreter that cannot import the test's helper modules."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RUNNERLIB_HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def _module_in(tmp_path: Path, monkeypatch, name: str, source: str):
    """Import a module written to a directory that is then removed from sys.path (the module
    stays in sys.modules until the test ends)."""
    import importlib

    pkg = tmp_path / "mods"
    pkg.mkdir(exist_ok=True)
    (pkg / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(pkg))
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # removed again at the end of the test
    sys.path.remove(str(pkg))
    return module


# --------------------------------------------------------------------------- custom objects


def test_sklearn_custom_objects_and_labels():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    clf = LogisticRegression().fit(x, [0, 0, 1, 1])
    saved = bentoml.sklearn.save_model(
        "clf", clf, signatures={"predict": {"batchable": True}},
        labels={"team": "nlp"}, metadata={"acc": 0.9},
        custom_objects={"labels": ["neg", "pos"], "scale": 2.5},
    )
    model = bentoml.sklearn.get("clf:latest")
    assert model == saved and model.custom_objects == {"labels": ["neg", "pos"], "scale": 2.5}
    assert model.info.labels == {"team": "nlp"} and model.info.metadata == {"acc": 0.9}
    assert bentoml.models.get("clf").custom_objects["scale"] == 2.5
    assert bentoml.sklearn.get_runnable(model) is model.to_runnable()
    runnable = model.to_runnable()()
    assert runnable.model.predict(x).tolist() == [0, 0, 1, 1]  # BentoML's `model` attribute


def test_no_custom_objects_is_an_empty_dict():
    saved = bentoml.picklable_model.save_model("plain", Lookup({"k": 1}))
    assert saved.custom_objects == {}


def test_external_modules_are_saved_by_value(tmp_path, home, monkeypatch):
    """A model whose class lives in a module given as external_modules loads where that
    module cannot be imported (BentoML embeds it with cloudpickle)."""
    pytest.importorskip("cloudpickle")
    mod = _module_in(tmp_path, monkeypatch, "my_tokenizer", """
        class Tokenizer:
            def __init__(self, sep):
                self.sep = sep

            def __call__(self, text):
                return text.split(self.sep)
    """)
    bentoml.picklable_model.save_model(
        "tok", mod.Tokenizer(","), external_modules=[mod],
        custom_objects={"extra": mod.Tokenizer(";")},
    )
    out = _fresh_python("""
        import runnerlib
        m = runnerlib.picklable_model.get("tok:latest")
        print(runnerlib.picklable_model.load_model(m)("a,b"), m.custom_objects["extra"]("c;d"))
    """, home, tmp_path)
    assert out == "['a', 'b'] ['c', 'd']"


def test_pytorch_external_modules(tmp_path, home, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("cloudpickle")
    mod = _module_in(tmp_path, monkeypatch, "my_net", """
        import torch

        class Net(torch.nn.Module):
            def forward(self, x):
                return x + 1
    """)
    bentoml.pytorch.save_model("net", mod.Net(), external_modules=[mod])
    out = _fresh_python("""
        import numpy as np
        import runnerlib
        runner = runnerlib.pytorch.get("net").to_runner()
        runner.init_local(quiet=True)
        print(runner.run(np.zeros(2)).tolist())
        runner.destroy()
    """, home, tmp_path)
    assert out == "[1.0, 1.0]"


# ---------------------------------------------------------------------- models.create etc.


def test_models_create_and_a_framework_module_of_your_own(tmp_path, home):
    with bentoml.models.create(
        "my_model", module="compat_framework", signatures={"predict": {"batchable": True}},
        labels={"stage": "dev"}, metadata={"rows": 3}, custom_objects={"offset": 10},
        context=bentoml.models.ModelContext(framework_name="numpy",
                                            framework_versions={"numpy": np.__version__}),
        options=bentoml.models.ModelOptions(),
    ) as model:
        np.save(model.path_of("weights.npy"), np.array([1.0, 2.0]))
        tmp = model.path
    assert not tmp.exists() and model.path.parent == home / "models" / "my_model"
    got = bentoml.models.get("my_model:latest")
    assert got == model and got.info.framework == "numpy" and got.custom_objects == {
        "offset": 10}
    assert np.load(got.path_of("weights.npy")).tolist() == [1.0, 2.0]
    assert bentoml.models.list("my_model") == [got] and bentoml.models.list() == [got]
    assert bentoml.models.list(f"my_model:{got.tag.version}") == [got]
    # the saving module's load_model / get_runnable serve it
    assert got.load_model().tolist() == [11.0, 12.0]
    runner = got.to_runner()
    runner.init_local(quiet=True)
    try:
        assert runner.predict.run(np.ones(2)).tolist() == [12.0, 13.0]
    finally:
        runner.destroy()
    bentoml.models.delete("my_model:latest")
    with pytest.raises(NotFound):
        bentoml.models.get("my_model")


def test_create_discards_on_error(home):
    with pytest.raises(RuntimeError):
        with bentoml.models.create("broken") as model:
            Path(model.path_of("half.bin")).write_bytes(b"x")
            raise RuntimeError("training failed")
    assert bentoml.models.list() == []
    assert not list((home / "models" / "broken").glob("*"))


# ------------------------------------------------------------------------------- errors


def test_not_found_is_bentomls_exception():
    assert issubclass(NotFound, bentoml.RunnerError)
    assert bentoml.NotFound is NotFound and bentoml.exceptions.NotFound is NotFound
    with pytest.raises(NotFound, match="nothing:latest"):
        bentoml.models.get("nothing")
    with pytest.raises(NotFound):
        bentoml.sklearn.get("nothing:v1")
    with pytest.raises(LookupError):  # and still what runnerlib raised before
        bentoml.models.get("nothing")


def test_wrong_framework_is_not_found():
    bentoml.picklable_model.save_model("plain", Lookup({"k": 1}))
    with pytest.raises(NotFound, match="saved by runnerlib.picklable_model"):
        bentoml.sklearn.get("plain:latest")


def test_embedded_runner_says_what_to_write():
    saved = bentoml.picklable_model.save_model("plain", Lookup({"k": 1}))
    with pytest.raises(bentoml.ConfigError, match="init_local"):
        saved.to_runner(embedded=True)
    assert saved.to_runner(embedded=False).name == "plain"


def test_options_travel_with_a_pickled_model():
    import pickle

    saved = bentoml.picklable_model.save_model("plain", Lookup({"k": 1}))
    model = saved.with_options(partial_kwargs={"__call__": {"default": 7}})
    back = pickle.loads(pickle.dumps(model))
    assert back == model and back.options == model.options and back != saved
    runner = model.to_runner()
    runner.init_local(quiet=True)
    try:
        assert runner.run("missing") == 7  # dict.get(key, default=7)
    finally:
        runner.destroy()
