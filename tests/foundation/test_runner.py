from __future__ import annotations

import asyncio
import pickle

import pytest

import runnerlib
from runnerlib import ConfigError, Runnable, Runner, RunnerMethod, StateError
from runnerlib.handles import LocalHandle, RunnerHandle, UninitializedHandle


class Single(Runnable):
    def __init__(self, factor: int = 2):
        self.factor = factor

    @Runnable.method(batchable=True)
    def predict(self, x):
        return x * self.factor


class Several(Runnable):
    @Runnable.method
    def a(self, x):
        return ("a", x)

    @Runnable.method
    def b(self, x):
        return ("b", x)


class WithCall(Runnable):
    @Runnable.method
    def __call__(self, x):
        return ("call", x)

    @Runnable.method
    def other(self, x):
        return ("other", x)


# ------------------------------------------------------------------------------------ names


def test_default_name_is_class_name_lowercased():
    assert Runner(Single).name == "single"
    assert Runner(WithCall).name == "withcall"


def test_given_name_lowercased_with_warning(logs):
    r = Runner(Single, name="MyRunner")
    assert r.name == "myrunner"
    assert "lowercase" in logs.text and "MyRunner" in logs.text


def test_lowercase_name_no_warning(logs):
    assert Runner(Single, name="my-runner.v1_2").name == "my-runner.v1_2"
    assert "lowercase" not in logs.text


@pytest.mark.parametrize("bad", ["bad name!", "-start", "end-", "_x", "", "a/b", "ünï"])
def test_invalid_names(bad):
    with pytest.raises(ValueError, match="invalid"):
        Runner(Single, name=bad)


def test_name_length_limit():
    assert Runner(Single, name="a" * 63).name == "a" * 63
    with pytest.raises(ValueError, match="63"):
        Runner(Single, name="a" * 64)


def test_invalid_default_name_says_to_pass_name():
    class _Hidden(Runnable):
        @Runnable.method
        def f(self):
            pass

    with pytest.raises(ValueError, match="name="):
        Runner(_Hidden)


