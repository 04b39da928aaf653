from __future__ import annotations

import pytest

from runnerlib import Runnable
from runnerlib.runnable import RunnableMethod, RunnableMethodConfig


def test_bare_decorator_defaults():
    class A(Runnable):
        @Runnable.method
        def predict(self, x):
            return x + 1

    m = A.runnable_methods()["predict"]
    assert isinstance(m, RunnableMethod)
    assert m.config == RunnableMethodConfig(batchable=False, batch_dim=(0, 0))
    assert A().predict(1) == 2  # still an ordinary method on instances


def test_decorator_with_arguments_keeps_specs():
    spec_in, spec_out = object(), object()

    class A(Runnable):
        @Runnable.method(batchable=True, batch_dim=(0, 1), input_spec=spec_in, output_spec=spec_out)
        def predict(self, x):
            return x

    cfg = A.runnable_methods()["predict"].config
    assert cfg.batchable is True
    assert cfg.batch_dim == (0, 1)
    assert cfg.input_spec is spec_in and cfg.output_spec is spec_out


def test_int_batch_dim_becomes_pair():
    class A(Runnable):
        @Runnable.method(batchable=True, batch_dim=2)
        def predict(self, x):
            return x

    assert A.runnable_methods()["predict"].config.batch_dim == (2, 2)


@pytest.mark.parametrize("bad", ["0", 1.5, (0,), (0, 1, 2), True, ("a", 0)])
def test_bad_batch_dim(bad):
    with pytest.raises(TypeError, match="batch_dim"):
        Runnable.method(batch_dim=bad)


def test_bad_batchable():
    with pytest.raises(TypeError, match="batchable"):
        Runnable.method(batchable="yes")  # type: ignore[call-overload]


def test_method_kinds_detected():
    class A(Runnable):
        @Runnable.method
        def plain(self):
            return 1

        @Runnable.method
        async def coro(self):
            return 1

        @Runnable.method
        def gen(self):
            yield 1

        @Runnable.method
        async def agen(self):
            yield 1

    ms = A.runnable_methods()
    assert [m.is_async for m in ms.values()] == [False, True, False, False]
    assert [m.is_generator for m in ms.values()] == [False, False, True, False]
    assert [m.is_async_generator for m in ms.values()] == [False, False, False, True]
    assert list(ms) == ["plain", "coro", "gen", "agen"]  # definition order


def test_discovery_does_not_leak_between_subclasses():
    class Base(Runnable):
        @Runnable.method
        def shared(self):
            return "base"

    class Left(Base):
        @Runnable.method
        def left_only(self):
            return "left"

    class Right(Base):
        @Runnable.method
        def right_only(self):
            return "right"

    assert list(Base.runnable_methods()) == ["shared"]
    assert list(Left.runnable_methods()) == ["shared", "left_only"]
    assert list(Right.runnable_methods()) == ["shared", "right_only"]


def test_subclass_overrides_and_hides():
    class Base(Runnable):
        @Runnable.method
        def a(self):
            return 1

        @Runnable.method
        def b(self):
            return 2

    class Child(Base):
        @Runnable.method(batchable=True)
        def a(self):
            return 10

        def b(self):  # a plain override hides the exposed method
            return 20

    assert list(Child.runnable_methods()) == ["a"]
    assert Child.runnable_methods()["a"].config.batchable is True
    assert Base.runnable_methods()["a"].config.batchable is False
    assert list(Base.runnable_methods()) == ["a", "b"]


def test_default_resources():
    class A(Runnable):
        @Runnable.method
        def f(self):
            pass

    assert A.SUPPORTED_RESOURCES == ("cpu",)
    assert A.SUPPORTS_CPU_MULTI_THREADING is False
    assert not A.supports_gpu()


def test_old_spellings():
    class Old(Runnable):
        SUPPORT_NVIDIA_GPU = True
        SUPPORT_CPU_MULTI_THREADING = True

        @Runnable.method
        def f(self):
            pass

    assert "nvidia.com/gpu" in Old.SUPPORTED_RESOURCES and "cpu" in Old.SUPPORTED_RESOURCES
    assert Old.SUPPORTS_CPU_MULTI_THREADING is True

    class OldCpu(Runnable):
        SUPPORT_NVIDIA_GPU = False
        SUPPORT_CPU_MULTI_THREADING = False

        @Runnable.method
        def f(self):
            pass

    assert OldCpu.SUPPORTED_RESOURCES == ("cpu",)
    assert OldCpu.SUPPORTS_CPU_MULTI_THREADING is False


def test_new_spelling_wins_over_old():
    class Both(Runnable):
        SUPPORTED_RESOURCES = ("cpu",)
        SUPPORT_NVIDIA_GPU = True

        @Runnable.method
        def f(self):
            pass

    assert Both.SUPPORTED_RESOURCES == ("cpu",)


def test_flags_inherited():
    class Gpu(Runnable):
        SUPPORTED_RESOURCES = ("nvidia.com/gpu",)
        SUPPORTS_CPU_MULTI_THREADING = True

    class Child(Gpu):
        @Runnable.method
        def f(self):
            pass

    assert Child.SUPPORTED_RESOURCES == ("nvidia.com/gpu",)
    assert Child.SUPPORTS_CPU_MULTI_THREADING is True


def test_flags_cannot_be_set_on_instances():
    class A(Runnable):
        def __init__(self):
            self.SUPPORTS_CPU_MULTI_THREADING = True

    with pytest.raises(AttributeError, match="class attribute"):
        A()


def test_bad_supported_resources():
    with pytest.raises(TypeError, match="SUPPORTED_RESOURCES"):

        class A(Runnable):
            SUPPORTED_RESOURCES = ["cpu", 3]  # type: ignore[assignment]


def test_unknown_resource_warns(logs):
    class A(Runnable):
        SUPPORTED_RESOURCES = ("cpu", "tpu")

    assert "tpu" in logs.text


def test_add_method():
    class A(Runnable):
        pass

    A.add_method(lambda self, x: x * 3, "triple", batchable=True, batch_dim=1)
    m = A.runnable_methods()["triple"]
    assert m.config.batch_dim == (1, 1) and m.config.batchable
    assert A().triple(2) == 6
