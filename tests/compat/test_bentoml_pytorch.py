"""The pre-built PyTorch runner behaves as BentoML's (``bentoml.pytorch``, its
``PytorchModelRunnable``): numpy arrays and DataFrames reach the module as float tensors,
tensors keep their dtype, the module runs under inference mode, the Runnable's methods take
and return tensors inside the worker, it has ``device_id`` and ``model``, a Runnable that
subclasses it works, and ``with_options(partial_kwargs=...)`` applies."""

from __future__ import annotations

import asyncio
import importlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (extra 'torch')")
pd = pytest.importorskip("pandas")

from compat_torch import Probe  # noqa: E402

import runnerlib as bentoml  # noqa: E402

SIGNATURES = {
    "__call__": {"batchable": True, "batch_dim": 0},
    "kind": {},
    "scaled": {},
    "grad": {},
}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNERLIB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def saved():
    return bentoml.pytorch.save_model("probe", Probe(), signatures=SIGNATURES)


@pytest.fixture
def custom_module(saved):
    sys.modules.pop("compat_custom", None)
    module = importlib.import_module("compat_custom")
    yield module
    sys.modules.pop("compat_custom", None)


INPUTS = [
    (np.arange(4, dtype=np.float64).reshape(2, 2), "float32"),
    (np.arange(4, dtype=np.int64).reshape(2, 2), "float32"),
    (np.arange(4, dtype=np.uint8).reshape(2, 2), "float32"),
    (np.arange(4, dtype=np.float32).reshape(2, 2), "float32"),
    (pd.DataFrame({"a": [1, 2], "b": [3, 4]}), "float32"),
    (torch.arange(4).reshape(2, 2), "int64"),  # a tensor keeps its dtype
    (torch.arange(4, dtype=torch.float64).reshape(2, 2), "float64"),
]


def check_semantics(runner):
    for value, dtype in INPUTS:
        info = runner.kind.run(value)
        assert info["type"] == "Tensor" and info["dtype"] == dtype, (value, info)
        assert info["device"] == "cpu"
    # keyword arguments are converted the same way
    assert runner.kind.run(x=np.zeros(2, dtype=np.int8))["dtype"] == "float32"
    # not an array: passed as it is
    assert runner.scaled.run(torch.ones(2), factor=3).tolist() == [3.0, 3.0]
    assert runner.grad.run(np.zeros(1)) is False  # inference mode
    y = runner.run(np.ones((3, 2), dtype=np.float64))
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    assert y.tolist() == [[2.0, 2.0]] * 3


def test_local_semantics(saved):
    runner = bentoml.pytorch.get("probe:latest").to_runner()
    runner.init_local(quiet=True)
    try:
        check_semantics(runner)
    finally:
        runner.destroy()


def test_runnable_attributes(saved):
    cls = bentoml.pytorch.get_runnable(saved)
    assert cls is saved.to_runnable()
    assert issubclass(cls, bentoml.pytorch.PytorchModelRunnable)
    runnable = cls()
    assert runnable.device_id == "cpu"
    assert isinstance(runnable.model, Probe) and not runnable.model.training
    # called directly, the built-in methods take and return tensors
    out = runnable(np.ones((1, 2), dtype=np.uint8))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


def test_partial_kwargs(saved):
    model = saved.with_options(partial_kwargs={"scaled": {"factor": 5}})
    assert model.options["partial_kwargs"] == {"scaled": {"factor": 5}}
    assert saved.options == {}  # the store is untouched
    runner = model.to_runner(name="probe5")
    runner.init_local(quiet=True)
    try:
        assert runner.scaled.run(np.ones(2)).tolist() == [5.0, 5.0]
        assert runner.scaled.run(np.ones(2), factor=2).tolist() == [2.0, 2.0]  # the call wins
        assert runner.kind.run(np.ones(1))["kwargs"] == {}
    finally:
        runner.destroy()
    with pytest.raises(TypeError, match="partial_kwargs"):
        saved.with_options(colour="red")


def test_subclass_locally(custom_module):
    runner = bentoml.Runner(custom_module.CustomProbe, name="custom")
    runner.init_local(quiet=True)
    try:
        out = runner.run(np.array([[1, 5], [7, 2]], dtype=np.uint8))
        assert isinstance(out, torch.Tensor) and out.tolist() == [1, 0]
        assert isinstance(runner.as_numpy.run(np.ones((1, 2))), np.ndarray)
        facts = runner.facts.run()
        assert facts["device_id"] == "cpu" and facts["model"] == "Probe"
        assert facts["warm_up"] == "Tensor" and facts["input_of_kind"]["type"] == "Tensor"
        assert isinstance(asyncio.run(runner.async_double.async_run(np.ones(2))), torch.Tensor)
    finally:
        runner.destroy()


def test_across_processes(saved, custom_module, cpus):
    cpus(4)
    prebuilt = saved.to_runner(name="probe", cpu=1, max_latency_ms=20)
    options = saved.with_options(partial_kwargs={"scaled": {"factor": 5}}).to_runner(
        name="probe5", cpu=1)
    plain = bentoml.Runner(saved.to_runnable(), name="plain", cpu=1)
    custom = bentoml.Runner(custom_module.CustomProbe, name="custom", cpu=1,
                            method_configs={"__call__": {"max_batch_size": 50,
                                                         "max_latency_ms": 50}})
    runners = [prebuilt, options, plain, custom]
    with bentoml.Server(runners):
        for r in runners:
            r.init_client(spawn=False)
        try:
            check_semantics(prebuilt)
            assert options.scaled.run(np.ones(2)).tolist() == [5.0, 5.0]

            # a plain Runner of the built-in class: tensors come back as tensors
            y = plain.run(np.ones((2, 2), dtype=np.int64))
            assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
            assert plain.kind.run(torch.ones(1, dtype=torch.int16))["dtype"] == "int16"

            # the subclass: batched calls from many callers, tensors back
            async def many():
                arrays = [np.eye(2, dtype=np.uint8)[[i % 2]] for i in range(20)]
                return arrays, await asyncio.gather(*(custom.async_run(a) for a in arrays))

            arrays, outs = asyncio.run(many())
            for a, o in zip(arrays, outs, strict=True):
                assert isinstance(o, torch.Tensor) and o.tolist() == [int(a.argmax())]
            assert isinstance(custom.as_numpy.run(np.ones((1, 2))), np.ndarray)
            facts = custom.facts.run()
            assert facts["device_id"] == "cpu" and facts["model"] == "Probe"
            assert facts["warm_up"] == "Tensor"
            big = custom.run(np.tile(np.array([[0, 1]], dtype=np.uint8), (120, 1)))
            assert isinstance(big, torch.Tensor) and big.shape == (120,)  # split, re-joined
            assert big.sum().item() == 120
        finally:
            for r in runners:
                r.destroy()
