"""Every kustomization renders, and every object it renders is valid Kubernetes."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    KUBERNETES_VERSION,
    KUSTOMIZE_2_FIELDS,
    OPERATOR_KINDS,
    dir_id,
    kustomization_dirs,
    render,
    strict_schema_errors,
)


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=dir_id)
def test_renders_and_validates_strictly(directory: Path) -> None:
    objects = render(directory)
    assert objects, f"{dir_id(directory)} rendered nothing"
    errors = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in OPERATOR_KINDS:
            # Their spec is checked by test_monitoring.py; their metadata is Kubernetes'.
            meta = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            errors += [f"{name}: {e}" for e in strict_schema_errors(obj["metadata"], meta)]
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(part) for part in error.path) or "(root)"
            errors.append(f"{name}: {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{name}: {error.message}")
    assert not errors, "\n".join(errors)


def test_overlays_are_the_cpu_and_gpu_targets() -> None:
    overlays = {path.name for path in kustomization_dirs() if path.parent.name == "overlays"}
    assert overlays == {"cpu", "gpu"}


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=dir_id)
def test_names_are_unique_per_kind(directory: Path) -> None:
    keys = [(obj["kind"], obj["metadata"]["name"]) for obj in render(directory)]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=dir_id)
def test_kustomization_renders_with_old_kustomize_too(directory: Path) -> None:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= KUSTOMIZE_2_FIELDS, set(kustomization) - KUSTOMIZE_2_FIELDS
    for resource in kustomization.get("resources", []):
        assert (directory / resource).is_file(), f"{resource}: kustomize 2 needs `bases:`"
    for base in kustomization.get("bases", []):
        assert (directory / base / "kustomization.yaml").is_file(), base
