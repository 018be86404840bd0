"""The container set-up, checked as far as a machine without a Docker engine can.

docker-compose (Debian's package) validates and resolves the compose files; hadolint lints the
Dockerfile; the image's install script runs in a fresh venv and the result runs the demo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    path = shutil.which(name) or (str(Path(sys.executable).parent / name)
                                  if (Path(sys.executable).parent / name).exists() else None)
    if path is None:
        if os.environ.get("LIKENESS_REQUIRE_TOOLS"):  # set by .ci/run: CI must not skip these checks
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def resolved(compose_file: str) -> dict:
    result = subprocess.run([tool("docker-compose"), "-f", compose_file, "config"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MODAL_CONFIG": "", "HF_TOKEN": ""})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_gpu_compose_reserves_the_gpu_and_binds_to_loopback():
    config = resolved("compose.yaml")
    engine, web = config["services"]["engine"], config["services"]["web"]
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert engine["restart"] == "unless-stopped"
    assert "likeness" in engine["command"] and "serve" in engine["command"]
    assert "web" in web["command"]
    assert "tui" in config["services"]["tui"]["profiles"]


def test_compose_ports_are_loopback_only():
    for compose_file in ("compose.yaml", "compose.cpu.yaml"):
        raw = yaml.safe_load((ROOT / compose_file).read_text())
        for name, service in raw["services"].items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{compose_file}: {name} publishes {port} beyond loopback"


def test_data_and_model_cache_live_on_named_volumes_and_modal_token_is_read_only():
    for compose_file in ("compose.yaml", "compose.cpu.yaml"):
        config = resolved(compose_file)
        engine = config["services"]["engine"]
        # docker-compose 1.x resolves volumes to "source:target:mode" strings.
        mounts = {target: (source, mode) for source, target, mode in (v.split(":") for v in engine["volumes"])}
        assert mounts["/data"] == ("likeness-data", "rw")
        assert mounts["/hf-cache"] == ("hf-cache", "rw")
        assert mounts["/home/likeness/.modal.toml"][1] == "ro"
        assert config["volumes"]["likeness-data"]["name"] == "likeness_likeness-data"
        assert engine["environment"]["LIKENESS_HOME"] == "/data" and engine["environment"]["HF_HOME"] == "/hf-cache"


def test_cpu_compose_reserves_no_gpu():
    engine = resolved("compose.cpu.yaml")["services"]["engine"]
    assert "deploy" not in engine


def test_dockerfile_lints_clean():
    result = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_the_shared_install_script():
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 1000:1000" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert "docker/install.sh" in text
    assert "docker/install.sh" in (ROOT / "Makefile").read_text()


def image_pins() -> dict[str, str]:
    """docker/image-pins.txt, the one place the image's GPU stack is pinned: {package: version}."""
    lines = (ROOT / "docker" / "image-pins.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


@pytest.mark.image
def test_the_gpu_stack_is_pinned_in_one_file_that_the_image_ci_modal_and_readme_all_follow():
    pins = image_pins()
    assert set(pins) == {"torch", "xformers", "bitsandbytes"}
    # The Dockerfile and `make image-venv` (CI) install through the script, which reads the file.
    dockerfile, makefile = (ROOT / "Dockerfile").read_text(), (ROOT / "Makefile").read_text()
    assert "docker/image-pins.txt" in dockerfile and "STACK=image" in dockerfile
    assert "docker/image-pins.txt" in makefile and "STACK=image" in makefile
    assert "docker/image-pins.txt" in (ROOT / "docker" / "install.sh").read_text()
    assert '_build_file("docker/image-pins.txt")' in (ROOT / "engine" / "placement" / "cloud" / "modal_app.py").read_text()
    # No second pin anywhere: every version of these packages the README, Dockerfile or Modal image
    # names is the pinned one (the README also names the CPU build of development, torch 2.13).
    readme = (ROOT / "README.md").read_text()
    texts = {"README.md": readme, "Dockerfile": dockerfile,
             "modal_app.py": (ROOT / "engine" / "placement" / "cloud" / "modal_app.py").read_text()}
    for name, version in pins.items():
        assert f"{name} {version}" in readme, f"README.md does not name {name} {version}"
        for where, text in texts.items():
            named = set(re.findall(rf"\b{name}[ =]=?\s*(\d+\.\d+(?:\.\w+)*)", text))
            allowed = {version} | ({"2.13.0", "2.13"} if name == "torch" and where == "README.md" else set())
            assert named <= allowed, f"{where} names {name} {sorted(named - allowed)}, docker/image-pins.txt {version}"


@pytest.mark.slow
def test_install_script_in_a_fresh_venv_then_the_demo_runs(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {**os.environ, "PYTHON": str(python), "EXTRAS": "", "LIKENESS_HOME": str(tmp_path / "home")}
    install = subprocess.run(["bash", str(ROOT / "docker" / "install.sh")], env=env, capture_output=True,
                             text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    demo = subprocess.run([str(venv / "bin" / "likeness"), "demo", "--out", str(tmp_path / "demo"), "--steps", "4"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (tmp_path / "demo" / "run" / "lora.safetensors").is_file()
    assert (tmp_path / "demo" / "generate" / "grid.png").is_file()
