"""What ships besides the code: the Dockerfile, the dependency lock, the Kubernetes manifests and the
compose file, linted and validated against their schemas (the image itself is built and run in test_image)."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tests.go_tools import go_install, go_module_dir

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.7.1"  # the newest that builds with Go 1.26
KEDA = "github.com/kedacore/keda/v2@v2.18.0"  # the CRDs our ScaledObjects are written against
KUBERNETES_VERSION = "1.33"
OVERLAYS = ["kafka", "pubsub"]


def tool(name: str) -> str:
    """A tool installed with the test dependencies, next to this interpreter."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is missing: run make install"
    return found


def test_the_dockerfile_passes_hadolint() -> None:
    command = [tool("hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_final_image_runs_the_worker_as_a_non_root_user_with_a_healthcheck() -> None:
    final_stage = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 10001:10001$", final_stage, re.M)
    assert re.search(r'^HEALTHCHECK .* CMD \["connector", "healthcheck"\]$', final_stage, re.M)
    assert 'ENTRYPOINT ["connector"]' in final_stage and 'CMD ["run"]' in final_stage
    assert "pip install" not in final_stage, "the final stage copies the built environment, it installs nothing"


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pinned = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\$", (DEPLOY / "requirements.lock").read_text(), re.M))
    pinned = {_normalise(name): version for name, version in pinned.items()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in map(Requirement, project["dependencies"]):
        version = pinned.get(_normalise(requirement.name))
        assert version is not None, f"{requirement.name} is not in deploy/requirements.lock: run make lock"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} is outside {requirement.specifier}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_rendered_manifest_validates_against_its_schema(overlay: str) -> None:
    documents = render(overlay)
    kinds = {d["kind"] for d in documents}
    assert kinds >= {"Deployment", "ConfigMap", "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"}
    for document in documents:
        if document["apiVersion"].startswith("keda.sh/"):
            keda_validator(document["kind"]).validate(document)
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rendered_parts_fit_together(overlay: str) -> None:
    receiver = "payment-connector-receiver"  # checked in the next test
    by_kind = {d["kind"]: d for d in render(overlay) if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") != receiver}
    deployment, config = by_kind["Deployment"], by_kind["ConfigMap"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    pod_labels = pod["metadata"]["labels"].items()
    for selecting in (by_kind["PodDisruptionBudget"], deployment):
        assert selecting["spec"]["selector"]["matchLabels"].items() <= pod_labels, selecting["kind"]
    assert by_kind["Service"]["spec"]["selector"].items() <= pod_labels
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    assert config["data"]["CONNECTOR_SOURCE"] == overlay
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(config["data"]["CONNECTOR_SHUTDOWN_TIMEOUT_S"]) + 10
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert by_kind["ScaledObject"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    trigger = by_kind["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == by_kind["TriggerAuthentication"]["metadata"]["name"]
    if overlay == "kafka":
        assert trigger["metadata"]["consumerGroup"] == config["data"]["KAFKA_GROUP_ID"]
        assert trigger["metadata"]["topic"] == config["data"]["KAFKA_TOPIC"]
    else:
        assert trigger["metadata"]["subscriptionName"].endswith("/" + config["data"]["PUBSUB_SUBSCRIPTION"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_receiver_is_apart_and_queues_where_the_workers_read(overlay: str) -> None:
    documents = render(overlay)
    named = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"]): d
             for d in documents}  # fmt: skip
    receiver = named[("Deployment", "payment-connector-receiver")]
    pod = receiver["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"] == ["receive"]
    worker_labels = named[("Deployment", "payment-connector")]["spec"]["template"]["metadata"]["labels"].items()
    receiver_labels = pod["metadata"]["labels"].items()
    for service in ("payment-connector-notifications", "payment-connector-receiver-metrics"):
        selector = named[("Service", service)]["spec"]["selector"].items()
        assert selector <= receiver_labels and not selector <= worker_labels, service
    assert not named[("Service", "payment-connector")]["spec"]["selector"].items() <= receiver_labels
    public = named[("Service", "payment-connector-notifications")]
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["notify"]  # never /metrics
    assert "prometheus.io/scrape" not in public["metadata"].get("annotations", {})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = named[("ConfigMap", "payment-connector-receiver")]["data"]
    worker_config = named[("ConfigMap", "payment-connector")]["data"]
    assert (int(config["NOTIFY_HTTP_PORT"]), int(config["CONNECTOR_HTTP_PORT"])) == (ports["notify"], ports["http"])
    shared = [
        k
        for k in ("CONNECTOR_SOURCE", "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "PUBSUB_PROJECT_ID", "PUBSUB_SUBSCRIPTION")
        if k in worker_config
    ]
    assert {k: config.get(k) for k in shared} == {k: worker_config[k] for k in shared}
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(config["NOTIFY_REQUEST_TIMEOUT_S"])
    secrets = next(v for v in pod["spec"]["volumes"] if v["name"] == "secrets")["secret"]["secretName"]
    template = yaml.safe_load((DEPLOY / "kubernetes" / "receiver-secret.template.yaml").read_text())
    kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
    assert template["metadata"]["name"] == secrets and set(template["stringData"].values()) == {""}
    assert "CTP_CLIENT_SECRET" not in template["stringData"]  # no commercetools credentials on the internet's side


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_payment_api_component_gives_the_receiver_its_own_credentials(overlay: str, tmp_path: Path) -> None:
    """An overlay with the optional component: the API enabled for the workers' project, and /run/secrets
    made of the webhook secrets and the API's own client credentials."""
    documents = render_with(overlay, DEPLOY / "kubernetes" / "components" / "payment-api", tmp_path)
    for document in documents:
        if document["kind"] not in ("ScaledObject", "TriggerAuthentication"):
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    configs = {d["metadata"]["name"].rsplit("-", 1)[0]: d["data"] for d in documents if d["kind"] == "ConfigMap"}
    receiver, worker = configs["payment-connector-receiver"], configs["payment-connector"]
    assert receiver["PAYMENT_API_ENABLED"] == "true"
    assert {k: receiver[k] for k in ("CTP_PROJECT_KEY", "CTP_AUTH_URL", "CTP_API_URL")} == {
        k: worker[k] for k in ("CTP_PROJECT_KEY", "CTP_AUTH_URL", "CTP_API_URL")
    }
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "payment-connector-receiver")
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets")
    names = [source["secret"]["name"] for source in volume["projected"]["sources"]]
    template = yaml.safe_load((DEPLOY / "kubernetes" / "payment-api-secret.template.yaml").read_text())
    kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
    assert names == ["payment-connector-receiver", template["metadata"]["name"]]
    assert set(template["stringData"]) == {"CTP_CLIENT_ID", "CTP_CLIENT_SECRET"} and set(template["stringData"].values()) == {""}


def test_the_secret_template_validates_and_holds_no_values() -> None:
    secret = yaml.safe_load((DEPLOY / "kubernetes" / "secret.template.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    assert set(secret["stringData"].values()) == {""}
    mounted = next(v for v in _deployment_volumes() if v["name"] == "secrets")
    assert mounted["secret"]["secretName"] == secret["metadata"]["name"]


def test_the_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "docker-compose.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@cache
def render(overlay: str) -> list[dict[str, Any]]:
    built = subprocess.run(
        [str(go_install(KUSTOMIZE)), "build", str(DEPLOY / "kubernetes" / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def render_with(overlay: str, component: Path, folder: Path) -> list[dict[str, Any]]:
    """An overlay with an optional component, rendered through a kustomization written in ``folder``."""
    (folder / "kustomization.yaml").write_text(  # kustomize takes relative paths only
        f"resources: [{os.path.relpath(DEPLOY / 'kubernetes' / 'overlays' / overlay, folder)}]\n"
        f"components: [{os.path.relpath(component, folder)}]\n"
    )
    built = subprocess.run(
        [str(go_install(KUSTOMIZE)), "build", "--load-restrictor", "LoadRestrictionsNone", str(folder)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(built.stdout) if d]


@cache
def keda_validator(kind: str) -> jsonschema.Draft7Validator:
    crd_file = go_module_dir(KEDA) / "config" / "crd" / "bases" / f"keda.sh_{kind.lower()}s.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def _deployment_volumes() -> list[dict[str, Any]]:
    deployment = next(d for d in render("kafka") if d["kind"] == "Deployment")
    volumes: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["volumes"]
    return volumes


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
