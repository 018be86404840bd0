"""The engine is headless and cheap to import; the tiny model is SDXL's architecture, built the same everywhere."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import engine


def engine_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine.") if not m.name.endswith("__main__"))


@pytest.mark.image
def test_no_engine_module_pulls_in_a_ui():
    code = (
        "import importlib, sys\n"
        f"for name in {engine_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'tui'))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_help_loads_no_heavy_library():
    code = (
        "import sys\n"
        "from engine.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'peft',"
        " 'textual', 'modal', 'face_recognition', 'bitsandbytes', 'numpy'})\n"
        "raise SystemExit(str(heavy) if heavy else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_tiny_model_is_sdxl_shaped_and_deterministic(tmp_path, tiny_model):
    import hashlib

    from diffusers import StableDiffusionXLPipeline

    from engine.models.tiny import ensure_tiny_model

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.vae_scale_factor == 8

    again = ensure_tiny_model(tmp_path)

    def digest(root):
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.safetensors"))}

    assert digest(again) == digest(tiny_model)
