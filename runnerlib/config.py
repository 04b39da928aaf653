"""Runner configuration files (SPEC section 4): read, validate, override, look up.

A file (YAML, TOML or JSON, chosen by extension) holds ``runners`` (a list of entries with a
``name``, as in BentoML's documents, or a mapping keyed by name) and ``runner_defaults``.
Validation is msgspec's, but errors are re-worded to name the key the way the user wrote it
(``runners[1].max_batch_size: expected int, got str``). ``RUNNERLIB_CONFIG_OPTIONS`` overrides
single keys on top of the file. The precedence chain itself is applied by ``Runner.settings``.

BentoML's own file (``bentoml_configuration.yaml``) loads as it is:

- ``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the environment (an
  unset variable without a default gives ``""``); a value that is one such expression and
  nothing else is then read as a YAML scalar, so ``cpu: ${CPUS:-2}`` is the number 2.
- under ``runners:``, the keys BentoML reads as settings of every runner (``batching``,
  ``resources``, ``workers_per_resource``, ``timeout``, ``traffic``, ``logging``, ``metrics``)
  go to ``runner_defaults``; every other key is a runner's name. (So, as in BentoML, a runner
  cannot be named like one of those keys in the mapping form; the list form has no such
  limit.)
- a runner's ``resources:`` (``{cpu: 4, nvidia.com/gpu: [0, 1]}`` or ``system``) is its
  resource request, handed to the scheduling strategy as BentoML hands it;
  ``traffic.timeout`` is its ``timeout``; ``traffic.max_concurrency``, ``logging`` and
  ``metrics`` are accepted and not used (runnerlib has no HTTP hop to limit or log).
- BentoML's other top-level sections (``version``, ``api_server``, ``tracing``,
  ``monitoring``, ``services``, ``logging``) are accepted and ignored.

``BENTOML_CONFIG`` and ``BENTOML_CONFIG_OPTIONS`` are read when ``RUNNERLIB_CONFIG`` /
``RUNNERLIB_CONFIG_OPTIONS`` are unset.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml

from batching.assembler import OnOverload
from runnerlib.errors import ConfigError
from runnerlib.resources import GPU, parse_cpu, parse_nvidia_gpu

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_LATENCY_MS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WORKERS_PER_RESOURCE",
    "DEFAULT_ON_OVERLOAD",
    "DEFAULT_ALLOW_PICKLE",
    "DEFAULT_BATCHING_ENABLED",
    "CONFIG_ENV",
    "OPTIONS_ENV",
    "SHM_BUDGET_ENV",
    "BENTOML_CONFIG_ENV",
    "BENTOML_OPTIONS_ENV",
    "MethodConfig",
    "BatchingConfig",
    "TrafficConfig",
    "RunnerConfig",
    "Config",
    "parse_config",
    "read_config_file",
    "apply_options",
    "load_config",
    "get_config",
    "expand_env_vars",
    "resource_request",
    "parse_size",
    "shm_budget",
]

logger = logging.getLogger("runnerlib")

# Built-in defaults: the last link of the precedence chain (BentoML's values).
DEFAULT_MAX_BATCH_SIZE = 100
DEFAULT_MAX_LATENCY_MS = 60_000.0
DEFAULT_TIMEOUT = 900.0
DEFAULT_WORKERS_PER_RESOURCE = 1
DEFAULT_ON_OVERLOAD: OnOverload = "queue"
DEFAULT_ALLOW_PICKLE = True
DEFAULT_BATCHING_ENABLED = True

CONFIG_ENV = "RUNNERLIB_CONFIG"
OPTIONS_ENV = "RUNNERLIB_CONFIG_OPTIONS"
BENTOML_CONFIG_ENV = "BENTOML_CONFIG"
"""Read when ``RUNNERLIB_CONFIG`` is unset, so a BentoML deployment's setting carries over."""
BENTOML_OPTIONS_ENV = "BENTOML_CONFIG_OPTIONS"
SHM_BUDGET_ENV = "RUNNERLIB_SHM_BUDGET"
"""Bytes of shared memory a server and its clients may use (overrides ``shm_budget``)."""

