"""The local model store: saved models by tag (``name:version``), on disk, shared by processes.

Layout: ``$RUNNERLIB_HOME/models/<name>/<version>/`` holds the model's files and
``model.json`` (framework, signatures, options, user metadata, library versions, creation
time). ``RUNNERLIB_HOME`` defaults to ``~/.runnerlib`` and is read at each call, so a process
that sets it before its first store call (a test, a worker started with it in its
environment) sees that store.

A save writes into a private temporary directory beside the versions and publishes it with one
``rename``; a delete moves the version out of the way with one ``rename`` before removing it.
Readers never see a half-written version, and processes saving the same name at once each get
their own version.

Framework modules (``runnerlib.pytorch``, ``runnerlib.sklearn``, ``runnerlib.picklable_model``)
save through ``ModelStore.save`` and turn a ``Model`` into a Runner (``Model.to_runner``).

BentoML's model store calls port as they are: ``save_model(..., custom_objects=...,
external_modules=[...])`` and ``Model.custom_objects``, ``Model.with_options(...)``,
``runnerlib.models.create(...)`` (a context manager that publishes what its block wrote),
``get``/``list``/``delete``, and a module of your own as a framework (a ``module=`` with
``load_model(model, ...)`` and ``get_runnable(model)`` functions, as BentoML's custom
framework modules have). A tag that matches nothing raises ``ModelNotFound``, a
``runnerlib.errors.NotFound`` (BentoML's ``bentoml.exceptions.NotFound``).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import dataclasses
import datetime as _dt
import errno
import importlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from runnerlib.errors import NotFound, RunnerError

if TYPE_CHECKING:
    from runnerlib.runnable import Runnable
    from runnerlib.runner import Runner

__all__ = [
    "Tag",
    "Model",
    "ModelInfo",
    "ModelStore",
    "ModelNotFound",
    "ModelExists",
    "FrameworkMismatch",
    "ModelContext",
    "ModelOptions",
    "default_store",
    "store_root",
    "get",
    "list",
    "list_models",
    "delete",
    "save",
    "create",
]

METADATA_FILE = "model.json"
CUSTOM_OBJECTS_FILE = "custom_objects.pkl"
_NAME_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
_NAME_MAX = 63
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_SIGNATURE_KEYS = frozenset({"batchable", "batch_dim", "input_spec", "output_spec"})


class ModelNotFound(NotFound, LookupError):
    """No model in the store matches the tag; the message lists what the store holds."""


class FrameworkMismatch(NotFound, ValueError):
    """A framework module was asked for a model another framework saved (BentoML raises
    ``NotFound`` there too); the message names the module to use."""


class ModelExists(RunnerError, FileExistsError):
    """A version of that name already exists (only when a version is given explicitly)."""


def store_root() -> Path:
    """``$RUNNERLIB_HOME`` (default ``~/.runnerlib``): the store keeps models under ``models/``."""
    home = os.environ.get("RUNNERLIB_HOME")
    return Path(home).expanduser() if home else Path.home() / ".runnerlib"


def _check_part(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"model {what} must be a str, got {type(value).__name__}")
    lowered = value.lower()
    if len(lowered) > _NAME_MAX or not _NAME_RE.match(lowered):
        raise ValueError(
            f"invalid model {what} {value!r}: use at most {_NAME_MAX} lowercase letters, digits, "
            "'-', '.' and '_', starting and ending with a letter or digit"
        )
    return lowered


@dataclass(frozen=True)
class Tag:
    """``name:version``; a version of ``None`` (or ``"latest"``) means the newest one."""

    name: str
    version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _check_part(self.name, "name"))
        version = self.version
        if version is not None:
            version = _check_part(version, "version")
            if version == "latest":
                version = None
        object.__setattr__(self, "version", version)

    @classmethod
    def from_taglike(cls, tag: str | Tag | Model) -> Tag:
        if isinstance(tag, Tag):
            return tag
        if isinstance(tag, Model):
            return tag.tag
        if not isinstance(tag, str):
            raise TypeError(f"expected a tag 'name:version' (a str), got {type(tag).__name__}")
        name, sep, version = tag.partition(":")
        if sep and not version:
            raise ValueError(f"invalid tag {tag!r}: empty version (use 'name' or 'name:latest')")
        return cls(name, version or None)

    def __str__(self) -> str:
        return f"{self.name}:{self.version or 'latest'}"


def _new_version() -> str:
    """16 characters, lowercase, sortable by creation time (base32hex of microseconds + noise)."""
    raw = (time.time_ns() // 1000).to_bytes(8, "big") + secrets.token_bytes(2)
    return base64.b32hexencode(raw).decode().lower()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def normalize_signatures(
    signatures: Mapping[str, Mapping[str, Any]] | None, default: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Check signatures (``{method: {"batchable": bool, "batch_dim": int | [in, out]}}``) and fill
    in defaults: ``batchable`` False, ``batch_dim`` 0."""
    from runnerlib.runnable import _batch_dim

    sigs = dict(signatures) if signatures else dict(default)
    out: dict[str, dict[str, Any]] = {}
    for method, options in sigs.items():
        if not isinstance(method, str) or not method.isidentifier() or method.startswith("_rl_"):
            raise ValueError(
                f"signature name {method!r} must be a Python identifier naming a method of the "
                "model (and not start with '_rl_')"
            )
        options = dict(options or {})
        unknown = set(options) - _SIGNATURE_KEYS
        if unknown:
            raise ValueError(
                f"signature {method!r}: unknown option(s) {sorted(unknown)}; expected "
                f"{sorted(_SIGNATURE_KEYS)}"
            )
        batchable = options.get("batchable", False)
        if not isinstance(batchable, bool):
            raise TypeError(f"signature {method!r}: batchable must be a bool, got {batchable!r}")
        din, dout = _batch_dim(options.get("batch_dim", 0))
        entry: dict[str, Any] = {"batchable": batchable, "batch_dim": [din, dout]}
        for key in ("input_spec", "output_spec"):
            if options.get(key) is not None:
                entry[key] = options[key]
        out[method] = entry
    if not out:
        raise ValueError("a model needs at least one signature")
    return out


