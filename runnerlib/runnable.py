"""``Runnable``: the user's model code, and ``Runnable.method``, which marks what a Runner exposes.

Methods are discovered by walking the class's MRO at lookup time rather than by registering
them in a class attribute when the class body runs: a registry shared through inheritance is
how BentoML leaks one subclass's methods into its siblings.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

__all__ = ["Runnable", "RunnableMethod", "RunnableMethodConfig", "KNOWN_RESOURCES"]

logger = logging.getLogger("runnerlib")

KNOWN_RESOURCES = ("cpu", "nvidia.com/gpu")
"""Resource names the default strategy understands; others need a custom Strategy."""

_GPU = "nvidia.com/gpu"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class RunnableMethodConfig:
    """How one method is called. Runners hold their own copy, so tuning one runner's copy never
    changes another runner of the same class."""

    batchable: bool = False
    batch_dim: tuple[int, int] = (0, 0)
    """(input dim, output dim): where calls are joined and where results are split."""
    input_spec: Any = None
    output_spec: Any = None

    def copy(self) -> RunnableMethodConfig:
        return copy.copy(self)


class RunnableMethod:
    """A function marked with ``Runnable.method``; behaves like the plain function on instances."""

    def __init__(self, func: Callable[..., Any], config: RunnableMethodConfig) -> None:
        if not callable(func):
            raise TypeError(f"Runnable.method expects a function, got {func!r}")
        self.func = func
        self.config = config
        self.name: str = getattr(func, "__name__", "method")
        self.__doc__ = getattr(func, "__doc__", None)
        self.is_async = inspect.iscoroutinefunction(func)
        self.is_generator = inspect.isgeneratorfunction(func)
        self.is_async_generator = inspect.isasyncgenfunction(func)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> RunnableMethod: ...
    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> Callable[..., Any]: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return self.func.__get__(obj, objtype)

    def __repr__(self) -> str:
        return f"<RunnableMethod {self.name} {self.config}>"


def _batch_dim(value: Any) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"batch_dim must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (value[0], value[1])
    raise TypeError(f"batch_dim must be an int or a pair (input_dim, output_dim), got {value!r}")


class Runnable:
    """Base class of model code run by a Runner.

    ``SUPPORTED_RESOURCES`` and ``SUPPORTS_CPU_MULTI_THREADING`` are class-level facts the
    scheduling strategy reads before any instance exists (building one may be expensive).
    """

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__
        # Older BentoML spellings, honoured when the class does not also use the new ones.
        gpu_flag = own.get("SUPPORT_NVIDIA_GPU", own.get("SUPPORT_GPU"))
        if gpu_flag is not None and "SUPPORTED_RESOURCES" not in own:
            cls.SUPPORTED_RESOURCES = (_GPU, "cpu") if gpu_flag else ("cpu",)
        mt_flag = own.get("SUPPORT_CPU_MULTI_THREADING", own.get("SUPPORT_MULTI_THREADING"))
        if mt_flag is not None and "SUPPORTS_CPU_MULTI_THREADING" not in own:
            cls.SUPPORTS_CPU_MULTI_THREADING = bool(mt_flag)
        resources = cls.SUPPORTED_RESOURCES
        if isinstance(resources, str):
            resources = cls.SUPPORTED_RESOURCES = (resources,)
        if not isinstance(resources, tuple) or not all(isinstance(r, str) for r in resources):
            raise TypeError(
                f"{cls.__qualname__}.SUPPORTED_RESOURCES must be a tuple of str, got {resources!r}"
            )
        for r in resources:
            if r not in KNOWN_RESOURCES:
                logger.warning(
                    "%s.SUPPORTED_RESOURCES names %r, which DefaultStrategy does not know; "
                    "a custom Strategy is needed to schedule it",
                    cls.__qualname__,
                    r,
                )

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("SUPPORTED_RESOURCES", "SUPPORTS_CPU_MULTI_THREADING"):
            raise AttributeError(
                f"{name} is a class attribute read before the Runnable is built; "
                "set it in the class body, not on an instance"
            )
        super().__setattr__(name, value)

    @classmethod
    def runnable_methods(cls) -> dict[str, RunnableMethod]:
        """This class's exposed methods, inherited ones first, in definition order.

        A subclass that redefines a name without ``Runnable.method`` hides that method.
        """
        found: dict[str, RunnableMethod] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, RunnableMethod):
                    found[name] = value
                elif name in found:
                    del found[name]
        return found

    @classmethod
    def supports_gpu(cls) -> bool:
        return _GPU in cls.SUPPORTED_RESOURCES

    @classmethod
    def add_method(
        cls,
        func: Callable[..., Any],
        name: str,
        *,
        batchable: bool = False,
        batch_dim: int | tuple[int, int] = 0,
        input_spec: Any = None,
        output_spec: Any = None,
    ) -> None:
        """Expose ``func`` as method ``name`` (for Runnables built programmatically)."""
        m = Runnable.method(
            func,
            batchable=batchable,
            batch_dim=batch_dim,
            input_spec=input_spec,
            output_spec=output_spec,
        )
        m.name = name
        setattr(cls, name, m)

    @overload
    @staticmethod
    def method(
        fn: Callable[..., Any],
        *,
        batchable: bool = False,
        batch_dim: int | tuple[int, int] = 0,
        input_spec: Any = None,
        output_spec: Any = None,
    ) -> RunnableMethod: ...

    @overload
    @staticmethod
    def method(
        fn: None = None,
        *,
        batchable: bool = False,
        batch_dim: int | tuple[int, int] = 0,
        input_spec: Any = None,
        output_spec: Any = None,
    ) -> Callable[[Callable[..., Any]], RunnableMethod]: ...

    @staticmethod
    def method(
        fn: Callable[..., Any] | None = None,
        *,
        batchable: bool = False,
        batch_dim: int | tuple[int, int] = 0,
        input_spec: Any = None,
        output_spec: Any = None,
    ) -> Any:
        """Mark a method as callable through the Runner; bare or with arguments.

        ``batch_dim`` is an int, or ``(input_dim, output_dim)`` when the result is split along
        another axis than the one the inputs were joined on.
        """
        if not isinstance(batchable, bool):
            raise TypeError(f"batchable must be a bool, got {batchable!r}")
        config = RunnableMethodConfig(
            batchable=batchable,
            batch_dim=_batch_dim(batch_dim),
            input_spec=input_spec,
            output_spec=output_spec,
        )

        def decorate(f: Callable[..., Any]) -> RunnableMethod:
            if isinstance(f, RunnableMethod):
                f = f.func
            return RunnableMethod(f, config)

        if fn is not None:
            return decorate(fn)
        return decorate
