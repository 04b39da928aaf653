"""``Runner`` (a named, configured Runnable) and ``RunnerMethod`` (one callable method of it).

A Runner does no work itself: its calls go to the installed handle (``handles``). It owns the
precedence chain of SPEC section 4, resolved by ``Runner.settings`` into plain ``RunnerSettings``
that the server and workers use without re-reading any configuration.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from runnerlib import config as _config
from runnerlib.errors import ConfigError, StateError
from runnerlib.handles import LocalHandle, UninitializedHandle
from runnerlib.resources import GPU, parse_cpu, parse_nvidia_gpu, resolve_resource_request
from runnerlib.runnable import Runnable, RunnableMethod, RunnableMethodConfig
from runnerlib.settings import (
    ON_OVERLOAD,
    ClientSettings,
    MethodKind,
    MethodSpec,
    OnOverload,
    RunnerSettings,
    class_ref,
)
from runnerlib.strategy import DefaultStrategy, Strategy
from runnerlib.transport import RunnerHandle

if TYPE_CHECKING:
    import os

__all__ = ["Runner", "RunnerMethod", "RunnerSettings", "MethodSpec", "validate_name"]

logger = logging.getLogger("runnerlib")

NAME_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
NAME_MAX = 63
_METHOD_CONFIG_KEYS = frozenset({"max_batch_size", "max_latency_ms"})


def validate_name(name: str | None, runnable_class: type[Runnable]) -> str:
    """BentoML's naming rule: default is the class name lowercased; a given name is lowercased
    with a warning; the result must match ``NAME_RE`` and have at most 63 characters."""
    if name is None:
        name = runnable_class.__name__.lower()
        hint = " (derived from the class name; pass name=...)"
    else:
        if not isinstance(name, str):
            raise TypeError(f"runner name must be a str, got {type(name).__name__}")
        hint = ""
        if name != name.lower():
            logger.warning("runner name %r converted to lowercase %r", name, name.lower())
            name = name.lower()
    if len(name) > NAME_MAX:
        raise ValueError(
            f"runner name {name!r}{hint} has {len(name)} characters; at most {NAME_MAX} allowed"
        )
    if not NAME_RE.match(name):
        raise ValueError(
            f"runner name {name!r}{hint} is invalid: use lowercase letters, digits, '-', '.' "
            "and '_', starting and ending with a letter or digit"
        )
    return name


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _check_positive(value: Any, key: str, *, integer: bool = False, zero: bool = False) -> Any:
    if value is None:
        return None
    ok = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not ok:
        raise ConfigError(f"{key}: expected {'an int' if integer else 'a number'}, got {value!r}")
    number = float(value)  # int or float here
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        raise ConfigError(f"{key}: must be {'>= 0' if zero else '> 0'}, got {value!r}")
    return value


def _pop_timeout(kwargs: dict[str, Any]) -> float | None:
    timeout = kwargs.pop("_timeout", None)
    if timeout is not None:
        _check_positive(timeout, "_timeout")
    return timeout


class RunnerMethod:
    """One method of a Runner: ``run``, ``async_run``, ``async_stream``.

    ``config`` is this runner's own copy of the method's ``RunnableMethodConfig``.
    ``max_batch_size``/``max_latency_ms`` are the effective values under the global config.
    Every call takes an optional ``_timeout=seconds`` keyword, removed before the method runs.
    """

    def __init__(self, runner: Runner, name: str, runnable_method: RunnableMethod) -> None:
        self.runner = runner
        self.name = name
        self.config: RunnableMethodConfig = runnable_method.config.copy()
        self.doc: str | None = runnable_method.__doc__
        self.kind = MethodKind.of(runnable_method.func)
        self.is_async = self.kind is MethodKind.ASYNC
        self.is_generator = self.kind is MethodKind.GEN
        self.is_async_generator = self.kind is MethodKind.AGEN

    @property
    def max_batch_size(self) -> int:
        return self.runner._method_batching(self.name, _config.get_config())[0]

    @property
    def max_latency_ms(self) -> float:
        return self.runner._method_batching(self.name, _config.get_config())[1]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        timeout = _pop_timeout(kwargs) if kwargs else None
        return self.runner._handle.run_method(self, args, kwargs, timeout)

    async def async_run(self, *args: Any, **kwargs: Any) -> Any:
        timeout = _pop_timeout(kwargs) if kwargs else None
        return await self.runner._handle.async_run_method(self, args, kwargs, timeout)

    def async_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Chunks of a (async) generator method as they come; other methods yield one result."""
        timeout = _pop_timeout(kwargs)
        return self.runner._handle.async_stream_method(self, args, kwargs, timeout)

    def __repr__(self) -> str:
        return f"<RunnerMethod {self.runner.name}.{self.name}>"


