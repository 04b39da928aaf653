"""Pre-built runners of saved models (picklable_model, sklearn, pytorch), in-process and across
processes, and custom Runnables that load a saved model in their workers."""

from __future__ import annotations

import asyncio
import pickle

import numpy as np
import pytest
from store_fixtures import ModelUser, Scaler

import runnerlib
from runnerlib import picklable_model
from runnerlib._shm.startup import import_class


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNERLIB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _gather(coros):
    async def main():
        return await asyncio.gather(*coros)

    return asyncio.run(main())


def test_generated_runnable_is_importable_by_name():
    model = picklable_model.save_model(
        "scale.v2", Scaler(2.0),
        signatures={"predict": {"batchable": True, "batch_dim": [0, 1]}, "describe": {}},
    )
    cls = model.to_runnable()
    assert cls is model.to_runnable()
    ref = f"{cls.__module__}:{cls.__qualname__}"
    assert ref.startswith("runnerlib.picklable_model:runnables.scale%2Ev2:")
    assert import_class(ref, None) is cls
    assert pickle.loads(pickle.dumps(cls)) is cls
    methods = cls.runnable_methods()
    assert list(methods) == ["predict", "describe"]
    assert methods["predict"].config.batchable and methods["predict"].config.batch_dim == (0, 1)
    assert not methods["describe"].config.batchable
    with pytest.raises(AttributeError):
        picklable_model.runnables.not_a_key  # noqa: B018


def test_to_runner_options_and_local_run():
    model = picklable_model.save_model(
        "scaler", Scaler(3.0), signatures={"predict": {"batchable": True}, "describe": {}}
    )
    runner = picklable_model.get("scaler:latest").to_runner(
        max_batch_size=8, max_latency_ms=5, method_configs={"predict": {"max_batch_size": 4}},
        cpu=1,
    )
    assert runner.name == "scaler" and runner.models == [model]
    assert runner.predict.max_batch_size == 4 and runner.describe.max_batch_size == 8
    assert model.to_runner(name="other").name == "other"
    runner.init_local(quiet=True)
    try:
        np.testing.assert_array_equal(runner.predict.run(np.arange(3.0)), np.arange(3.0) * 3)
        assert runner.describe.run("f=") == "f=3.0"
    finally:
        runner.destroy()


def test_picklable_and_custom_runnable_across_processes(home):
    model = picklable_model.save_model("scaler", Scaler(2.0),
                                       signatures={"predict": {"batchable": True}})
    callable_model = picklable_model.save_model("adder", Scaler(10.0))  # default: __call__
    prebuilt = model.to_runner(max_latency_ms=20)
    adder = callable_model.to_runner()
    custom = runnerlib.Runner(ModelUser, name="custom", models=[model],
                              runnable_init_params={"model": model})
    with runnerlib.Server([prebuilt, adder, custom]):
        for r in (prebuilt, adder, custom):
            r.init_client(spawn=False)
        try:
            out = _gather([prebuilt.predict.async_run(np.full((2, 3), float(i)))
                           for i in range(20)])
            for i, y in enumerate(out):
                np.testing.assert_array_equal(y, np.full((2, 3), 2.0 * i))
            np.testing.assert_array_equal(adder.run(np.zeros(2)), np.full(2, 10.0))
            np.testing.assert_array_equal(custom.predict.run(np.ones((1, 2))), np.full((1, 2), 2))
            assert custom.where.run() == str(home)
        finally:
            for r in (prebuilt, adder, custom):
                r.destroy()


def test_sklearn_runner():
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (extra 'sklearn')")
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    clf = LogisticRegression().fit(x, y)
    saved = runnerlib.sklearn.save_model(
        "clf", clf, signatures={"predict": {"batchable": True}, "predict_proba": {}}
    )
    assert "scikit-learn" in saved.info.framework_versions
    loaded = runnerlib.sklearn.load_model("clf")
    assert loaded.predict(x[:5]).tolist() == clf.predict(x[:5]).tolist()
    runner = runnerlib.sklearn.get("clf:latest").to_runner(max_latency_ms=20)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        try:
            chunks = [x[i:i + 5] for i in range(0, 100, 5)]
            out = _gather([runner.predict.async_run(c) for c in chunks])
            np.testing.assert_array_equal(np.concatenate(out), clf.predict(x[:100]))
            np.testing.assert_allclose(runner.predict_proba.run(x[:3]), clf.predict_proba(x[:3]))
        finally:
            runner.destroy()


@pytest.fixture
def torch_model():
    torch = pytest.importorskip("torch", reason="torch is not installed (extra 'torch')")
    from torch_fixtures import Doubler

    saved = runnerlib.pytorch.save_model(
        "doubler", Doubler(),
        signatures={
            "__call__": {"batchable": True, "batch_dim": 0},
            "predict": {"batchable": True, "batch_dim": 0},
            "pair": {},
            "probe": {},
        },
    )
    return torch, saved


def test_pytorch_runner_local(torch_model):
    torch, saved = torch_model
    assert saved.info.framework_versions["torch"] == torch.__version__
    runner = runnerlib.pytorch.get("doubler:latest").to_runner()
    runner.init_local(quiet=True)
    try:
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        y = runner.run(x)
        assert isinstance(y, torch.Tensor) and torch.equal(y, x * 2)
        a, b = runner.pair.run(x)
        assert torch.equal(a, x + 1) and torch.equal(b, x.mean(dim=1))
        assert torch.equal(runner.predict.run(x.numpy()), x.sum(dim=1))  # numpy in, tensor out
    finally:
        runner.destroy()


def test_pytorch_runner_across_processes(torch_model):
    torch, saved = torch_model
    runner = saved.to_runner(cpu=1, max_latency_ms=20)
    with runnerlib.Server([runner]):
        runner.init_client(spawn=False)
        try:
            x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
            y = runner.run(x)
            assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
            assert torch.equal(y, x * 2)
            a, b = runner.pair.run(x.to(torch.float64))
            assert a.dtype == torch.float64 and torch.equal(b, x.to(torch.float64).mean(dim=1))
            y.add_(1)  # a received tensor is usable like any other
            inputs = [torch.full((2, 4), float(i)) for i in range(30)]
            outs = _gather([runner.predict.async_run(t) for t in inputs])
            for t, o in zip(inputs, outs, strict=True):
                assert isinstance(o, torch.Tensor) and torch.equal(o, t.sum(dim=1))
            half = runner.run(torch.ones(2, 2, dtype=torch.bfloat16))  # travels pickled
            assert half.dtype == torch.bfloat16
            assert torch.equal(half.float(), torch.full((2, 2), 2.0))
            info = runner.probe.run(x)
            assert info["omp"] == "1" and info["threads"] == 1
            assert info["cuda_visible"] == "-1"
            assert info["input_type"] == "Tensor" and info["input_device"] == "cpu"
            assert info["grad_enabled"] is False
        finally:
            runner.destroy()