def test_name_must_be_str():
    with pytest.raises(TypeError):
        Runner(Single, name=3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- construction


def test_not_a_runnable():
    with pytest.raises(TypeError, match="Runnable"):
        Runner(object)  # type: ignore[arg-type]


def test_runnable_without_methods():
    class Empty(Runnable):
        pass

    with pytest.raises(ValueError, match="no methods"):
        Runner(Empty)


def test_attributes():
    r = Runner(Single, runnable_init_params={"factor": 3}, models=["m"])
    assert r.runnable_class is Single
    assert r.runnable_init_params == {"factor": 3}
    assert r.models == ["m"]
    assert r.scheduling_strategy is runnerlib.DefaultStrategy
    assert list(r.methods) == ["predict"]
    m = r.predict
    assert isinstance(m, RunnerMethod) and m is r.methods["predict"]
    assert m.name == "predict" and m.runner is r
    assert m.config.batchable is True and m.config.batch_dim == (0, 0)
    assert m.max_batch_size == 100 and m.max_latency_ms == 60000


def test_init_params_copied():
    params = {"factor": 3}
    r = Runner(Single, runnable_init_params=params)
    params["factor"] = 5
    assert r.runnable_init_params == {"factor": 3}


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": 1.5}, "max_batch_size"),
        ({"max_latency_ms": -1}, "max_latency_ms"),
        ({"timeout": 0}, "timeout"),
        ({"workers_per_resource": 0}, "workers_per_resource"),
        ({"cpu": "lots"}, "cpu"),
        ({"cpu": 0}, "cpu"),
        ({"nvidia_gpu": -1}, "nvidia_gpu"),
        ({"on_overload": "drop"}, "on_overload"),
        ({"allow_pickle": "yes"}, "allow_pickle"),
        ({"method_configs": {"nope": {"max_batch_size": 2}}}, "nope"),
        ({"method_configs": {"predict": {"batch_size": 2}}}, "batch_size"),
        ({"method_configs": {"predict": {"max_batch_size": "2"}}}, "max_batch_size"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Runner(Single, **kwargs)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------ default method


def test_default_method_is_the_only_method():
    r = Runner(Single)
    r.init_local(quiet=True)
    try:
        assert r.run(2) == 4
        assert asyncio.run(r.async_run(3)) == 6
    finally:
        r.destroy()


def test_default_method_is_call():
    r = Runner(WithCall)
    r.init_local(quiet=True)
    try:
        assert r.run(1) == ("call", 1)
        assert r.other.run(1) == ("other", 1)
        assert r.methods["__call__"].run(2) == ("call", 2)
    finally:
        r.destroy()


def test_no_default_method():
    r = Runner(Several)
    assert not hasattr(r, "run")
    with pytest.raises(AttributeError, match=r"runner.a.run\(") as info:
        r.run  # noqa: B018
    assert "a, b" in str(info.value)
    with pytest.raises(AttributeError):
        r.async_run  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'zzz'"):
        r.zzz  # noqa: B018


def test_method_named_like_runner_attribute():
    class Clash(Runnable):
        @Runnable.method
        def name(self):
            return "method"

        @Runnable.method
        def destroy(self):
            return "method"

    r = Runner(Clash)
    assert r.name == "clash"
    assert isinstance(r.methods["destroy"], RunnerMethod)
    r.init_local(quiet=True)
    try:
        assert r.methods["name"].run() == "method"
    finally:
        r.destroy()


# --------------------------------------------------------------------- independent copies


def test_two_runners_of_one_class_do_not_share_config():
    r1 = Runner(Single, name="one", runnable_init_params={"factor": 2}, max_batch_size=4)
    r2 = Runner(Single, name="two", runnable_init_params={"factor": 10})
    r1.predict.config.batchable = False
    r1.predict.config.batch_dim = (1, 1)
    assert r2.predict.config.batchable is True and r2.predict.config.batch_dim == (0, 0)
    assert Single.runnable_methods()["predict"].config.batchable is True
    assert r1.predict.max_batch_size == 4 and r2.predict.max_batch_size == 100
    assert r1.settings().methods["predict"].batchable is False
    assert r2.settings().methods["predict"].batchable is True
    r1.init_local(quiet=True)
    r2.init_local(quiet=True)
    try:
        assert r1.predict.run(1) == 2 and r2.predict.run(1) == 10
    finally:
        r1.destroy()
        r2.destroy()


def test_method_configs_copied():
    mc = {"predict": {"max_batch_size": 7}}
    r = Runner(Single, method_configs=mc)
    mc["predict"]["max_batch_size"] = 9
    assert r.predict.max_batch_size == 7


# ------------------------------------------------------------------------------ lifecycle


def test_calls_before_init_raise_state_error():
    r = Runner(Single)
    for call in (lambda: r.predict.run(1), lambda: r.run(1), lambda: r.predict.async_stream(1)):
        with pytest.raises(StateError, match=r"init_local\(\).*init_client\(\)"):
            call()
    with pytest.raises(StateError, match="not initialised"):
        asyncio.run(r.predict.async_run(1))


def test_double_init_raises_state_error():
    r = Runner(Single)
    r.init_local(quiet=True)
    try:
        with pytest.raises(StateError, match="already initialised"):
            r.init_local(quiet=True)
        with pytest.raises(StateError, match="already initialised"):
            r.init_client()
    finally:
        r.destroy()


def test_destroy_then_init_again():
    r = Runner(Single)
    r.destroy()  # destroying an uninitialised runner is harmless
    r.init_local(quiet=True)
    assert isinstance(r.handle, LocalHandle) and r.initialized
    r.destroy()
    assert isinstance(r.handle, UninitializedHandle) and not r.initialized
    with pytest.raises(StateError):
        r.run(1)
    r.init_local(quiet=True)
    assert r.run(1) == 2
    r.destroy()


def test_runner_handle_is_ready():
    r = Runner(Single)
    assert asyncio.run(r.runner_handle_is_ready(0.1)) is False
    r.init_local(quiet=True)
    try:
        assert asyncio.run(r.runner_handle_is_ready(0.1)) is True
    finally:
        r.destroy()


def test_init_client_installs_shm_handle(monkeypatch):
    """init_client imports the client role lazily and hands it the embedded spawn function
    (None with spawn=False) and the timeout."""
    import sys
    import types

    made = {}

    class FakeShm(UninitializedHandle):
        def __init__(self, runner, *, spawn, timeout):
            made.update(runner=runner, spawn=spawn, timeout=timeout)
            super().__init__(runner.name)

    fake = types.ModuleType("runnerlib._shm.client")
    fake.ShmHandle = FakeShm  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "runnerlib._shm.client", fake)
    r = Runner(Single)
    r.init_client(spawn=False, timeout=3.0)
    assert made == {"runner": r, "spawn": None, "timeout": 3.0}
    assert isinstance(r.handle, FakeShm)
    r.destroy()
    from runnerlib._shm.supervisor import spawn_embedded

    r.init_client(timeout=1.0)
    assert made["spawn"] is spawn_embedded


def test_handle_interface_is_abstract():
    with pytest.raises(TypeError):
        RunnerHandle()  # type: ignore[abstract]
    assert {
        "run_method", "async_run_method", "async_stream_method", "is_ready", "destroy"
    } <= RunnerHandle.__abstractmethods__


def test_pickle_gives_uninitialised_copy():
    r = Runner(Single, name="pick", runnable_init_params={"factor": 5}, max_batch_size=3)
    r.init_local(quiet=True)
    try:
        copy = pickle.loads(pickle.dumps(r))
    finally:
        r.destroy()
    assert copy.name == "pick" and not copy.initialized
    assert copy.predict.runner is copy and copy.predict.max_batch_size == 3
    copy.init_local(quiet=True)
    assert copy.run(2) == 10
    copy.destroy()


def test_public_names():
    for name in runnerlib.__all__:
        if name != "Server":
            assert hasattr(runnerlib, name), name
    assert "Server" in runnerlib.__all__
    for err in ("StateError", "ConfigError", "RemoteError", "WorkerDied", "RunnerTimeout",
                "RunnerOverloaded"):
        assert issubclass(getattr(runnerlib, err), runnerlib.RunnerError)
    assert issubclass(runnerlib.RunnerTimeout, TimeoutError)