# BentoML's per-runner keys that may also appear directly under ``runners:`` (for every runner)
BENTOML_RUNNER_KEYS = frozenset(
    {"batching", "resources", "workers_per_resource", "timeout", "traffic", "logging", "metrics"}
)
# BentoML's top-level sections other than ``runners``: accepted, not used
BENTOML_TOP_KEYS = frozenset(
    {"version", "api_server", "tracing", "monitoring", "services", "logging"}
)

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]


class MethodConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One entry of ``runnable_method_configs``; ``None`` means "not set here"."""

    name: str | None = None
    max_batch_size: PositiveInt | None = None
    max_latency_ms: NonNegativeFloat | None = None


class BatchingConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """``batching:`` block of a runner (BentoML 1.x form)."""

    enabled: bool | None = None
    max_batch_size: PositiveInt | None = None
    max_latency_ms: NonNegativeFloat | None = None


class TrafficConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """``traffic:`` block of a runner (BentoML form): ``timeout`` is the runner's timeout."""

    timeout: PositiveFloat | None = None
    max_concurrency: PositiveInt | None = None


class RunnerConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """One runner's entry, or the ``runner_defaults`` block; ``None`` means "not set here".

    After ``parse_config``, ``runnable_method_configs`` is always a dict keyed by method name.
    """

    name: str | None = None
    cpu: float | str | None = None
    nvidia_gpu: int | list[int] | str | None = None
    workers_per_resource: PositiveInt | PositiveFloat | None = None
    timeout: PositiveFloat | None = None
    max_batch_size: PositiveInt | None = None
    max_latency_ms: NonNegativeFloat | None = None
    batching: BatchingConfig | None = None
    on_overload: OnOverload | None = None
    allow_pickle: bool | None = None
    resources: dict[str, Any] | str | None = None
    """BentoML's resource request (``{"cpu": 4, "nvidia.com/gpu": 1}`` or ``"system"``)."""
    traffic: TrafficConfig | None = None
    logging: dict[str, Any] | None = None
    """BentoML's access-log settings: accepted, not used."""
    metrics: dict[str, Any] | None = None
    """BentoML's metrics settings: accepted, not used."""
    runnable_method_configs: dict[str, MethodConfig] | list[MethodConfig] = msgspec.field(
        default_factory=dict
    )

    def method(self, name: str) -> MethodConfig | None:
        methods = self.runnable_method_configs
        if isinstance(methods, dict):
            return methods.get(name)
        if isinstance(methods, list):
            return next((m for m in methods if m.name == name), None)
        return None

    def batch_size(self) -> int | None:
        """``max_batch_size`` set on this entry, either at top level or under ``batching``."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return self.batching.max_batch_size if self.batching else None

    def latency_ms(self) -> float | None:
        if self.max_latency_ms is not None:
            return self.max_latency_ms
        return self.batching.max_latency_ms if self.batching else None

    def batching_enabled(self) -> bool | None:
        return self.batching.enabled if self.batching else None


class Config(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """A whole validated configuration, in mapping form (runners keyed by name)."""

    runners: dict[str, RunnerConfig] = msgspec.field(default_factory=dict)
    runner_defaults: RunnerConfig = msgspec.field(default_factory=RunnerConfig)
    #: bytes of shared memory a server and its clients may use; None: follow /dev/shm
    shm_budget: int | None = None

    def runner(self, name: str) -> RunnerConfig | None:
        return self.runners.get(name)


_RUNNER_FIELDS = frozenset(RunnerConfig.__struct_fields__)
_TOP_FIELDS = ("runners", "runner_defaults", "shm_budget")
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<where>[^`]*)`)?$", re.S)


def _reword(exc: msgspec.ValidationError, prefix: str) -> str:
    """msgspec's "Expected `int | null`, got `str` - at `$.x`" → "prefix.x: expected int, got
    str"."""
    m = _AT.match(str(exc))
    msg, where = (m.group("msg"), m.group("where") or "") if m else (str(exc), "")
    path = prefix + where
    unknown = re.match(r"Object contains unknown field `([^`]*)`", msg)
    missing = re.match(r"Object missing required field `([^`]*)`", msg)
    if unknown:
        path, msg = f"{path}.{unknown.group(1)}", "unknown key"
    elif missing:
        path, msg = f"{path}.{missing.group(1)}", "required key missing"
    else:
        msg = msg.replace(" | null", "").replace("`", "")
        msg = msg[:1].lower() + msg[1:]
    return f"{path}: {msg}"