@dataclass(frozen=True)
class ModelContext:
    """BentoML's ``ModelContext``: which framework (and versions) saved a model."""

    framework_name: str = ""
    framework_versions: dict[str, str] = field(default_factory=dict)


class ModelOptions:
    """BentoML's ``ModelOptions``: a framework's options of a saved model, as attributes.

    ``ModelOptions(partial_kwargs={...})``; ``to_dict()`` gives them back as a mapping.
    """

    def __init__(self, **options: Any) -> None:
        self.__dict__.update(options)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def with_options(self, **options: Any) -> ModelOptions:
        return ModelOptions(**{**self.__dict__, **options})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelOptions) and other.__dict__ == self.__dict__

    def __repr__(self) -> str:
        return f"ModelOptions({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


def _options_dict(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if isinstance(options, ModelOptions):
        return options.to_dict()
    if dataclasses.is_dataclass(options) and not isinstance(options, type):
        return dataclasses.asdict(options)
    to_dict = getattr(options, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if isinstance(options, Mapping):
        return dict(options)
    raise TypeError(f"model options must be a ModelOptions or a mapping, got {options!r}")


@contextlib.contextmanager
def _pickle_by_value(modules: Sequence[ModuleType] | None) -> Iterator[Any]:
    """While saving: cloudpickle embeds these modules' classes and functions by value (as
    BentoML's ``external_modules=`` does), so loading needs no import of them. Yields the
    pickle module to save with (cloudpickle when installed, else pickle)."""
    try:
        import cloudpickle
    except ImportError:
        if modules:
            raise ImportError(
                "external_modules= needs cloudpickle: pip install cloudpickle"
            ) from None
        import pickle

        yield pickle
        return
    registered: builtins.list[ModuleType] = []
    try:
        already = set(cloudpickle.list_registry_pickle_by_value())
        for mod in modules or ():
            if not isinstance(mod, ModuleType):
                raise TypeError(f"external_modules: expected modules, got {mod!r}")
            if mod.__name__ not in already:
                cloudpickle.register_pickle_by_value(mod)
                registered.append(mod)
        yield cloudpickle
    finally:
        for mod in registered:
            cloudpickle.unregister_pickle_by_value(mod)


@dataclass
class ModelInfo:
    """What ``model.json`` holds."""

    name: str
    version: str
    module: str
    """The framework module that saved the model and loads it (e.g. ``runnerlib.pytorch``)."""
    framework: str
    signatures: dict[str, dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    framework_versions: dict[str, str] = field(default_factory=dict)
    python_version: str = ""
    runnerlib_version: str = ""
    creation_time: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


class Model:
    """One saved model version: its tag, directory and metadata.

    Pickles as its directory, so it can travel to worker processes in
    ``runnable_init_params``.
    """

    def __init__(
        self, path: str | os.PathLike[str], info: ModelInfo,
        custom_objects: dict[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.info = info
        self.tag = Tag(info.name, info.version)
        self._custom_objects = custom_objects
        self._options: dict[str, Any] = dict(options or {})
        """In-memory options of ``with_options``, over the saved ``info.options``."""

    @classmethod
    def from_path(cls, path: str | os.PathLike[str],
                  options: Mapping[str, Any] | None = None) -> Model:
        p = Path(path)
        with open(p / METADATA_FILE, encoding="utf-8") as f:
            return cls(p, ModelInfo.from_json(json.load(f)), options=options)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._options:
            return (Model.from_path, (str(self.path), self._options))
        return (Model.from_path, (str(self.path),))

    @property
    def custom_objects(self) -> dict[str, Any]:
        """The ``custom_objects=`` saved with the model (a tokenizer, a label map, ...),
        unpickled on first use; ``{}`` when none were saved."""
        if self._custom_objects is None:
            path = self.path / CUSTOM_OBJECTS_FILE
            if path.is_file():
                import pickle

                with open(path, "rb") as f:
                    objects = pickle.load(f)
                if not isinstance(objects, dict):
                    raise TypeError(f"{path}: custom objects are not a dict")
                self._custom_objects = objects
            else:
                self._custom_objects = {}
        return self._custom_objects

    @property
    def options(self) -> dict[str, Any]:
        """The framework options: saved ones, overridden by ``with_options``."""
        return {**self.info.options, **self._options}

    def with_options(self, **options: Any) -> Model:
        """The same saved model with framework options changed for the runners made from it
        (BentoML's ``Model.with_options``), e.g. ``partial_kwargs={"generate": {"top_k": 5}}``:
        keyword arguments each signature's method is called with unless the call gives them.
        Nothing is written to the store."""
        allowed = getattr(self._framework(), "option_names", None)
        if allowed is not None:
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise TypeError(
                    f"{self.info.module} models take no option(s) {unknown}; options: "
                    f"{sorted(allowed) or 'none'}"
                )
        return Model(self.path, self.info, self._custom_objects, {**self._options, **options})

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.path.parent.parent.parent)

    @property
    def signatures(self) -> dict[str, dict[str, Any]]:
        return self.info.signatures

    @property
    def metadata(self) -> dict[str, Any]:
        return self.info.metadata

    @property
    def creation_time(self) -> _dt.datetime:
        return _dt.datetime.fromisoformat(self.info.creation_time)

    def path_of(self, item: str) -> str:
        return str(self.path / item)

    def _module(self) -> ModuleType:
        try:
            return importlib.import_module(self.info.module)
        except ImportError as exc:
            raise NotFound(
                f"model {self.tag} was saved by module {self.info.module!r}, which cannot be "
                f"imported: {exc}"
            ) from exc

    def _framework(self) -> Any:
        """The module's ``FRAMEWORK`` (runnerlib's frameworks), else the module itself (a
        BentoML-style framework module with ``load_model`` and ``get_runnable``)."""
        module = self._module()
        return getattr(module, "FRAMEWORK", None) or _ModuleFramework(module)

    def load_model(self, *args: Any, **kwargs: Any) -> Any:
        """Load the saved object with its framework (same as ``<framework>.load_model(model)``)."""
        return self._framework().load(self, *args, **kwargs)

    def to_runnable(self) -> type[Runnable]:
        """The Runnable class serving this model version: one method per signature.

        The class is importable by worker processes by its ``module:qualname`` (see
        ``runnerlib.frameworks``); building it loads nothing. Subclass it to add your own
        methods; its ``__init__`` takes no argument (the model comes from the default store,
        ``$RUNNERLIB_HOME``).
        """
        return self._framework().runnable_class(self)  # type: ignore[no-any-return]

    def to_runner(
        self,
        name: str | None = None,
        *,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        method_configs: Mapping[str, Mapping[str, Any]] | None = None,
        **runner_options: Any,
    ) -> Runner:
        """A Runner for this model version, named after the model unless ``name`` is given.

        Other keyword arguments (``scheduling_strategy``, ``cpu``, ``nvidia_gpu``,
        ``workers_per_resource``, ``timeout``, ``on_overload``, ``batching_enabled``, ...) go
        to ``Runner``. BentoML's ``embedded=True`` has no counterpart (a ``ConfigError`` that
        says so): call ``runner.init_local()`` to run the model in this process.
        """
        embedded = runner_options.pop("embedded", False)
        if embedded:
            from runnerlib.errors import ConfigError

            raise ConfigError(
                "to_runner(embedded=True): runnerlib has no embedded runners; create the "
                "runner without it and call runner.init_local() to run it in this process"
            )
        return self._framework().to_runner(  # type: ignore[no-any-return]
            self,
            name=name or self.tag.name,
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            method_configs=method_configs,
            **runner_options,
        )

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Model) and other.path == self.path
                and other._options == self._options)

    def __hash__(self) -> int:
        return hash(self.path)

    def __str__(self) -> str:
        return f'Model(tag="{self.tag}")'

    def __repr__(self) -> str:
        return (f"Model(tag={str(self.tag)!r}, framework={self.info.framework!r}, "
                f"path={str(self.path)!r})")


class _ModuleFramework:
    """A framework module written for BentoML (``load_model(model, ...)``,
    ``get_runnable(model)``), seen through the methods ``Model`` calls."""

    option_names = None  # any

    def __init__(self, module: ModuleType) -> None:
        self.module = module

    def _need(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.module, name, None)
        if not callable(fn):
            raise NotFound(f"framework module {self.module.__name__!r} has no {name}()")
        return fn  # type: ignore[no-any-return]

    def load(self, model: Model, *args: Any, **kwargs: Any) -> Any:
        return self._need("load_model")(model, *args, **kwargs)

    def runnable_class(self, model: Model) -> type[Runnable]:
        return self._need("get_runnable")(model)  # type: ignore[no-any-return]

    def to_runner(self, model: Model, *, name: str, **kwargs: Any) -> Runner:
        from runnerlib.runner import Runner

        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.setdefault("models", [model])
        return Runner(self.runnable_class(model), name=name, **kwargs)


class ModelStore:
    """A model store rooted at ``root`` (default: ``store_root()``, read when needed)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self._root = Path(root).expanduser().resolve() if root is not None else None

    @property
    def root(self) -> Path:
        return self._root if self._root is not None else store_root().resolve()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    # ------------------------------------------------------------------------------ reading

    def _versions(self, name: str) -> builtins.list[Model]:
        """Complete versions of ``name``, oldest first."""
        found: builtins.list[Model] = []
        try:
            entries = builtins.list(os.scandir(self.models_dir / name))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                found.append(Model.from_path(entry.path))
            except (OSError, ValueError, TypeError):
                continue  # being deleted, or not a model directory
        found.sort(key=lambda m: (m.info.creation_time, m.info.version))
        return found

    def _names(self) -> builtins.list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.models_dir)
                          if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []

    def list(self, name: str | None = None) -> builtins.list[Model]:
        """Every saved version (of ``name`` only, if given), by name then creation time."""
        names = [_check_part(name, "name")] if name is not None else self._names()
        return [m for n in names for m in self._versions(n)]

    def _inventory(self) -> str:
        names = self._names()
        if not names:
            return f"the store at {self.models_dir} is empty"
        parts = []
        for n in names:
            versions = [m.info.version for m in self._versions(n)]
            if versions:
                shown = ", ".join(versions[-5:])
                more = f" (+{len(versions) - 5} older)" if len(versions) > 5 else ""
                parts.append(f"{n}: {shown}{more}")
        return f"the store at {self.models_dir} holds " + ("; ".join(parts) or "nothing")

    def get(self, tag: str | Tag | Model) -> Model:
        """The model of ``tag``: ``name:version``, or ``name``/``name:latest`` for the newest."""
        t = Tag.from_taglike(tag)
        if t.version is not None:
            path = self.models_dir / t.name / t.version
            try:
                return Model.from_path(path)
            except (OSError, ValueError, TypeError):
                pass
        else:
            versions = self._versions(t.name)
            if versions:
                return versions[-1]
        raise ModelNotFound(f"model {str(t)!r} not found: {self._inventory()}")

    # ------------------------------------------------------------------------------ writing

    def save(
        self,
        name: str,
        write: Callable[[Path], Any],
        *,
        module: str,
        framework: str,
        signatures: Mapping[str, Mapping[str, Any]],
        options: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        framework_versions: Mapping[str, str] | None = None,
        version: str | None = None,
        custom_objects: Mapping[str, Any] | None = None,
        external_modules: Sequence[ModuleType] | None = None,
    ) -> Model:
        """Create a new version of ``name``: ``write(directory)`` writes the model's files, then
        the version is published atomically. ``metadata`` must be JSON-serialisable;
        ``custom_objects`` are pickled beside the model (``Model.custom_objects``); classes and
        functions of ``external_modules`` are pickled by value (with cloudpickle) while
        ``write`` runs and the custom objects are saved."""
        with self.create(
            name, module=module, framework=framework, signatures=signatures, options=options,
            metadata=metadata, labels=labels, framework_versions=framework_versions,
            version=version, custom_objects=custom_objects, external_modules=external_modules,
        ) as model:
            write(model.path)
        return model

    @contextlib.contextmanager
    def create(
        self,
        name: str,
        *,
        module: str = "",
        framework: str = "",
        signatures: Mapping[str, Mapping[str, Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        framework_versions: Mapping[str, str] | None = None,
        version: str | None = None,
        custom_objects: Mapping[str, Any] | None = None,
        external_modules: Sequence[ModuleType] | None = None,
    ) -> Iterator[Model]:
        """A new version of ``name`` in a private directory (``model.path``) for the block to
        write into; published atomically when the block ends without an exception (then
        ``model.path`` is its place in the store), discarded otherwise."""
        from runnerlib import __version__

        name = _check_part(name, "name")
        explicit = version is not None
        version = _check_part(version, "version") if version is not None else _new_version()
        if version == "latest":
            raise ValueError("'latest' is not a valid version to save")
        info = ModelInfo(
            name=name,
            version=version,
            module=module,
            framework=framework,
            signatures={k: dict(v) for k, v in (signatures or {}).items()},
            options=dict(options or {}),
            metadata=dict(metadata or {}),
            labels={str(k): str(v) for k, v in (labels or {}).items()},
            framework_versions=dict(framework_versions or {}),
            python_version=".".join(map(str, sys.version_info[:3])),
            runnerlib_version=__version__,
            creation_time=_now(),
        )
        _json(info)  # fail before anything is written
        tmp = self._make_tmp(name)
        model = Model(tmp, info, dict(custom_objects or {}))
        try:
            with _pickle_by_value(external_modules) as pickler:
                yield model
                info.creation_time = _now()
                if model._custom_objects:
                    with open(tmp / CUSTOM_OBJECTS_FILE, "wb") as f:
                        pickler.dump(model._custom_objects, f, protocol=5)
            (tmp / METADATA_FILE).write_text(_json(info), encoding="utf-8")
            final = tmp.parent / version
            try:
                os.rename(tmp, final)  # atomic; fails if that version exists (non-empty dir)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    what = "was given twice" if explicit else "collided"
                    raise ModelExists(f"model {name}:{version} already exists ({what})") from exc
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        model.path = final

    def _make_tmp(self, name: str) -> Path:
        parent = self.models_dir / name
        for _ in range(20):
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                return Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=parent))
            except FileNotFoundError:
                continue  # a concurrent delete removed the (then empty) name directory
        raise OSError(f"cannot create a directory under {parent}")

    def delete(self, tag: str | Tag | Model) -> Model:
        """Remove one version (``name:latest`` removes the newest); returns what was removed."""
        model = self.get(tag)
        trash = model.path.parent / f"{_TRASH_PREFIX}{model.info.version}-{secrets.token_hex(4)}"
        try:
            os.rename(model.path, trash)
        except FileNotFoundError:
            raise ModelNotFound(
                f"model {model.tag} was deleted by someone else: {self._inventory()}"
            ) from None
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            model.path.parent.rmdir()  # only succeeds when no version (nor save) is left
        return model

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"


def _json(info: ModelInfo) -> str:
    try:
        return json.dumps(info.to_json(), indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"model metadata must be JSON-serialisable: {exc}") from exc


def default_store() -> ModelStore:
    """The store at ``$RUNNERLIB_HOME`` (read now)."""
    return ModelStore()


def get(tag: str | Tag | Model) -> Model:
    """``default_store().get(tag)``."""
    return default_store().get(tag)


def list_models(name: str | Tag | None = None) -> builtins.list[Model]:
    """``default_store().list(name)``; a tag (``name:version``) lists that version."""
    if name is None:
        return default_store().list()
    tag = Tag.from_taglike(name)
    found = default_store().list(tag.name)
    return [m for m in found if tag.version is None or m.tag.version == tag.version]


list = list_models  # noqa: A001 - BentoML's bentoml.models.list
"""``bentoml.models.list``: every saved version (of a name or tag, if given)."""


def delete(tag: str | Tag | Model) -> Model:
    """``default_store().delete(tag)``."""
    return default_store().delete(tag)


def save(name: str, write: Callable[[Path], Any], **kwargs: Any) -> Model:
    """``default_store().save(name, write, ...)`` for a framework of your own."""
    return default_store().save(name, write, **kwargs)


@contextlib.contextmanager
def create(
    name: str | Tag,
    *,
    module: str = "",
    api_version: str | None = None,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, Any] | None = None,
    options: Any = None,
    custom_objects: Mapping[str, Any] | None = None,
    external_modules: Sequence[ModuleType] | None = None,
    metadata: Mapping[str, Any] | None = None,
    context: ModelContext | None = None,
    store: ModelStore | None = None,
) -> Iterator[Model]:
    """BentoML's ``bentoml.models.create``: a new model version to write files into::

        with runnerlib.models.create("my_model", metadata={"acc": 0.9}) as model:
            save_weights(model.path_of("weights.bin"))

    The version is published when the block ends without an exception, and discarded
    otherwise. ``module`` names the framework module that loads it (``load_model(model)`` and
    ``get_runnable(model)``, for ``model.load_model()`` / ``to_runner()``); ``signatures`` are
    checked as a framework's are, when given. ``api_version`` is accepted and not used.
    """
    tag = Tag.from_taglike(name)
    sigs = normalize_signatures(signatures, {}) if signatures else {}
    ctx = context or ModelContext()
    with (store or default_store()).create(
        tag.name, version=tag.version, module=module, framework=ctx.framework_name,
        framework_versions=ctx.framework_versions, signatures=sigs,
        options=_options_dict(options), labels=labels, metadata=metadata,
        custom_objects=custom_objects, external_modules=external_modules,
    ) as model:
        yield model
