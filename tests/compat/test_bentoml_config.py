"""A BentoML configuration file (``bentoml_configuration.yaml``, configuration version 1, as
BentoML documents it) loads with runnerlib, and its ``runners:`` section configures the
runners as it configures BentoML's."""

from __future__ import annotations

import textwrap

import pytest

import runnerlib as bentoml
from runnerlib import ConfigError
from runnerlib.config import get_config, load_config

BENTOML_FILE = """
version: 1
api_server:
  workers: 4
  http:
    port: 3000
  metrics:
    enabled: true
    namespace: bentoml_api_server
runners:
  # every runner
  batching:
    enabled: true
    max_batch_size: 100
    max_latency_ms: ${MAX_LATENCY_MS:-500}
  resources:
    cpu: 1
  workers_per_resource: 1
  timeout: 300
  logging:
    access:
      enabled: true
  metrics:
    enabled: true
    namespace: bentoml_runner
  # one runner
  iris_clf:
    resources:
      cpu: ${IRIS_CPUS:-2}
      nvidia.com/gpu: 0
    batching:
      max_batch_size: 20
    traffic:
      timeout: 60
      max_concurrency: 8
  no_batching:
    batching:
      enabled: false
tracing:
  exporter_type: zipkin
  sample_rate: 1.0
  zipkin:
    endpoint: http://${ZIPKIN_HOST:-localhost}:9411/api/v2/spans
monitoring:
  enabled: false
"""


class IrisClassifier(bentoml.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    @bentoml.Runnable.method(batchable=True)
    def predict(self, x):
        return x


@pytest.fixture
def bentoml_file(tmp_path):
    path = tmp_path / "bentoml_configuration.yaml"
    path.write_text(textwrap.dedent(BENTOML_FILE))
    return path


def test_bentoml_file_loads(bentoml_file, cpus):
    cpus(4)
    cfg = load_config(bentoml_file)
    iris = bentoml.Runner(IrisClassifier, name="iris_clf").settings(cfg)
    assert iris.cpu == 2.0 and iris.worker_count == 2 and iris.nvidia_gpu == []
    assert iris.timeout == 60
    assert iris.methods["predict"].max_batch_size == 20
    assert iris.methods["predict"].max_latency_ms == 500  # from runners.batching, expanded
    other = bentoml.Runner(IrisClassifier, name="other").settings(cfg)
    assert other.cpu == 1.0 and other.worker_count == 1 and other.timeout == 300
    assert other.methods["predict"].max_batch_size == 100
    off = bentoml.Runner(IrisClassifier, name="no_batching").settings(cfg)
    assert not off.methods["predict"].batchable and off.batching_enabled is False


def test_environment_variables_expand(bentoml_file, cpus, monkeypatch):
    cpus(4)
    monkeypatch.setenv("IRIS_CPUS", "3")
    monkeypatch.setenv("MAX_LATENCY_MS", "25")
    cfg = load_config(bentoml_file)
    assert cfg.runners["iris_clf"].resources == {"cpu": 3, "nvidia.com/gpu": 0}
    s = bentoml.Runner(IrisClassifier, name="iris_clf").settings(cfg)
    assert s.worker_count == 3 and s.methods["predict"].max_latency_ms == 25


def test_expansion_forms(tmp_path, monkeypatch):
    monkeypatch.setenv("SET", "1")
    monkeypatch.delenv("UNSET", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""
        runners:
          a:
            timeout: ${SET}
            max_batch_size: ${UNSET:-7}
            resources: {cpu: "${SET}500m"}
          b:
            resources: {cpu: "${UNSET}1"}
    """))
    cfg = load_config(path)
    assert cfg.runners["a"].timeout == 1 and cfg.runners["a"].max_batch_size == 7
    assert cfg.runners["a"].resources == {"cpu": "1500m"}
    assert cfg.runners["b"].resources == {"cpu": "1"}  # an unset variable is ""


def test_bentoml_config_environment_variable(bentoml_file, monkeypatch):
    monkeypatch.setenv("BENTOML_CONFIG", str(bentoml_file))
    assert get_config().runners["iris_clf"].batch_size() == 20
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "runners.iris_clf.batching.max_batch_size=5")
    assert get_config().runners["iris_clf"].batch_size() == 5
    monkeypatch.setenv("RUNNERLIB_CONFIG_OPTIONS", "runners.iris_clf.batching.max_batch_size=6")
    assert get_config().runners["iris_clf"].batch_size() == 6  # runnerlib's own wins


def test_options_reach_resources(bentoml_file, cpus):
    cpus(4)
    cfg = load_config(bentoml_file, options="runners.iris_clf.resources.cpu=4 "
                                            "runners.iris_clf.resources.nvidia.com/gpu=-1")
    assert cfg.runners["iris_clf"].resources == {"cpu": 4, "nvidia.com/gpu": -1}
    assert bentoml.Runner(IrisClassifier, name="iris_clf").settings(cfg).worker_count == 4


def test_runner_config_forms_agree(tmp_path, cpus):
    """The seed documents' form (cpu/nvidia_gpu in a list) and BentoML's (resources: in a
    mapping) configure the same runner the same way."""
    cpus(4)
    seed = tmp_path / "seed.yaml"
    seed.write_text("runners:\n  - name: iris_clf\n    cpu: 2\n    nvidia_gpu: 0\n"
                    "    max_batch_size: 20\n    timeout: 60\n")
    bento = tmp_path / "bento.yaml"
    bento.write_text("runners:\n  iris_clf:\n    resources: {cpu: 2, nvidia.com/gpu: 0}\n"
                     "    batching: {max_batch_size: 20}\n    traffic: {timeout: 60}\n")
    a = bentoml.Runner(IrisClassifier, name="iris_clf").settings(seed)
    b = bentoml.Runner(IrisClassifier, name="iris_clf").settings(bento)
    assert (a.cpu, a.nvidia_gpu, a.worker_count, a.timeout, a.methods) == (
        b.cpu, b.nvidia_gpu, b.worker_count, b.timeout, b.methods)


@pytest.mark.parametrize(
    "text, message",
    [
        ("runners:\n  iris_clf:\n    resources: {cpu: many}\n", "runners.iris_clf.resources.cpu"),
        ("runners:\n  iris_clf:\n    traffic: {timeout: soon}\n",
         "runners.iris_clf.traffic.timeout"),
        ("runners:\n  batching: {enabled: perhaps}\n", "runners.batching.enabled"),
        ("runners:\n  iris_clf:\n    resources: {nvidia.com/gpu: -2}\n",
         "runners.iris_clf.resources.nvidia.com/gpu"),
        ("apiserver: {}\n", "apiserver: unknown key"),
    ],
)
def test_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(path)