def _err(message: str, source: str | None) -> ConfigError:
    return ConfigError(f"{message} (in {source})" if source else message)


def _convert(data: Any, typ: type[Any], path: str, source: str | None) -> Any:
    if not isinstance(data, Mapping):
        raise _err(f"{path}: expected a mapping, got {type(data).__name__}", source)
    try:
        return msgspec.convert(dict(data), typ)
    except msgspec.ValidationError as exc:
        raise _err(_reword(exc, path), source) from None


def _parse_runner(data: Any, path: str, source: str | None) -> RunnerConfig:
    if not isinstance(data, Mapping):
        raise _err(f"{path}: expected a mapping, got {type(data).__name__}", source)
    body = dict(data)
    methods_raw = body.pop("runnable_method_configs", None)
    entry: RunnerConfig = _convert(body, RunnerConfig, path, source)
    methods: dict[str, MethodConfig] = {}
    mpath = f"{path}.runnable_method_configs"
    if isinstance(methods_raw, list):
        for i, item in enumerate(methods_raw):
            m: MethodConfig = _convert(item, MethodConfig, f"{mpath}[{i}]", source)
            if not m.name:
                raise _err(f"{mpath}[{i}].name: required key missing", source)
            if m.name in methods:
                raise _err(f"{mpath}[{i}].name: method {m.name!r} is listed twice", source)
            methods[m.name] = m
    elif isinstance(methods_raw, Mapping):
        for key, item in methods_raw.items():
            m = _convert(item if item is not None else {}, MethodConfig, f"{mpath}.{key}", source)
            if m.name is not None and m.name != key:
                raise _err(f"{mpath}.{key}.name: {m.name!r} differs from its key", source)
            m.name = str(key)
            methods[str(key)] = m
    elif methods_raw is not None:
        kind = type(methods_raw).__name__
        raise _err(f"{mpath}: expected a list or a mapping, got {kind}", source)
    entry.runnable_method_configs = methods
    try:
        parse_cpu(entry.cpu, f"{path}.cpu")
        parse_nvidia_gpu(entry.nvidia_gpu, f"{path}.nvidia_gpu", bentoml=True)
    except ConfigError as exc:
        raise _err(str(exc), source) from None
    _check_resources(entry, path, source)
    if entry.traffic is not None and entry.traffic.timeout is not None:
        if entry.timeout is not None and entry.timeout != entry.traffic.timeout:
            raise _err(f"{path}.timeout: {entry.timeout:g} differs from {path}.traffic.timeout "
                       f"{entry.traffic.timeout:g}", source)
        entry.timeout = entry.traffic.timeout
    for key in ("max_batch_size", "max_latency_ms"):
        top, inner = getattr(entry, key), getattr(entry.batching, key, None)
        if top is not None and inner is not None and top != inner:
            raise _err(f"{path}.{key}: {top} differs from {path}.batching.{key} {inner}", source)
    return entry


