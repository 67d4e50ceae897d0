"""cluster/'s deployment definitions: the KubeRay manifests validate against KubeRay's CRD schemas
(strictly, as kubeconform -strict: an unknown field is an error), the launcher YAML against Ray's
own launcher schema, and every image tag, Ray version and Python version agrees with the
Dockerfile, pyproject.toml and requirements/constraints.txt."""

from __future__ import annotations

import copy
import json
import re
import tomllib

import pytest
import yaml

from tests.conftest import REPO

SCHEMAS = REPO.parent / "shared" / "schemas" / "kuberay"
CLUSTER = REPO / "cluster"


def _constraint(name: str) -> str:
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.split("==", 1)[1].split("+", 1)[0]  # torch's local version (+cpu) is the CI wheel's
    raise AssertionError(f"{name} is not pinned in requirements/constraints.txt")


def _dockerfile_args() -> dict[str, str]:
    text = (CLUSTER / "image" / "Dockerfile").read_text()
    return {name: value for name, value in re.findall(r"^ARG (\w+)=(\S+)$", text, re.M)}


def _strict(schema):
    """The schema with ``additionalProperties: false`` wherever it lists properties and does not
    say otherwise: Kubernetes prunes unknown fields silently; kubeconform -strict refuses them."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(value) for value in schema]
    return schema


def _validate(manifest: dict, kind: str) -> None:
    import jsonschema

    schema = json.loads((SCHEMAS / f"{kind}.v1.schema.json").read_text())
    strict = _strict(schema)
    # apiVersion/kind/metadata are the API server's, outside the CRD's openAPIV3Schema detail
    strict["properties"]["metadata"] = {"type": "object"}
    jsonschema.validate(manifest, strict)


needs_schemas = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"KubeRay CRD schemas not found at {SCHEMAS}")


@needs_schemas
def test_raycluster_manifest_validates_strictly_against_the_crd_schema():
    import jsonschema

    manifest = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayCluster")
    _validate(manifest, "RayCluster")
    typo = copy.deepcopy(manifest)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = {}  # a field KubeRay would silently drop
    with pytest.raises(jsonschema.ValidationError, match="rayStartParam"):
        _validate(typo, "RayCluster")


def test_raycluster_is_an_autoscaling_cpu_head_with_a_gpu_group_and_token_auth():
    spec = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]["template"]["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [gpu] = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"]
    container = gpu["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    for pod in (head, gpu["template"]["spec"]):  # /dev/shm for the object store, from a memory volume
        [volume] = [v for v in pod["volumes"] if v["emptyDir"].get("medium") == "Memory"]
        assert {"name": volume["name"], "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_launcher_definition_validates_against_rays_launcher_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0
    assert config["idle_timeout_minutes"] > 0 and config["provider"]["type"] == "aws"
    typo = {**copy.deepcopy(config), "idle_timeout_minute": 5}
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(prepare_config(typo))


def test_images_ray_and_python_versions_agree_everywhere():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ray_version, torch_version = _constraint("ray"), _constraint("torch")
    args = _dockerfile_args()
    assert args["RAY_VERSION"] == ray_version and args["TORCH_VERSION"] == torch_version
    python = args["PYTHON"]  # py311: the oldest Python the project supports, the one CI runs
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"]).groups()
    assert python == f"py{''.join(minimum)}"

    tag = re.compile(rf"ghcr\.io/mixpipe/node:{re.escape(project['version'])}-ray{re.escape(ray_version)}-{python}-(cpu|cu\d+)")
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())["spec"]
    assert cluster["rayVersion"] == ray_version
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    workers = [g["template"]["spec"]["containers"][0]["image"] for g in cluster["workerGroupSpecs"]]
    launcher = yaml.safe_load((CLUSTER / "aws.yaml").read_text())["docker"]
    for image, variant in [(head, "cpu"), *((w, "cu") for w in workers), (launcher["head_image"], "cpu"),
                           (launcher["image"], "cu")]:
        match = tag.fullmatch(image)
        assert match and match.group(1).startswith(variant), image
    assert f"-{args['VARIANT']}" in launcher["image"]  # the Dockerfile's default build is the GPU workers' image


def test_dockerfile_installs_only_pinned_versions():
    text = (CLUSTER / "image" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-\$\{VARIANT\}$", text, re.M)
    installs = re.findall(r"pip install[^&\n]*", text)
    assert len(installs) == 2
    torch_install, project_install = installs
    assert '"torch==${TORCH_VERSION}"' in torch_install and "--index-url" in torch_install
    assert "-c /tmp/constraints.txt ." in project_install  # every other package at its constrained version
    assert "grep -v '^torch==' requirements/constraints.txt > /tmp/constraints.txt" in text


def kuberay_rayjob_rules(manifest: dict) -> None:
    """What KubeRay's admission checks (``ValidateRayJobMetadata``/``ValidateRayJobSpec``) refuse,
    for a RayJob on an existing cluster; the CRD schema does not say these."""
    name, spec = manifest["metadata"]["name"], manifest["spec"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name  # DNS-1035, cluster name room
    assert spec["clusterSelector"].get("ray.io/cluster"), "a selector without the cluster's name"
    assert spec.get("submissionMode", "K8sJobMode") != "SidecarMode"  # refused with clusterSelector
    assert not spec.get("suspend")  # refused with clusterSelector
    if spec.get("ttlSecondsAfterFinished", 0) > 0:
        assert spec.get("shutdownAfterJobFinishes") is True  # a TTL without shutdown is refused
    assert spec.get("backoffLimit", 0) >= 0
    yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}")  # KubeRay parses it as YAML


@needs_schemas
def test_rayjob_template_validates_strictly_and_meets_kuberays_rules():
    import jsonschema

    manifest = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    _validate(manifest, "RayJob")
    typo = copy.deepcopy(manifest)
    typo["spec"]["ttlSecondAfterFinished"] = 60
    with pytest.raises(jsonschema.ValidationError, match="ttlSecondAfterFinished"):
        _validate(typo, "RayJob")


def test_rayjob_runs_on_the_raycluster_of_raycluster_yaml_and_is_removed_after_an_hour():
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    kuberay_rayjob_rules(job)
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600 and job["spec"]["submissionMode"] == "HTTPMode"
    assert "rayClusterSpec" not in job["spec"]  # an existing cluster: the RayJob never creates or deletes one
