"""The Kubernetes manifests in deploy/: valid against the Kubernetes schemas (strict: no unknown field),
and consistent with the router's own settings and shutdown."""

from __future__ import annotations

import tomllib

import kubernetes_validate
import pytest
import yaml

from router.settings import PROJECT_ROOT, Settings

MANIFESTS = sorted((PROJECT_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES = "1.30.0"  # the oldest version the manifests promise to work on (gRPC probes, preStop sleep)


def resources() -> dict[str, dict]:
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("name", sorted(resources()))
def test_each_resource_is_valid_kubernetes(name, version):
    kubernetes_validate.validate(resources()[name], version, strict=True)


def router_pod() -> dict:
    return resources()["Deployment/model-router"]["spec"]["template"]["spec"]


def router_settings() -> Settings:
    config = tomllib.loads(resources()["ConfigMap/model-router"]["data"]["router.toml"])
    return Settings(**config)  # every key a setting; values checked (a bad dns:/// target would fail)


def test_the_router_config_is_valid_settings_with_triton_found_through_the_headless_service():
    settings = router_settings()
    service = resources()["Service/triton-shards"]
    assert service["spec"]["clusterIP"] == "None"
    [target] = settings.triton
    assert target.startswith(f"dns:///{service['metadata']['name']}.") and target.endswith(":8001")
    assert settings.host == "0.0.0.0" and str(settings.model_repository) == "/models"


def test_the_router_drains_within_its_grace_period_and_is_ready_by_grpc_health():
    pod = router_pod()
    [container] = pod["containers"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    from router.app import STOP_GRACE_S, STOP_QUIET_LIMIT_S

    stopping = router_settings().shutdown_grace_s + STOP_QUIET_LIMIT_S + STOP_GRACE_S  # the most it takes
    assert pre_stop + stopping < pod["terminationGracePeriodSeconds"]
    assert container["readinessProbe"]["grpc"]["port"] == router_settings().port
    assert "grpc" not in container["livenessProbe"]  # a Triton outage must not restart the router


def _metric_families() -> set[str]:
    from prometheus_client import REGISTRY

    import router.observability.metrics  # noqa: F401 - registers the router's metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}


def test_the_prometheus_rules_and_the_dashboard_use_only_metrics_the_router_exports():
    import json
    import re

    rules = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    recorded = {rule["record"] for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "model-router.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bmodelrouter[_:][a-z0-9_:]+", expr)}
    exported = _metric_families()
    # Histograms are queried by their _bucket series; counters by their _total series.
    unknown = {name for name in used - recorded if name not in exported}
    assert not unknown, f"rules or dashboard query series the router does not export: {sorted(unknown)}"
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}
    assert {"ModelRouterServerErrors", "ModelRouterShardDown", "ModelRouterNoShard"} <= alerts


def test_the_autoscalers_read_what_the_recording_rules_make_and_scale_what_is_deployed():
    rules = yaml.safe_load((PROJECT_ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    # prometheus-adapter exposes a recorded series with its colons made underscores (docs/kubernetes.md).
    recorded = {
        rule["record"].replace(":", "_") for group in rules["groups"] for rule in group["rules"] if "record" in rule
    }
    found = resources()
    for name, autoscaler in found.items():
        if not name.startswith("HorizontalPodAutoscaler/"):
            continue
        target = autoscaler["spec"]["scaleTargetRef"]
        assert f"{target['kind']}/{target['name']}" in found, name
        for metric in autoscaler["spec"]["metrics"]:
            if metric["type"] == "External":
                assert metric["external"]["metric"]["name"] in recorded, metric


def test_the_routers_share_the_redis_deployed_beside_them():
    service = resources()["Service/model-router-redis"]
    assert router_settings().redis_url == f"redis://{service['metadata']['name']}:6379/0"
