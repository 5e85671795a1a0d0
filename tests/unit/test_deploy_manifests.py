"""deploy/ checked without Docker or a cluster: every file parses and agrees with the code.

Compose services build or pull something that exists, worker settings are real Settings fields,
the StatefulSet mounts its data dir and probes the right port, Prometheus scrapes /metrics there,
and every metric the Grafana dashboard queries is one the worker defines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from engine.campaign import load_campaign
from streams.metrics import WorkerMetrics
from streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kairos.json"
# Labels Prometheus or PromQL add to every series (target labels and histogram buckets).
IMPLICIT_LABELS = {"instance", "job", "le", "deployment", "namespace", "pod", "component"}


# ---- helpers ------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def _load_yaml(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def _compose() -> dict[str, Any]:
    (doc,) = _load_yaml(COMPOSE)
    return dict(doc)


def _k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _load_yaml(path)]


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in _k8s_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} as the default (the tests run with no such variables set)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", value)


def _setting_field(env_name: str) -> bool:
    """True when KAIROS_A__B names a field of Settings (nested models through "__")."""
    assert env_name.startswith("KAIROS_"), env_name
    if env_name == "KAIROS_CONFIG":
        return True  # the TOML file's path, read by Settings itself
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix("KAIROS_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Build Settings from exactly these KAIROS_* variables (validates the values, too)."""
    import os

    for key in [k for k in os.environ if k.startswith("KAIROS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def _worker_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {
        name: svc
        for name, svc in services.items()
        if svc.get("command", ["worker"])[0] == "worker" and "build" in svc
    }


def _worker_env(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: _interpolate(str(v)) for k, v in env.items()}


def _pod_container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def _container_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's KAIROS_* environment: ConfigMaps in envFrom, then plain env values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        configmap = _k8s("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in configmap["data"].items()})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", "<from secret>"))
    return env


def _resolve_port(container: Mapping[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


# ---- PromQL -------------------------------------------------------------------------------------


def exposed_metrics() -> dict[str, set[str]]:
    """Every series name WorkerMetrics exposes, with its label names (histograms: _bucket...)."""
    metrics = WorkerMetrics()
    exposed: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind = metric._name, str(metric._type)
        labels = set(metric._labelnames)
        suffixes = {
            "counter": ("_total", "_created"),
            "gauge": ("",),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"),
        }[kind]
        for suffix in suffixes:
            exposed[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return exposed


SELECTOR = re.compile(r"\b(kairos_[a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def promql_references(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """Metric names in a PromQL expression with their matcher labels, and the grouping labels."""
    names: dict[str, set[str]] = {}
    for match in SELECTOR.finditer(expr):
        matchers = set(MATCHER.findall(match.group(2) or ""))
        names.setdefault(match.group(1), set()).update(matchers)
    grouping = {
        label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label
    }
    return names, {g for g in grouping if g}


def _dashboard_targets() -> Iterator[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            yield from walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                yield panel["title"], target["expr"]

    yield from walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        yield f"variable {variable['name']}", text


# ---- every file parses --------------------------------------------------------------------------


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    yamls = _yaml_files()
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert COMPOSE in yamls and DASHBOARD in jsons
    assert len(yamls) >= 10, yamls
    for path in yamls:
        assert _load_yaml(path), f"{path} is empty"
    for path in jsons:
        json.loads(path.read_text(encoding="utf-8"))


def test_k8s_documents_are_well_formed_and_listed_in_the_kustomization() -> None:
    for doc in _k8s_docs():
        if doc["kind"] == "Kustomization":
            continue  # a kustomize file, not an API object
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"].get("name"), doc
    (kustomization,) = _load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    unlisted = {p.name for p in K8S.glob("*.yaml")} - set(kustomization["resources"])
    # The Secret is an example only: real secrets are created out of band.
    assert unlisted == {"kustomization.yaml", "secret.example.yaml"}, unlisted


# ---- Dockerfile and compose ---------------------------------------------------------------------


def test_dockerfile_installs_the_package_and_runs_a_worker() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "pip install ." in text
    assert 'ENTRYPOINT ["kairos"]' in text and 'CMD ["worker"]' in text
    for copied in re.findall(r"^COPY (.+?) \S+$", text, re.M):
        for source in copied.split():
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    env = dict(re.findall(r"(KAIROS_[A-Z_]+)=(\S+)", text))
    assert all(_setting_field(name) for name in env), env
    assert env["KAIROS_WEB_HOST"] == "0.0.0.0"  # reachable from outside the container


def test_every_compose_service_has_an_image_or_a_build_that_exists() -> None:
    services = _compose()["services"]
    assert {"kafka", "prometheus", "grafana"} <= services.keys()
    assert len(_worker_services()) == 2, "two workers"
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            build = service["build"]
            context = DEPLOY / (build if isinstance(build, str) else build["context"])
            dockerfile = (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            )
            assert (context / dockerfile).is_file(), f"{name}: no {context / dockerfile}"
        if "image" in service and "build" not in service:
            assert re.fullmatch(r"[a-z0-9./_-]+:[A-Za-z0-9._-]+", service["image"]), (
                f"{name}: pin a tag, got {service['image']!r}"
            )
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} missing"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_kafka_is_the_single_node_kraft_broker_of_the_local_scripts() -> None:
    kafka = _compose()["services"]["kafka"]
    pom = (DEPLOY / "kafka" / "pom.xml").read_text(encoding="utf-8")
    version = re.search(r"<kafka.version>(.+?)</kafka.version>", pom)
    assert version is not None
    assert kafka["image"] == f"apache/kafka:{version.group(1)}"
    assert kafka["image"].split(":")[1].startswith("4.")
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert len(str(env["CLUSTER_ID"])) == 22  # a base64 UUID, as kafka-storage format needs


def test_compose_worker_env_names_are_settings_fields_and_values_validate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    for name, service in _worker_services().items():
        env = _worker_env(service)
        unknown = [k for k in env if k.startswith("KAIROS_") and not _setting_field(k)]
        assert not unknown, f"{name}: not Settings fields: {unknown}"
        settings = _settings_from(env, monkeypatch)
        host, _, port = settings.kafka_bootstrap.partition(":")
        assert host in services and port == "9092", settings.kafka_bootstrap
        assert settings.web_host == "0.0.0.0"
        assert settings.learning == "remote", "several workers must not learn separately"
        ports = [str(p) for p in service.get("ports", [])]
        assert any(p.endswith(f":{settings.web_port}") for p in ports), (name, ports)
        data_dir = str(settings.data_dir)
        assert any(data_dir.startswith(str(v).split(":")[1]) for v in service.get("volumes", [])), (
            f"{name}: {data_dir} is not on a volume"
        )
        health = " ".join(service["healthcheck"]["test"])
        assert f":{settings.web_port}/readyz" in health
    learner = services["learner"]
    assert learner["command"] == ["learner"]
    assert all(_setting_field(k) for k in _worker_env(learner))


def test_compose_prometheus_scrapes_every_worker_on_its_web_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    prometheus = compose["services"]["prometheus"]
    mounts = dict(str(v).split(":")[:2] for v in prometheus["volumes"] if str(v).startswith("."))
    config_path = DEPLOY / next(s for s, t in mounts.items() if t.endswith("prometheus.yml"))
    (config,) = _load_yaml(config_path)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "kairos-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    expected = set()
    for name, service in _worker_services().items():
        settings = _settings_from(_worker_env(service), monkeypatch)
        expected.add(f"{service.get('hostname', name)}:{settings.web_port}")
    assert targets == expected


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard() -> None:
    compose = _compose()
    grafana = compose["services"]["grafana"]
    mounts = dict(str(v).split(":")[:2] for v in grafana["volumes"] if str(v).startswith("."))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (datasources,) = _load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    (providers,) = _load_yaml(DEPLOY / "grafana/provisioning/dashboards/kairos.yml")
    (provider,) = providers["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    uids = set()
    for panel in dashboard["panels"]:
        uids.add(panel["datasource"]["uid"])
        uids.update(t["datasource"]["uid"] for t in panel["targets"])
        assert panel["targets"], panel["title"]
    assert uids == {source["uid"]}
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in (
        "decisions / s by campaign and action",
        "latency",
        "explore",
        "holdout",
        "rewards",
        "dead letters",
        "model version",
        "worker state",
    ):
        assert wanted in titles, wanted


def test_every_metric_the_dashboard_queries_is_defined_by_the_worker() -> None:
    exposed = exposed_metrics()
    assert "kairos_trigger_to_decision_seconds_bucket" in exposed
    assert "kairos_decisions_total" in exposed
    queried: set[str] = set()
    for title, expr in _dashboard_targets():
        names, grouping = promql_references(expr)
        for name, matchers in names.items():
            assert name in exposed, f"{title}: {name} is not defined in streams/metrics.py"
            unknown = matchers - exposed[name] - IMPLICIT_LABELS
            assert not unknown, f"{title}: {name} has no label {unknown}"
        known = set().union(*(exposed[n] for n in names)) | IMPLICIT_LABELS if names else set()
        assert grouping <= known, f"{title}: grouping by unknown labels {grouping - known}"
        queried |= set(names)
    # The latency panel uses the histogram's buckets, sum and count.
    for suffix in ("_bucket", "_sum", "_count"):
        assert f"kairos_trigger_to_decision_seconds{suffix}" in queried
    for required in (
        "kairos_decisions_total",
        "kairos_rewards_total",
        "kairos_dead_letters_total",
        "kairos_model_version",
        "kairos_worker_state",
    ):
        assert required in queried, required


def test_compose_prometheus_loads_alert_rules_on_metrics_the_worker_defines() -> None:
    prometheus = _compose()["services"]["prometheus"]
    mounts = dict(str(v).split(":")[:2] for v in prometheus["volumes"] if str(v).startswith("."))
    config_path = DEPLOY / next(s for s, t in mounts.items() if t.endswith("prometheus.yml"))
    (config,) = _load_yaml(config_path)
    # Every rule file prometheus.yml loads is mounted where it looks.
    by_target = {target: source for source, target in mounts.items()}
    rules = [DEPLOY / by_target[path] for path in config["rule_files"]]
    assert rules, "prometheus.yml loads no alert rules"
    exposed = exposed_metrics()
    alerts: set[str] = set()
    for path in rules:
        (document,) = _load_yaml(path)
        for group in document["groups"]:
            for rule in group["rules"]:
                names, grouping = promql_references(rule["expr"])
                for name, matchers in names.items():
                    assert name in exposed, f"{rule['alert']}: {name} is not a worker metric"
                    assert not matchers - exposed[name] - IMPLICIT_LABELS, rule["alert"]
                known = set().union(*(exposed[n] for n in names)) if names else set()
                assert grouping <= known | IMPLICIT_LABELS, rule["alert"]
                # A label an annotation names is one the expression keeps.
                for label in re.findall(r"\$labels\.(\w+)", str(rule.get("annotations", {}))):
                    assert label in grouping or not names, (rule["alert"], label)
                alerts.add(rule["alert"])
    assert {"KairosBrokerUnreachable", "KairosWorkerDown", "KairosFallingBehind"} <= alerts


def test_the_promql_reader_finds_names_labels_and_groupings() -> None:
    names, grouping = promql_references(
        'sum by (campaign, action) (rate(kairos_decisions_total{explore="true",'
        'instance=~"$instance"}[5m])) / ignoring(x) histogram_quantile(0.9, '
        "kairos_trigger_to_decision_seconds_bucket)"
    )
    assert names == {
        "kairos_decisions_total": {"explore", "instance"},
        "kairos_trigger_to_decision_seconds_bucket": set(),
    }
    assert grouping == {"campaign", "action", "x"}


# ---- Kubernetes ---------------------------------------------------------------------------------


def test_statefulset_mounts_a_persistent_volume_at_its_data_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = _k8s("StatefulSet", "kairos")
    container = _pod_container(workers, "worker")
    env = _container_env(container)
    unknown = [k for k in env if not _setting_field(k)]
    assert not unknown, f"not Settings fields: {unknown}"
    settings = _settings_from({k: v for k, v in env.items() if v != "<from secret>"}, monkeypatch)
    claims = {c["metadata"]["name"] for c in workers["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data_dir = str(settings.data_dir)
    assert data_dir in mounts, f"nothing mounted at KAIROS_DATA_DIR={data_dir}"
    assert mounts[data_dir] in claims, "the data dir must be a persistent volume claim"
    for claim in workers["spec"]["volumeClaimTemplates"]:
        assert claim["spec"]["resources"]["requests"]["storage"]
    assert settings.web_host == "0.0.0.0"
    assert settings.learning == "remote"  # several replicas: the learner Deployment learns


def test_statefulset_probes_health_and_readiness_on_the_web_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workers = _k8s("StatefulSet", "kairos")
    container = _pod_container(workers, "worker")
    env = _container_env(container)
    port = int(env["KAIROS_WEB_PORT"])
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/healthz"
    assert readiness["path"] == "/readyz"
    assert _resolve_port(container, liveness["port"]) == port
    assert _resolve_port(container, readiness["port"]) == port
    if "startupProbe" in container:
        startup = container["startupProbe"]["httpGet"]
        assert startup["path"] == "/healthz" and _resolve_port(container, startup["port"]) == port
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()
    # Prometheus finds the pods by their annotations.
    annotations = workers["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_secrets_come_from_a_secret_reference_not_the_configmap() -> None:
    example = _k8s("Secret", "kairos-secrets")
    for workload in (_k8s("StatefulSet", "kairos"), _k8s("Deployment", "kairos-learner")):
        container = workload["spec"]["template"]["spec"]["containers"][0]
        refs = {
            item["name"]: item["valueFrom"]["secretKeyRef"]
            for item in container.get("env", [])
            if "secretKeyRef" in item.get("valueFrom", {})
        }
        assert {"KAIROS_SECURITY__SASL_PASSWORD", "KAIROS_SNAPSHOT_KEY"} <= refs.keys()
        for ref in refs.values():
            assert ref["name"] == example["metadata"]["name"]
            assert ref["key"] in example["stringData"]
    configmap = _k8s("ConfigMap", "kairos-config")
    assert not {"KAIROS_SECURITY__SASL_PASSWORD", "KAIROS_SNAPSHOT_KEY"} & configmap["data"].keys()


def test_campaign_configmap_is_mounted_where_the_settings_look_and_its_files_load(
    tmp_path: Path,
) -> None:
    workers = _k8s("StatefulSet", "kairos")
    container = _pod_container(workers, "worker")
    env = _container_env(container)
    campaigns = _k8s("ConfigMap", "kairos-campaigns")
    volumes = workers["spec"]["template"]["spec"]["volumes"]
    (volume,) = [v for v in volumes if v.get("configMap", {}).get("name") == "kairos-campaigns"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["KAIROS_CAMPAIGNS"] == mounts[volume["name"]]
    assert campaigns["data"]
    for filename, text in campaigns["data"].items():
        assert filename.endswith(".toml")
        path = tmp_path / filename
        path.write_text(text, encoding="utf-8")
        load_campaign(path)  # raises on an invalid campaign


def test_headless_service_and_disruption_budget_select_the_worker_pods() -> None:
    workers = _k8s("StatefulSet", "kairos")
    pod_labels = workers["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _k8s("Service", workers["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container = _pod_container(workers, "worker")
    port_names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names or port["targetPort"] == port["port"]
    budget = _k8s("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "maxUnavailable" in budget["spec"] or "minAvailable" in budget["spec"]


def test_k8s_prometheus_discovers_pods_by_their_annotations() -> None:
    (config,) = _load_yaml(DEPLOY / "prometheus" / "prometheus-k8s.yml")
    (job,) = config["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    relabels = job["relabel_configs"]
    sources = {label for r in relabels for label in r.get("source_labels", [])}
    for annotation in ("scrape", "port", "path"):
        assert f"__meta_kubernetes_pod_annotation_prometheus_io_{annotation}" in sources
    keep = [r for r in relabels if r.get("action") == "keep"]
    assert keep and keep[0]["regex"] == "true"
    namespace = _k8s("StatefulSet", "kairos")["metadata"]["namespace"]
    assert namespace in job["kubernetes_sd_configs"][0]["namespaces"]["names"]