def _check_resources(entry: RunnerConfig, path: str, source: str | None) -> None:
    res = entry.resources
    if res is None:
        return
    if isinstance(res, str):
        if res != "system":
            raise _err(f"{path}.resources: expected a mapping or 'system', got {res!r}", source)
        if entry.cpu is not None or entry.nvidia_gpu is not None:
            raise _err(f"{path}.resources: 'system' conflicts with {path}.cpu/nvidia_gpu; "
                       "give one or the other", source)
        return
    for key in res:
        if not isinstance(key, str):
            raise _err(f"{path}.resources: resource names are strings, got {key!r}", source)
    try:
        if "cpu" in res:
            parse_cpu(res["cpu"], f"{path}.resources.cpu")
        if GPU in res:
            parse_nvidia_gpu(res[GPU], f"{path}.resources.{GPU}", bentoml=True)
    except ConfigError as exc:
        raise _err(str(exc), source) from None
    for mine, theirs in (("cpu", "cpu"), ("nvidia_gpu", GPU)):
        if getattr(entry, mine) is not None and theirs in res:
            raise _err(f"{path}.{mine}: also given as {path}.resources.{theirs}; give one or "
                       "the other", source)


def _split_bentoml_runners(raw: Mapping[str, Any], source: str | None
                           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """BentoML's ``runners:`` mapping: (settings for every runner, entries by runner name)."""
    shared = {k: v for k, v in raw.items() if k in BENTOML_RUNNER_KEYS}
    named = {k: v for k, v in raw.items() if k not in BENTOML_RUNNER_KEYS}
    return shared, named


_ENV_VAR = re.compile(r"\$\{(?P<name>.+?)(?::-(?P<default>.+?))?\}")
_ONLY_ENV_VAR = re.compile(r"^\$\{[^${}]+\}$")


def _expand_value(value: str) -> Any:
    if "${" not in value:
        return value
    expanded = _ENV_VAR.sub(
        lambda m: os.environ.get(m.group("name"), m.group("default") or ""), value
    )
    if _ONLY_ENV_VAR.match(value.strip()):
        try:
            scalar = yaml.safe_load(expanded) if expanded.strip() else None
        except yaml.YAMLError:
            return expanded
        if scalar is None or isinstance(scalar, (bool, int, float, str)):
            return scalar
    return expanded


def expand_env_vars(data: Any) -> Any:
    """``${VAR}`` and ``${VAR:-default}`` in every string value (not in keys), as BentoML
    expands its configuration; see the module docstring."""
    if isinstance(data, str):
        return _expand_value(data)
    if isinstance(data, Mapping):
        return {k: expand_env_vars(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [expand_env_vars(v) for v in data]
    return data


def parse_config(data: Any, *, source: str | None = None) -> Config:
    """Validate already-loaded data (list or mapping form) into a ``Config`` in mapping form."""
    if data is None:
        data = {}
    if isinstance(data, Config):
        return data
    if not isinstance(data, Mapping):
        raise _err(f"top level: expected a mapping, got {type(data).__name__}", source)
    for key in data:
        if key not in _TOP_FIELDS and key not in BENTOML_TOP_KEYS:
            raise _err(f"{key}: unknown key (expected one of {', '.join(_TOP_FIELDS)}, or a "
                       "section of BentoML's configuration file)", source)
    ignored = sorted(k for k in data if k in BENTOML_TOP_KEYS)
    if ignored:
        logger.debug("config: BentoML section(s) %s not used by runnerlib", ", ".join(ignored))
    runners: dict[str, RunnerConfig] = {}
    raw = data.get("runners")
    shared: dict[str, Any] = {}
    if isinstance(raw, Mapping):
        shared, raw = _split_bentoml_runners(raw, source)
    if isinstance(raw, list):
        for i, item in enumerate(raw):
            entry = _parse_runner(item, f"runners[{i}]", source)
            if not entry.name:
                raise _err(f"runners[{i}].name: required key missing", source)
            if entry.name in runners:
                raise _err(f"runners[{i}].name: runner {entry.name!r} is listed twice", source)
            runners[entry.name] = entry
    elif isinstance(raw, Mapping):
        for key, item in raw.items():
            entry = _parse_runner(item if item is not None else {}, f"runners.{key}", source)
            if entry.name is not None and entry.name != key:
                raise _err(f"runners.{key}.name: {entry.name!r} differs from its key", source)
            entry.name = str(key)
            runners[str(key)] = entry
    elif raw is not None:
        raise _err(f"runners: expected a list or a mapping, got {type(raw).__name__}", source)
    raw_defaults = data.get("runner_defaults") or {}
    if shared:
        if not isinstance(raw_defaults, Mapping):
            raise _err(f"runner_defaults: expected a mapping, got {type(raw_defaults).__name__}",
                       source)
        _parse_runner(shared, "runners", source)  # errors name the keys where they were written
        both = sorted(set(shared) & set(raw_defaults))
        if both:
            raise _err(f"runners.{both[0]}: also given as runner_defaults.{both[0]}; give one "
                       "or the other", source)
        raw_defaults = {**shared, **raw_defaults}
    defaults = _parse_runner(raw_defaults, "runner_defaults", source)
    if defaults.name is not None:
        raise _err("runner_defaults.name: unknown key", source)
    budget = data.get("shm_budget")
    if budget is not None:
        try:
            budget = parse_size(budget)
        except ValueError as exc:
            raise _err(f"shm_budget: {exc}", source) from None
    return Config(runners=runners, runner_defaults=defaults, shm_budget=budget)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.I)
_SIZE_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"67108864"``, ``"64Mi"``, ``"512MiB"`` or
    ``"1G"``: ``Ki Mi Gi Ti`` (or ``KiB``...) are powers of 1024, ``K M G T`` (or ``KB``...)
    powers of 1000, as in Kubernetes quantities. ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size in bytes (64Mi, 1G, 1073741824), got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)) and (
        m.group(2) or not (m.group(3) or m.group(4)) or m.group(4) and not m.group(3)
    ):
        base = 1024 if m.group(3) else 1000
        n = int(float(m.group(1)) * base ** _SIZE_POWER[m.group(2).lower()])
    else:
        raise ValueError(f"expected a size in bytes (64Mi, 512MiB, 1G or a number of bytes), "
                         f"got {value!r}")
    if n < 1:
        raise ValueError(f"a size must be positive, got {value!r}")
    return n