class Runner:
    """A named, configured Runnable whose methods can be called in-process (``init_local``) or
    across processes (``init_client``).

    Every resource/batching argument left as ``None`` comes from the configuration (see
    ``settings``). ``on_overload`` is ``"queue"`` or ``"reject"``; ``allow_pickle`` lets
    arguments the wire format does not know travel as pickle; ``batching_enabled=False``
    turns off adaptive batching for this runner.
    """

    def __init__(
        self,
        runnable_class: type[Runnable],
        *,
        runnable_init_params: Mapping[str, Any] | None = None,
        name: str | None = None,
        scheduling_strategy: type[Strategy] = DefaultStrategy,
        models: list[Any] | None = None,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        method_configs: Mapping[str, Mapping[str, Any]] | None = None,
        cpu: float | str | None = None,
        nvidia_gpu: int | list[int] | str | None = None,
        workers_per_resource: int | float | None = None,
        timeout: float | None = None,
        on_overload: str | None = None,
        allow_pickle: bool | None = None,
        batching_enabled: bool | None = None,
    ) -> None:
        if not (isinstance(runnable_class, type) and issubclass(runnable_class, Runnable)):
            raise TypeError(f"runnable_class must be a Runnable subclass, got {runnable_class!r}")
        self.runnable_class = runnable_class
        self.name = validate_name(name, runnable_class)
        self.runnable_init_params: dict[str, Any] = dict(runnable_init_params or {})
        self.scheduling_strategy = scheduling_strategy
        self.models: list[Any] = list(models or [])

        key = f"Runner({self.name!r})"
        self._max_batch_size = _check_positive(
            max_batch_size, f"{key}.max_batch_size", integer=True
        )
        self._max_latency_ms = _check_positive(max_latency_ms, f"{key}.max_latency_ms", zero=True)
        self._timeout = _check_positive(timeout, f"{key}.timeout")
        self._workers_per_resource = _check_positive(
            workers_per_resource, f"{key}.workers_per_resource"
        )
        parse_cpu(cpu, f"{key}.cpu")
        parse_nvidia_gpu(nvidia_gpu, f"{key}.nvidia_gpu")
        self._cpu = cpu
        self._nvidia_gpu = copy.copy(nvidia_gpu)
        if on_overload is not None and on_overload not in ON_OVERLOAD:
            raise ConfigError(
                f"{key}.on_overload: expected one of {', '.join(map(repr, ON_OVERLOAD))}, got "
                f"{on_overload!r}"
            )
        self._on_overload: OnOverload | None = on_overload  # type: ignore[assignment]
        for flag, value in (("allow_pickle", allow_pickle), ("batching_enabled", batching_enabled)):
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{key}.{flag}: expected a bool, got {value!r}")
        self._allow_pickle = allow_pickle
        self._batching_enabled = batching_enabled

        runnable_methods = runnable_class.runnable_methods()
        if not runnable_methods:
            raise ValueError(
                f"{runnable_class.__qualname__} has no methods: mark at least one with "
                "@Runnable.method"
            )
        self._method_configs: dict[str, dict[str, Any]] = {}
        for mname, mconf in (method_configs or {}).items():
            if mname not in runnable_methods:
                raise ConfigError(
                    f"{key}.method_configs: {mname!r} is not a method of "
                    f"{runnable_class.__qualname__} (methods: {', '.join(runnable_methods)})"
                )
            unknown = set(mconf) - _METHOD_CONFIG_KEYS
            if unknown:
                raise ConfigError(
                    f"{key}.method_configs.{mname}: unknown key(s) {sorted(unknown)}; "
                    f"expected {sorted(_METHOD_CONFIG_KEYS)}"
                )
            _check_positive(
                mconf.get("max_batch_size"), f"{key}.method_configs.{mname}.max_batch_size",
                integer=True,
            )
            _check_positive(
                mconf.get("max_latency_ms"), f"{key}.method_configs.{mname}.max_latency_ms",
                zero=True,
            )
            self._method_configs[mname] = dict(mconf)

        self.methods: dict[str, RunnerMethod] = {}
        for mname, rm in runnable_methods.items():
            method = RunnerMethod(self, mname, rm)
            self.methods[mname] = method
            if mname.startswith("_"):
                continue
            if hasattr(type(self), mname) or mname in self.__dict__:
                logger.warning(
                    "method %r of %s shadows a Runner attribute; use runner.methods[%r]",
                    mname, runnable_class.__qualname__, mname,
                )
                continue
            setattr(self, mname, method)

        if len(self.methods) == 1:
            self._default: RunnerMethod | None = next(iter(self.methods.values()))
        else:
            self._default = self.methods.get("__call__")
        self._handle: RunnerHandle = UninitializedHandle(self.name)

    # ----------------------------------------------------------------------- method access

    def __getattr__(self, name: str) -> RunnerMethod:
        # Only reached when normal lookup fails: methods that could not be set as attributes,
        # and a clear message for everything else.
        methods = self.__dict__.get("methods")
        if methods is not None and name in methods:
            return methods[name]  # type: ignore[no-any-return]
        if methods is not None and name in ("run", "async_run", "async_stream"):
            raise AttributeError(self._no_default_message(name))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _no_default_message(self, attr: str) -> str:
        return (
            f"runner {self.name!r} has no default method, so runner.{attr} does not exist: "
            f"{self.runnable_class.__qualname__} has several methods and none is __call__; "
            f"call one by name, e.g. runner.{next(iter(self.methods))}.{attr}(...) "
            f"(methods: {', '.join(self.methods)})"
        )

    def _default_method(self, attr: str) -> RunnerMethod:
        if self._default is None:
            raise AttributeError(self._no_default_message(attr))
        return self._default

    @property
    def run(self) -> Callable[..., Any]:
        """``run`` of the default method (the only method, else ``__call__``)."""
        return self._default_method("run").run

    @property
    def async_run(self) -> Callable[..., Any]:
        return self._default_method("async_run").async_run

    @property
    def async_stream(self) -> Callable[..., AsyncIterator[Any]]:
        return self._default_method("async_stream").async_stream

    # -------------------------------------------------------------------------- lifecycle

    @property
    def handle(self) -> RunnerHandle:
        return self._handle

    @property
    def initialized(self) -> bool:
        return not isinstance(self._handle, UninitializedHandle)

    def _check_uninitialized(self) -> None:
        if self.initialized:
            raise StateError(
                f"runner {self.name!r} is already initialised ({type(self._handle).__name__}); "
                "call runner.destroy() before initialising it again"
            )

    def _set_handle(self, handle: RunnerHandle) -> None:
        self._handle = handle

    def init_local(self, quiet: bool = False) -> None:
        """Build the Runnable now, in this process. For tests and debugging: resource
        settings, worker count and batching do not apply."""
        self._check_uninitialized()
        if not quiet:
            logger.warning(
                "Runner.init_local() of %r is for testing and debugging only: the Runnable "
                "runs in this process, without workers, resource settings or batching",
                self.name,
            )
        self._set_handle(LocalHandle(self))

    def init_client(self, *, spawn: bool = True, timeout: float | None = None) -> None:
        """Attach to the server running this runner (starting one if ``spawn``)."""
        self._check_uninitialized()
        from runnerlib._shm.client import ShmHandle
        from runnerlib._shm.supervisor import spawn_embedded

        self._set_handle(ShmHandle(self, spawn=spawn_embedded if spawn else None,
                                   timeout=timeout))

    def destroy(self) -> None:
        """Release the handle; the runner can be initialised again afterwards."""
        handle, self._handle = self._handle, UninitializedHandle(self.name)
        handle.destroy()

    async def runner_handle_is_ready(self, timeout: float = 30.0) -> bool:
        """Readiness probe: True once calls can be served (False before init)."""
        return await self._handle.is_ready(timeout)

    def __getstate__(self) -> dict[str, Any]:
        # A handle (threads, shared memory) never travels; the copy starts uninitialised.
        state = self.__dict__.copy()
        state["_handle"] = UninitializedHandle(self.name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for method in self.methods.values():
            method.runner = self

    def __repr__(self) -> str:
        return (
            f"<Runner {self.name!r} of {self.runnable_class.__qualname__}, "
            f"{type(self._handle).__name__}>"
        )

    # ---------------------------------------------------------------------------- settings

    def _entries(
        self, config: _config.Config
    ) -> tuple[_config.RunnerConfig, _config.RunnerConfig]:
        return config.runner(self.name) or _config.RunnerConfig(), config.runner_defaults

    def _method_batching(self, method: str, config: _config.Config) -> tuple[int, float]:
        """(max_batch_size, max_latency_ms) of ``method`` through the precedence chain."""
        entry, defaults = self._entries(config)
        code = self._method_configs.get(method, {})
        m_entry, m_default = entry.method(method), defaults.method(method)
        size = _first(
            code.get("max_batch_size"),
            self._max_batch_size,
            m_entry.max_batch_size if m_entry else None,
            entry.batch_size(),
            m_default.max_batch_size if m_default else None,
            defaults.batch_size(),
            _config.DEFAULT_MAX_BATCH_SIZE,
        )
        latency = _first(
            code.get("max_latency_ms"),
            self._max_latency_ms,
            m_entry.max_latency_ms if m_entry else None,
            entry.latency_ms(),
            m_default.max_latency_ms if m_default else None,
            defaults.latency_ms(),
            _config.DEFAULT_MAX_LATENCY_MS,
        )
        return int(size), float(latency)

    def _effective_timeout(self, config: _config.Config | None = None) -> float:
        entry, defaults = self._entries(config or _config.get_config())
        return float(
            _first(self._timeout, entry.timeout, defaults.timeout, _config.DEFAULT_TIMEOUT)
        )

    def settings(
        self, config: _config.Config | str | os.PathLike[str] | Mapping[str, Any] | None = None
    ) -> RunnerSettings:
        """Effective settings under ``config`` (default: the global configuration).

        Precedence, highest first: ``method_configs`` in code, ``Runner(...)`` arguments, the
        method entry in the file, the runner entry, ``runner_defaults``, built-in defaults.
        Raises ``ConfigError`` for a GPU request the host cannot meet.
        """
        if config is None:
            cfg = _config.get_config()
        elif isinstance(config, _config.Config):
            cfg = config
        else:
            cfg = _config.load_config(config)
        entry, defaults = self._entries(cfg)
        if isinstance(entry.runnable_method_configs, dict):
            for mname in entry.runnable_method_configs:
                if mname not in self.methods:
                    logger.warning(
                        "config: runners.%s.runnable_method_configs names %r, which is not a "
                        "method of %s (methods: %s)",
                        self.name, mname, self.runnable_class.__qualname__,
                        ", ".join(self.methods),
                    )

        def pick(attr: str, code: Any, default: Any) -> Any:
            return _first(code, getattr(entry, attr), getattr(defaults, attr), default)

        batching_enabled = bool(
            _first(
                self._batching_enabled,
                entry.batching_enabled(),
                defaults.batching_enabled(),
                _config.DEFAULT_BATCHING_ENABLED,
            )
        )
        wpr = pick(
            "workers_per_resource", self._workers_per_resource,
            _config.DEFAULT_WORKERS_PER_RESOURCE,
        )
        if isinstance(wpr, float) and wpr.is_integer():
            wpr = int(wpr)
        # the request as the user gave it (what BentoML hands a strategy), and read for us
        asked = _config.resource_request(entry, defaults, self._cpu, self._nvidia_gpu)
        request = resolve_resource_request(asked, owner=f"runners.{self.name}")
        methods: dict[str, MethodSpec] = {}
        for mname, method in self.methods.items():
            size, latency = self._method_batching(mname, cfg)
            methods[mname] = MethodSpec(
                name=mname,
                kind=method.kind,
                batchable=method.config.batchable and batching_enabled,
                batch_dim_in=method.config.batch_dim[0],
                batch_dim_out=method.config.batch_dim[1],
                max_batch_size=size,
                max_latency_ms=latency,
            )
        strategy = self.scheduling_strategy
        count = int(strategy.get_worker_count(self.runnable_class, copy.deepcopy(asked), wpr))
        env = {
            i: {str(k): str(v) for k, v in strategy.get_worker_env(
                self.runnable_class, copy.deepcopy(asked), wpr, i).items()}
            for i in range(count)
        }
        return RunnerSettings(
            name=self.name,
            class_ref=class_ref(self.runnable_class),
            cpu=float(request["cpu"]),
            nvidia_gpu=list(request[GPU]),
            workers_per_resource=wpr,
            timeout=self._effective_timeout(cfg),
            batching_enabled=batching_enabled,
            on_overload=pick("on_overload", self._on_overload, _config.DEFAULT_ON_OVERLOAD),
            allow_pickle=bool(
                pick("allow_pickle", self._allow_pickle, _config.DEFAULT_ALLOW_PICKLE)
            ),
            methods=methods,
            worker_count=count,
            worker_env=env,
        )

    def client_settings(self, config: _config.Config | None = None) -> ClientSettings:
        """What a client of this runner needs (timeout, pickle), without scheduling workers."""
        cfg = config or _config.get_config()
        entry, defaults = self._entries(cfg)
        allow_pickle = _first(self._allow_pickle, entry.allow_pickle, defaults.allow_pickle,
                              _config.DEFAULT_ALLOW_PICKLE)
        return ClientSettings(timeout=self._effective_timeout(cfg), allow_pickle=bool(allow_pickle))

    @property
    def scheduled_worker_count(self) -> int:
        """Workers the scheduling strategy gives this runner under the global config."""
        return self.settings().worker_count

    @property
    def scheduled_worker_env_map(self) -> dict[int, dict[str, str]]:
        """``{worker_index: environment}`` under the global config."""
        return self.settings().worker_env
