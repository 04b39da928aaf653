"""Configuration files, overrides and the precedence chain (SPEC section 4)."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from runnerlib import ConfigError, Runnable, Runner
from runnerlib.config import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_LATENCY_MS,
    DEFAULT_TIMEOUT,
    Config,
    apply_options,
    get_config,
    load_config,
    parse_config,
)
from runnerlib.settings import MethodKind

SEED_YAML = """
runners:
  - name: iris_clf
    cpu: 4
    nvidia_gpu: 0  # requesting 0 GPU
    max_batch_size: 20
  - name: my_custom_runner
    cpu: 2
    nvidia_gpu: 2  # requesting 2 GPUs
    timeout: 60
    runnable_method_configs:
      - name: predict
        max_batch_size: 10
        max_latency_ms: 500
"""


class Clf(Runnable):
    @Runnable.method(batchable=True)
    def predict(self, x):
        return x

    @Runnable.method(batchable=True)
    def proba(self, x):
        return x


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_seed_yaml_list_form(tmp_path):
    cfg = load_config(write(tmp_path, "c.yaml", SEED_YAML))
    assert set(cfg.runners) == {"iris_clf", "my_custom_runner"}
    iris = cfg.runner("iris_clf")
    assert iris is not None and iris.cpu == 4 and iris.nvidia_gpu == 0
    assert iris.max_batch_size == 20
    custom = cfg.runners["my_custom_runner"]
    assert custom.timeout == 60
    m = custom.method("predict")
    assert m is not None and m.max_batch_size == 10 and m.max_latency_ms == 500


def test_mapping_form_equals_list_form(tmp_path):
    mapping = load_config(write(tmp_path, "m.yml", """
        runners:
          iris_clf: {cpu: 4, nvidia_gpu: 0, max_batch_size: 20}
          my_custom_runner:
            cpu: 2
            nvidia_gpu: 2
            timeout: 60
            runnable_method_configs:
              predict: {max_batch_size: 10, max_latency_ms: 500}
    """))
    assert mapping == load_config(write(tmp_path, "l.yaml", SEED_YAML))


def test_toml_and_json(tmp_path):
    toml = load_config(write(tmp_path, "c.toml", """
        [runner_defaults]
        timeout = 30

        [[runners]]
        name = "iris_clf"
        max_batch_size = 20
        batching = { enabled = false }
    """))
    js = load_config(write(tmp_path, "c.json", json.dumps({
        "runner_defaults": {"timeout": 30},
        "runners": {"iris_clf": {"max_batch_size": 20, "batching": {"enabled": False}}},
    })))
    assert toml == js
    assert toml.runner_defaults.timeout == 30
    assert toml.runners["iris_clf"].batching_enabled() is False


def test_empty_file(tmp_path):
    assert load_config(write(tmp_path, "e.yaml", "")) == Config()


@pytest.mark.parametrize(
    "text, message",
    [
        ("runners:\n  - name: a\n  - name: b\n    max_batch_size: big\n",
         "runners[1].max_batch_size: expected int, got str"),
        ("runners:\n  - name: a\n    colour: red\n", "runners[0].colour: unknown key"),
        ("runners:\n  a:\n    colour: red\n", "runners.a.colour: unknown key"),
        ("runners:\n  a:\n    max_batch_size: 0\n", "runners.a.max_batch_size: expected int >= 1"),
        ("runners:\n  a:\n    timeout: -1\n", "runners.a.timeout"),
        ("runners:\n  a:\n    on_overload: drop\n", "runners.a.on_overload"),
        ("runners:\n  a:\n    batching: {enabled: maybe}\n",
         "runners.a.batching.enabled: expected bool, got str"),
        ("runners:\n  a:\n    batching: {speed: 1}\n", "runners.a.batching.speed: unknown key"),
        ("runners:\n  - cpu: 1\n", "runners[0].name: required"),
        ("runners:\n  - name: a\n  - name: a\n", "runners[1].name: runner 'a' is listed twice"),
        ("runners:\n  a:\n    cpu: lots\n", "runners.a.cpu"),
        ("runners:\n  a:\n    cpu: 0\n", "runners.a.cpu"),
        ("runners:\n  a:\n    nvidia_gpu: [0, 0]\n", "runners.a.nvidia_gpu[1]"),
        ("runners:\n  a:\n    runnable_method_configs:\n      - max_batch_size: 3\n",
         "runners.a.runnable_method_configs[0].name: required"),
        ("runners:\n  a:\n    runnable_method_configs:\n"
         "      - name: p\n        max_batch_size: x\n",
         "runners.a.runnable_method_configs[0].max_batch_size: expected int, got str"),
        ("runners:\n  a:\n    runnable_method_configs:\n      p: {foo: 1}\n",
         "runners.a.runnable_method_configs.p.foo: unknown key"),
        ("runners:\n  a:\n    max_batch_size: 4\n    batching: {max_batch_size: 5}\n",
         "runners.a.max_batch_size: 4 differs"),
        ("runners: 3\n", "runners: expected a list or a mapping"),
        ("runners:\n  - 3\n", "runners[0]: expected a mapping"),
        ("runner_defaults:\n  name: x\n", "runner_defaults.name: unknown key"),
        ("runner_defaults:\n  max_latency_ms: soon\n", "runner_defaults.max_latency_ms"),
        ("apiserver: {}\n", "apiserver: unknown key"),
        ("runners:\n  a:\n    resources: lots\n", "runners.a.resources: expected a mapping"),
        ("runners:\n  a:\n    resources: {cpu: lots}\n", "runners.a.resources.cpu"),
        ("runners:\n  a:\n    resources: {nvidia.com/gpu: [0, 0]}\n",
         "runners.a.resources.nvidia.com/gpu[1]"),
        ("runners:\n  a:\n    cpu: 1\n    resources: {cpu: 2}\n",
         "runners.a.cpu: also given as runners.a.resources.cpu"),
        ("runners:\n  a:\n    timeout: 5\n    traffic: {timeout: 6}\n",
         "runners.a.timeout: 5 differs from runners.a.traffic.timeout 6"),
        ("runners:\n  timeout: 5\nrunner_defaults: {timeout: 6}\n",
         "runners.timeout: also given as runner_defaults.timeout"),
        ("- 1\n", "top level: expected a mapping"),
    ],
)
def test_validation_errors_name_the_key(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config format"):
        load_config(write(tmp_path, "c.ini", "x"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "c.yaml", "runners: [\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "c.toml", "runners = [\n"))
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(write(tmp_path, "c.json", "{"))


def test_load_config_accepts_mapping_and_config():
    cfg = load_config({"runners": {"a": {"timeout": 5}}})
    assert cfg.runners["a"].timeout == 5
    assert load_config(cfg) is cfg
    with pytest.raises(ConfigError, match="runners.a.timeout"):
        load_config({"runners": {"a": {"timeout": "x"}}})


# ------------------------------------------------------------------------------ overrides


def test_options_override_single_keys(tmp_path):
    cfg = load_config(
        write(tmp_path, "c.yaml", SEED_YAML),
        options="runners.iris_clf.max_batch_size=8 runners.x.timeout=5 "
        "runner_defaults.max_latency_ms=100 runners.x.batching.enabled=false "
        "runners.my_custom_runner.runnable_method_configs.predict.max_batch_size=3 "
        "runners.x.nvidia_gpu=[0,1] runners.x.cpu=500m",
    )
    assert cfg.runners["iris_clf"].max_batch_size == 8
    assert cfg.runners["iris_clf"].cpu == 4  # untouched keys stay
    assert cfg.runners["x"].timeout == 5
    assert cfg.runners["x"].batching_enabled() is False
    assert cfg.runners["x"].nvidia_gpu == [0, 1]
    assert cfg.runners["x"].cpu == "500m"
    assert cfg.runner_defaults.max_latency_ms == 100
    m = cfg.runners["my_custom_runner"].method("predict")
    assert m is not None and m.max_batch_size == 3 and m.max_latency_ms == 500


def test_option_for_dotted_runner_name():
    cfg = apply_options(Config(), "runners.model.v1.timeout=7")
    assert cfg.runners["model.v1"].timeout == 7


def test_empty_option_value_unsets():
    cfg = apply_options(parse_config({"runners": {"a": {"timeout": 5, "cpu": 1}}}),
                        "runners.a.timeout=")
    assert cfg.runners["a"].timeout is None and cfg.runners["a"].cpu == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ("runners.a.max_batch_size=many", "runners.a.max_batch_size: expected int, got str"),
        ("runners.a.colour=red", "runners.a.colour: unknown key"),
        ("justakey", "is not KEY=VALUE"),
        ("runners.a.timeout.x=1", "not a mapping"),
        ("runners.a=1", "runners.a: expected a mapping"),
        ("runners.a.b.c=1", "runners.a.b: unknown key"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, options="runners.a.timeout=5 " + options)
    assert message in str(info.value)


def test_global_config_from_environment(tmp_path, monkeypatch):
    path = write(tmp_path, "c.yaml", SEED_YAML)
    monkeypatch.setenv("RUNNERLIB_CONFIG", str(path))
    assert get_config().runners["iris_clf"].max_batch_size == 20
    monkeypatch.setenv("RUNNERLIB_CONFIG_OPTIONS", "runners.iris_clf.max_batch_size=8")
    assert get_config().runners["iris_clf"].max_batch_size == 8
    monkeypatch.delenv("RUNNERLIB_CONFIG_OPTIONS")
    path.write_text("runners:\n  iris_clf: {max_batch_size: 3}\n")
    os.utime(path, ns=(1, 1))  # force a new modification time
    assert get_config().runners["iris_clf"].max_batch_size == 3
    monkeypatch.delenv("RUNNERLIB_CONFIG")
    assert get_config() == Config()


# ------------------------------------------------------------------------------ precedence


def test_builtin_defaults_documented_values():
    assert (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_LATENCY_MS, DEFAULT_TIMEOUT) == (100, 60000, 900)
    s = Runner(Clf, name="iris_clf").settings(Config())
    assert s.timeout == 900 and s.on_overload == "queue" and s.allow_pickle is True
    assert s.batching_enabled is True and s.workers_per_resource == 1
    assert s.methods["predict"].max_batch_size == 100
    assert s.methods["predict"].max_latency_ms == 60000


def test_precedence_chain_for_max_batch_size():
    layers = {
        "runner_defaults": {"max_batch_size": 2,
                            "runnable_method_configs": {"predict": {"max_batch_size": 3}}},
        "runners": {"iris_clf": {"max_batch_size": 4,
                                 "runnable_method_configs": {"predict": {"max_batch_size": 5}}}},
    }
    code = dict(max_batch_size=6, method_configs={"predict": {"max_batch_size": 7}})

    def size(cfg, **kwargs):
        settings = Runner(Clf, name="iris_clf", **kwargs).settings(cfg)
        return settings.methods["predict"].max_batch_size

    cfg = parse_config(layers)
    assert size(cfg, **code) == 7  # method_configs in code
    assert size(cfg, max_batch_size=6) == 6  # Runner(...) argument
    assert size(cfg) == 5  # method entry in the file
    del layers["runners"]["iris_clf"]["runnable_method_configs"]
    assert size(parse_config(layers)) == 4  # runner entry
    del layers["runners"]["iris_clf"]["max_batch_size"]
    assert size(parse_config(layers)) == 3  # method entry in runner_defaults
    del layers["runner_defaults"]["runnable_method_configs"]
    assert size(parse_config(layers)) == 2  # runner_defaults
    assert size(Config()) == 100  # built-in


def test_precedence_other_keys():
    cfg = parse_config({
        "runner_defaults": {"timeout": 30, "max_latency_ms": 9, "on_overload": "reject",
                            "allow_pickle": False, "workers_per_resource": 2, "cpu": 1},
        "runners": {"iris_clf": {"timeout": 20, "batching": {"max_latency_ms": 8}}},
    })
    s = Runner(Clf, name="iris_clf").settings(cfg)
    assert s.timeout == 20 and s.on_overload == "reject" and s.allow_pickle is False
    assert s.methods["proba"].max_latency_ms == 8 and s.workers_per_resource == 2
    assert s.cpu == 1.0 and s.worker_count == 2
    s = Runner(Clf, name="iris_clf", timeout=10, on_overload="queue", allow_pickle=True,
               workers_per_resource=1, cpu="500m", max_latency_ms=1).settings(cfg)
    assert s.timeout == 10 and s.on_overload == "queue" and s.allow_pickle is True
    assert s.methods["proba"].max_latency_ms == 1 and s.cpu == 0.5 and s.worker_count == 1
    other = Runner(Clf, name="other").settings(cfg)
    assert other.timeout == 30 and other.methods["predict"].max_latency_ms == 9


def test_batching_disabled_for_one_runner():
    cfg = parse_config({"runners": {"off": {"batching": {"enabled": False}}}})
    off = Runner(Clf, name="off").settings(cfg)
    on = Runner(Clf, name="on").settings(cfg)
    assert off.batching_enabled is False and not off.methods["predict"].batchable
    assert on.batching_enabled is True and on.methods["predict"].batchable
    assert Runner(Clf, name="on", batching_enabled=False).settings(cfg).batching_enabled is False


def test_method_settings_fields():
    class K(Runnable):
        @Runnable.method(batchable=True, batch_dim=(1, 2))
        async def p(self, x):
            return x

    m = Runner(K).settings(Config()).methods["p"]
    assert (m.name, m.batchable, m.batch_dim_in, m.batch_dim_out) == ("p", True, 1, 2)
    assert m.kind is MethodKind.ASYNC


def test_runner_method_reflects_global_config(monkeypatch):
    r = Runner(Clf, name="iris_clf")
    assert r.predict.max_batch_size == 100
    monkeypatch.setenv(
        "RUNNERLIB_CONFIG_OPTIONS",
        "runners.iris_clf.max_batch_size=8 runner_defaults.max_latency_ms=100",
    )
    assert r.predict.max_batch_size == 8 and r.predict.max_latency_ms == 100
    assert r.settings().methods["proba"].max_batch_size == 8


def test_settings_accepts_path(tmp_path, cpus):
    cpus(8)
    path = write(tmp_path, "c.yaml", SEED_YAML)
    s = Runner(Clf, name="iris_clf").settings(path)
    assert s.methods["predict"].max_batch_size == 20 and s.cpu == 4 and s.worker_count == 4


def test_unknown_method_in_file_warns(logs):
    cfg = parse_config({"runners": {"iris_clf": {"runnable_method_configs": {"nope": {}}}}})
    Runner(Clf, name="iris_clf").settings(cfg)
    assert "nope" in logs.text


def test_settings_runnable_reference():
    s = Runner(Clf, name="iris_clf").settings(Config())
    assert s.class_ref == f"{Clf.__module__}:{Clf.__qualname__}"