def shm_budget(config: Config | None = None) -> int | None:
    """The shared-memory budget set by ``$RUNNERLIB_SHM_BUDGET`` (which wins) or the
    configuration's ``shm_budget`` (default: the global configuration); None when neither
    sets one (the server then follows what /dev/shm can hold)."""
    raw = os.environ.get(SHM_BUDGET_ENV, "").strip()
    if raw:
        try:
            return parse_size(raw)
        except ValueError as exc:
            raise ConfigError(f"{SHM_BUDGET_ENV}={raw!r}: {exc}") from None
    return (config if config is not None else get_config()).shm_budget


def read_config_file(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError(f"{p}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p}: not valid {suffix[1:].upper()}: {exc}") from None
    return parse_config(expand_env_vars(data), source=str(p))


def _option_path(key: str) -> list[str]:
    """Split a dotted key; a runner name may itself hold dots, so it runs up to the first part
    that is a runner field."""
    parts = key.split(".")
    if parts[0] == "runner_defaults":
        return _resources_tail(parts, 1)
    if parts[0] != "runners" or len(parts) < 3:
        return parts
    for j in range(2, len(parts)):
        if parts[j] in _RUNNER_FIELDS:
            return _resources_tail(["runners", ".".join(parts[1:j]), *parts[j:]], 2)
    return parts  # no known key: validation will name the unknown one


def _resources_tail(path: list[str], field: int) -> list[str]:
    """``...resources.nvidia.com/gpu``: the resource name keeps its dots."""
    if len(path) > field + 2 and path[field] == "resources":
        return [*path[: field + 1], ".".join(path[field + 1 :])]
    return path


def apply_options(config: Config, options: str, *, source: str = OPTIONS_ENV) -> Config:
    """Override single keys: ``"runners.iris_clf.max_batch_size=8 runner_defaults.timeout=5"``.

    Values are read as YAML scalars (``8`` is an int, ``false`` a bool, ``[0, 1]`` a list);
    an empty value unsets the key. Items are separated by whitespace (shell quoting applies).
    """
    data: dict[str, Any] = msgspec.to_builtins(config)
    try:
        items = shlex.split(options)
    except ValueError as exc:
        raise ConfigError(f"{source}: cannot split {options!r}: {exc}") from None
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: {item!r} is not KEY=VALUE")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: {item!r}: bad value: {exc}") from None
        value = expand_env_vars(value)
        node: dict[str, Any] = data
        path = _option_path(key)
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"{source}: {item!r}: {where} is not a mapping")
            node = child
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
        try:
            parse_config(data)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from {source} {item!r})") from None
    return parse_config(data)


