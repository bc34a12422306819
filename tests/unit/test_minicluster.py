"""The Flux Operator MiniCluster of the demo, checked against the operator's CRD.

No Kubernetes here: the manifests are validated against the vendored CRD
schema of flux-operator 0.2.1 (tests/unit/schemas/README.md), not applied.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from typing import Any

import pytest

from conduit.testbed import minicluster
from tests.checks import REPO

SCHEMA = REPO / "tests" / "unit" / "schemas" / "flux-operator-0.2.1-minicluster-v1alpha2.json"


def parse_yaml(text: str) -> Any:
    yaml = pytest.importorskip("ruamel.yaml", reason="needs ruamel.yaml (check-jsonschema)")
    return yaml.YAML(typ="safe").load(text)


def closed(schema: Any) -> Any:
    """`schema` with every object that lists its properties closed to others.

    kubectl apply refuses fields a CRD does not know (--validate=strict);
    JSON Schema accepts them unless additionalProperties says otherwise.
    """
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [closed(value) for value in schema]
    return schema


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="needs jsonschema (check-jsonschema)")
    schema = closed(json.loads(SCHEMA.read_text()))
    # OpenAPI v3.0's schema object is a subset of JSON Schema draft 4.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def errors(validator: Any, manifest: Any) -> list[str]:
    found = validator.iter_errors(manifest)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]


def check_object_header(manifest: Any, name: str, namespace: str) -> None:
    """What the API server checks and the CRD schema leaves open."""
    assert manifest["apiVersion"] == "flux-framework.org/v1alpha2"
    assert manifest["kind"] == "MiniCluster"
    assert manifest["metadata"] == {"name": name, "namespace": namespace}


def test_vendored_schema_is_the_minicluster_of_v1alpha2() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["description"] == "MiniCluster is the Schema for a Flux job launcher on K8s"
    flux_container = schema["properties"]["spec"]["properties"]["flux"]["properties"]["container"]
    assert flux_container["properties"]["disable"]["type"] == "boolean"
    assert schema["properties"]["spec"]["required"] == ["containers"]


@pytest.mark.parametrize("size", [1, 3, 8])
def test_generated_manifest_matches_the_crd(validator: Any, size: int) -> None:
    text = minicluster.manifest(size)
    manifest = parse_yaml(text)
    assert manifest == minicluster.minicluster(size)
    assert errors(validator, manifest) == []
    check_object_header(manifest, "flux-conduit", "flux-operator")
    spec = manifest["spec"]
    assert spec["size"] == size
    assert spec["flux"]["container"]["disable"] is True
    [container] = spec["containers"]
    assert container["image"] == spec["flux"]["container"]["image"] == minicluster.DEFAULT_IMAGE
    assert container["command"] == "flux python -m conduit demo"
    assert container["launcher"] is True
    assert container["runFlux"] is True


def test_default_image_is_the_published_release_of_this_version() -> None:
    """The workflow publishes ghcr.io/<repository>:<version> on a tag v<version>,
    and refuses a tag that is not the package's version (tests/test_workflow.py)."""
    done = subprocess.run(
        [sys.executable, "-m", "conduit.testbed", "minicluster", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [version] = re.findall(
        r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE
    )
    images = {c["image"] for c in parse_yaml(done.stdout)["spec"]["containers"]}
    assert images == {f"ghcr.io/flux-conduit/flux-conduit:{version}"}


def broken(change: str) -> dict[str, Any]:
    manifest = copy.deepcopy(minicluster.minicluster(3))
    spec = manifest["spec"]
    if change == "misspelled field":
        spec["flux"]["container"]["disabled"] = spec["flux"]["container"].pop("disable")
    elif change == "size as text":
        spec["size"] = "three"
    elif change == "no containers":
        del spec["containers"]
    elif change == "command as a list":
        spec["containers"][0]["command"] = ["flux", "python", "-m", "conduit", "demo"]
    elif change == "unknown top-level field":
        manifest["specs"] = manifest.pop("spec")
    return manifest


@pytest.mark.parametrize(
    "change",
    [
        "misspelled field",
        "size as text",
        "no containers",
        "command as a list",
        "unknown top-level field",
    ],
)
def test_broken_manifest_fails_validation(validator: Any, change: str) -> None:
    assert errors(validator, broken(change)) != []


def test_command_line_writes_the_manifest_with_its_options(validator: Any) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conduit.testbed",
            "minicluster",
            "4",
            "--image",
            "localhost:5000/flux-conduit:dev",
            "--name",
            "conduit-test",
            "--namespace",
            "default",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == minicluster.manifest(
        4, "localhost:5000/flux-conduit:dev", "conduit-test", "default"
    )
    assert (
        "--image localhost:5000/flux-conduit:dev --name conduit-test --namespace default"
        in (done.stdout.splitlines()[1])
    )
    manifest = parse_yaml(done.stdout)
    assert errors(validator, manifest) == []
    check_object_header(manifest, "conduit-test", "default")
    assert manifest["spec"]["containers"][0]["image"] == "localhost:5000/flux-conduit:dev"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["minicluster", "0"], "1 to"),
        (["minicluster", "2", "--name", "Flux_Conduit"], "--name 'Flux_Conduit'"),
        (["minicluster", "2", "--name", "x" * 62], "at most 63 characters"),
        (["minicluster", "2", "--namespace", "my.ns"], "--namespace 'my.ns'"),
        (["minicluster", "2", "--image", "flux conduit"], "--image 'flux conduit'"),
    ],
)
def test_command_line_refuses_what_kubernetes_would(args: list[str], names: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conduit.testbed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [error] = [line for line in done.stderr.splitlines() if "error:" in line]
    assert names in error
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "value",
    ["yes", "No", "on", "null", "true", "a: b", "x #y", "1.0", "010", "-dash", "ends:", "", "ünï"],
)
def test_yaml_reads_back_every_string_as_written(value: str) -> None:
    assert parse_yaml(minicluster.to_yaml({"key": value, "nested": {"list": [{"k": value}]}})) == {
        "key": value,
        "nested": {"list": [{"k": value}]},
    }


def test_docs_show_the_manifest_as_generated() -> None:
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    [shown] = re.findall(
        r"^\$ python3 -m conduit\.testbed minicluster 3\n(.*?)^```$",
        docs,
        flags=re.MULTILINE | re.DOTALL,
    )
    assert shown == minicluster.manifest(3)