def load_config(
    path: str | os.PathLike[str] | Config | Mapping[str, Any] | None = None,
    *,
    options: str | None = None,
) -> Config:
    """The configuration to use: ``path`` (a file, a mapping or a ``Config``; default
    ``$RUNNERLIB_CONFIG``, else empty) with ``options`` (default ``$RUNNERLIB_CONFIG_OPTIONS``)
    applied on top."""
    if path is None:
        path = _env_path()
    if options is None:
        options = _env_options()
    if path is None:
        config = Config()
    elif isinstance(path, Config):
        config = path
    elif isinstance(path, Mapping):
        config = parse_config(path, source="config mapping")
    else:
        config = read_config_file(path)
    if options.strip():
        config = apply_options(config, options)
    return config


def _env_path() -> str | None:
    return os.environ.get(CONFIG_ENV) or os.environ.get(BENTOML_CONFIG_ENV) or None


def _env_options() -> str:
    if OPTIONS_ENV in os.environ:
        return os.environ[OPTIONS_ENV]
    return os.environ.get(BENTOML_OPTIONS_ENV, "")


_cache: tuple[tuple[Any, ...], Config] | None = None


def get_config() -> Config:
    """The global configuration (``$RUNNERLIB_CONFIG`` + ``$RUNNERLIB_CONFIG_OPTIONS``),
    re-read whenever either variable or the file's modification time changes."""
    global _cache
    path = _env_path()
    options = _env_options()
    mtime = None
    if path is not None:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            mtime = None
    key = (path, mtime, options)
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    config = load_config(path, options=options)
    _cache = (key, config)
    return config


def resource_request(
    entry: RunnerConfig, defaults: RunnerConfig, cpu: Any = None, nvidia_gpu: Any = None
) -> dict[str, Any] | None:
    """A runner's resource request as the user gave it, in the shape BentoML hands a
    scheduling strategy: ``None`` when nothing is asked (everything the host has), else a
    mapping with ``"cpu"`` and ``"nvidia.com/gpu"`` keys holding the values as written.

    Layers, highest first: ``cpu``/``nvidia_gpu`` given in code, the runner's entry, then
    ``runner_defaults``; in each, ``cpu``/``nvidia_gpu`` or a BentoML ``resources:`` block
    (merged key by key, as BentoML merges its defaults into each runner). When a BentoML
    ``resources:`` block takes part, a resource it leaves out is not requested (BentoML's
    rule: ``resources: {cpu: 4}`` schedules no GPU); otherwise an unset resource is
    ``"system"``, what the host has (runnerlib's rule for ``cpu=``/``nvidia_gpu=``).
    """
    request: dict[str, Any] = {}
    bentoml_block = False
    for cpu_value, gpu_value, block in (
        (defaults.cpu, defaults.nvidia_gpu, defaults.resources),
        (entry.cpu, entry.nvidia_gpu, entry.resources),
        (cpu, nvidia_gpu, None),
    ):
        if block == "system":
            bentoml_block = True
            request.update({"cpu": "system", GPU: "system"})
        elif isinstance(block, Mapping):
            bentoml_block = True
            request.update(block)
        if cpu_value is not None:
            request["cpu"] = cpu_value
        if gpu_value is not None:
            request[GPU] = gpu_value
    if not bentoml_block:
        if not request:
            return None
        request.setdefault("cpu", "system")
        request.setdefault(GPU, "system")
    if request and all(request.get(k) == "system" for k in request):
        return None
    return request
