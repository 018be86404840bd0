"""What other tools get from our files: ComfyUI's and kohya's key names, a scale that survives
stripped metadata, byte-identical files, and A1111 metadata that names the LoRA and the base."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.cli import main
from tests.conftest import TEXT_ENCODER_RUN

pytestmark = pytest.mark.slow

CLIP_MODULES = ["mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj"]


def sgm_attention_blocks(unet: dict) -> dict[str, int]:
    """The SDXL UNet's attention blocks in the original (SGM) layout that kohya and ComfyUI name keys by,
    with the transformer depth of each. The rule, from the published layout:

    - input_blocks.0 is conv_in; down level i, layer j is input_blocks.(1 + i*(L+1) + j), L = layers_per_block
      (the +1 is each level's downsampler); its [0] is a ResBlock and its [1] the SpatialTransformer.
    - middle_block is [ResBlock, SpatialTransformer, ResBlock]: middle_block.1.
    - up level i (deepest first), layer j is output_blocks.(i*(L+1) + j), j = 0..L; [1] is the transformer.
    """
    per_level = len(unet["block_out_channels"])
    lpb = unet["layers_per_block"]
    depth = unet["transformer_layers_per_block"]
    depth = depth if isinstance(depth, list) else [depth] * per_level
    blocks = {}
    for i, kind in enumerate(unet["down_block_types"]):
        if "CrossAttn" in kind:
            for j in range(lpb):
                blocks[f"input_blocks.{1 + i * (lpb + 1) + j}.1"] = depth[i]
    blocks["middle_block.1"] = depth[-1]
    for i, kind in enumerate(unet["up_block_types"]):
        if "CrossAttn" in kind:
            for j in range(lpb + 1):
                blocks[f"output_blocks.{i * (lpb + 1) + j}.1"] = depth[::-1][i]
    return blocks


def comfyui_sdxl_lora_names(unet: dict, te_layers: int) -> set[str]:
    """The names ComfyUI's LoRA loader maps for an SDXL model (comfy/lora.py):

    - UNet: every weight 'diffusion_model.<path>.weight' of the SGM UNet is matched by 'lora_unet_<path>',
      dots turned into underscores.
    - CLIP: for layer b of clip_l and module c of (mlp.fc1, mlp.fc2, self_attn.{k,q,v,out}_proj):
      'lora_te1_text_model_encoder_layers_<b>_<c with _>', and the same with 'lora_te2_' for clip_g.
    Any other key is skipped with 'lora key not loaded'.
    """
    names = set()
    for block, depth in sgm_attention_blocks(unet).items():
        for t in range(depth):
            for attn in ("attn1", "attn2"):
                for linear in ("to_q", "to_k", "to_v", "to_out.0"):
                    names.add("lora_unet_" + f"{block}.transformer_blocks.{t}.{attn}.{linear}".replace(".", "_"))
    for prefix in ("lora_te1_", "lora_te2_"):
        for b in range(te_layers):
            for module in CLIP_MODULES:
                names.add(f"{prefix}text_model_encoder_layers_{b}_{module.replace('.', '_')}")
    return names


def kohya_sdxl_lora_names(unet: dict, te_layers: int) -> set[str]:
    """The modules kohya's networks/lora.py adapts in SDXL, named as it names them: prefix 'lora_unet',
    'lora_te1' or 'lora_te2', then the module's path in the SGM UNet or in transformers' CLIPTextModel
    ('text_model.encoder.layers.<b>.<module>'), every '.' turned into '_'. Its UNet targets are the
    Linear layers inside each SpatialTransformer; its text-encoder targets CLIPAttention's and CLIPMLP's."""
    names = set()
    for block, depth in sgm_attention_blocks(unet).items():
        names |= {f"lora_unet_{block}.proj_in".replace(".", "_"), f"lora_unet_{block}.proj_out".replace(".", "_")}
        for t in range(depth):
            inner = [f"{a}.{linear}" for a in ("attn1", "attn2") for linear in ("to_q", "to_k", "to_v", "to_out.0")]
            for linear in (*inner, "ff.net.0.proj", "ff.net.2"):
                names.add("lora_unet_" + f"{block}.transformer_blocks.{t}.{linear}".replace(".", "_"))
    for prefix in ("lora_te1", "lora_te2"):
        for b in range(te_layers):
            for module in CLIP_MODULES:
                names.add(f"{prefix}.text_model.encoder.layers.{b}.{module}".replace(".", "_"))
    return names


@pytest.fixture(scope="module")
def kohya_file(text_encoder_run, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("export") / "me.safetensors"
    assert main(["export", str(text_encoder_run), "--out", str(dest)]) == 0
    return dest


def test_kohya_export_keys_are_the_ones_comfyui_and_kohya_load(kohya_file, tiny_model):
    unet = json.loads((tiny_model / "unet" / "config.json").read_text())
    te_layers = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["num_hidden_layers"]
    keys = load_file(str(kohya_file)).keys()
    modules = {key.rsplit(".", 1)[0].removesuffix(".lora_up").removesuffix(".lora_down") for key in keys}
    comfy, kohya = comfyui_sdxl_lora_names(unet, te_layers), kohya_sdxl_lora_names(unet, te_layers)
    assert not modules - comfy, sorted(modules - comfy)[:5]
    assert not modules - kohya, sorted(modules - kohya)[:5]
    # Every module is whole (down, up, alpha), and both text encoders' attention is there, layer by layer.
    assert set(keys) == {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    for prefix in ("lora_te1_", "lora_te2_"):
        expected = {f"{prefix}text_model_encoder_layers_{b}_self_attn_{p}_proj"
                    for b in range(te_layers) for p in ("q", "k", "v", "out")}
        assert {m for m in modules if m.startswith(prefix)} == expected
    unet_attention = {n for n in comfy if n.startswith("lora_unet_")}
    assert {m for m in modules if m.startswith("lora_unet_")} == unet_attention


def test_run_lora_is_in_kohya_layout_with_alpha_everywhere_and_the_metadata_tools_read(text_encoder_run):
    from engine.training.run_dir import RunDir

    with safe_open(str(text_encoder_run / "lora.safetensors"), "pt") as handle:
        keys, meta = list(handle.keys()), handle.metadata()
    modules = {k.split(".", 1)[0] for k in keys}
    assert set(keys) == {f"{m}.{part}" for m in modules for part in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert {m.split("_")[1] for m in modules} == {"unet", "te1", "te2"}
    record = RunDir(text_encoder_run).read_run()
    rank, alpha = TEXT_ENCODER_RUN["rank"], TEXT_ENCODER_RUN["alpha"]
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == (str(rank), str(float(rank)))
    assert (meta["likeness_training_rank"], meta["likeness_training_alpha"]) == (str(rank), str(alpha))
    assert meta["ss_output_name"] == meta["modelspec.title"] == text_encoder_run.name
    assert meta["ss_resolution"] == "(64, 64)" and meta["modelspec.resolution"] == "64x64"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.date"] == record["started_at"][:10]
    data = (text_encoder_run / "lora.safetensors").read_bytes()
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    # A checkpoint a user can pick is named for its step, as generate's <lora:NAME-stepN:…> tags are.
    with safe_open(str(text_encoder_run / "checkpoints" / "step-000001" / "lora.safetensors"), "pt") as handle:
        assert handle.metadata()["ss_output_name"] == f"{text_encoder_run.name}-step1"
        assert all(k.startswith("lora_") for k in handle.keys())


def test_alpha_over_rank_in_the_file_gives_the_trained_strength(text_encoder_run):
    # The checkpoint keeps peft's own weights beside the LoRA file: (alpha/rank)·up·down as every tool
    # applies it must be (trained alpha / rank)·B·A of the training weights.
    checkpoint = text_encoder_run / "checkpoints" / "step-000001"
    raw = load_file(str(checkpoint / "lora-training-state.safetensors"))
    exported = load_file(str(checkpoint / "lora.safetensors"))
    scale = TEXT_ENCODER_RUN["alpha"] / TEXT_ENCODER_RUN["rank"]
    for trained_as, name in [
        ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
         "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
        ("text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj",
         "lora_te2_text_model_encoder_layers_1_self_attn_v_proj"),
    ]:
        component, module = trained_as.split(".", 1)
        prefix = f"{component}.{module}" if f"{component}.{module}.lora_A.weight" in raw else (
            f"{component}.{module.removeprefix('text_model.')}")
        trained = raw[f"{prefix}.lora_B.weight"] @ raw[f"{prefix}.lora_A.weight"]
        down, up = exported[f"{name}.lora_down.weight"], exported[f"{name}.lora_up.weight"]
        applied = float(exported[f"{name}.alpha"]) / down.shape[0] * up @ down
        assert scale != 1 and trained.abs().max() > 0
        torch.testing.assert_close(applied, scale * trained)


def draw(base: Path, lora: Path | None) -> np.ndarray:
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    image = pipe("a photo of sks person", num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator("cpu").manual_seed(0)).images[0]
    return np.asarray(image)


def test_a_loader_that_ignores_metadata_draws_the_same_picture(text_encoder_run, tiny_model, tmp_path):
    lora = text_encoder_run / "lora.safetensors"
    stripped = tmp_path / "stripped.safetensors"
    save_file(load_file(str(lora)), str(stripped))  # no metadata at all
    with safe_open(str(stripped), "pt") as handle:
        assert not handle.metadata()
    with_metadata = draw(tiny_model, lora)
    assert np.array_equal(draw(tiny_model, stripped), with_metadata)
    assert not np.array_equal(draw(tiny_model, None), with_metadata), "the LoRA should change the picture"


def test_diffusers_draws_the_run_lora_pixel_exact_as_its_diffusers_layout(text_encoder_run, tiny_model, tmp_path):
    # The run's own file (kohya's layout) and the same LoRA in diffusers' layout, as runs were written
    # before: diffusers must draw the very same pixels from both, text encoders included.
    peft_layout = tmp_path / "me-diffusers.safetensors"
    assert main(["export", str(text_encoder_run), "--format", "diffusers", "--out", str(peft_layout)]) == 0
    keys = load_file(str(peft_layout)).keys()
    assert any(k.startswith("unet.") and k.endswith(".lora.down.weight") for k in keys)
    assert any(k.startswith("text_encoder_2.text_model.") and ".lora_linear_layer." in k for k in keys)
    assert np.array_equal(draw(tiny_model, text_encoder_run / "lora.safetensors"), draw(tiny_model, peft_layout))


def test_same_seed_runs_in_two_processes_are_byte_identical(text_encoder_run, dataset, home, tmp_path, kohya_file):
    from engine.training.run_dir import RunDir

    again = tmp_path / text_encoder_run.name  # the export carries the run's name
    script = ("import sys; from pathlib import Path; from engine.settings import Settings; "
              "from engine.training.trainer import train; from tests.conftest import tiny_train_config, TEXT_ENCODER_RUN; "
              "train(tiny_train_config(Path(sys.argv[1]), Path(sys.argv[2]), **TEXT_ENCODER_RUN), Settings())")
    env = {**os.environ, "LIKENESS_HOME": str(home), "PYTHONHASHSEED": "random"}
    subprocess.run([sys.executable, "-c", script, str(dataset), str(again)], check=True, env=env, timeout=600,
                   cwd=Path(__file__).parent.parent)
    same_day = (RunDir(again).read_run()["started_at"][:10] == RunDir(text_encoder_run).read_run()["started_at"][:10])
    pairs = [(again / "lora.safetensors", text_encoder_run / "lora.safetensors")]
    assert main(["export", str(again), "--out", str(tmp_path / "me.safetensors")]) == 0
    pairs.append((tmp_path / "me.safetensors", kohya_file))
    for one, other in pairs:
        if same_day:  # the files name the day their run started (modelspec.date)
            assert one.read_bytes() == other.read_bytes()
        else:
            a, b = load_file(str(one)), load_file(str(other))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_images_name_the_lora_and_base_with_their_hashes(text_encoder_run, settings, tmp_path):
    from PIL import Image

    from engine.events import Log
    from engine.generation.generator import GenerateConfig, generate
    from engine.models.base_model import resolve_base

    events = []
    long_words = " ".join(["word"] * 100)
    result = generate(GenerateConfig(lora=text_encoder_run, prompt="a photo of {token} {class_word} {extra}",
                                     sweeps={"extra": ["smiling", long_words]}, steps=1, out=tmp_path / "gen"),
                      settings, on_event=events.append)
    lora = text_encoder_run / "lora.safetensors"
    data = lora.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    autov3 = hashlib.sha256(data[header_end:]).hexdigest()
    short, long = result.images
    sidecar = short.sidecar
    assert sidecar["lora_name"] == text_encoder_run.name
    assert sidecar["lora_sha256"] == hashlib.sha256(data).hexdigest() and sidecar["lora_autov3"] == autov3
    with Image.open(short.path) as image:
        parameters = image.text["parameters"]
    assert f"<lora:{text_encoder_run.name}:1>" in parameters
    assert f'Lora hashes: "{text_encoder_run.name}: {autov3[:12]}"' in parameters
    model = parameters.split("Model: ", 1)[1].split(",", 1)[0]
    assert resolve_base(model, settings).location == sidecar["base"]  # a Model: that --base accepts
    unet_weights = Path(sidecar["base"]) / "unet" / "diffusion_pytorch_model.safetensors"
    assert f"Model hash: {hashlib.sha256(unet_weights.read_bytes()).hexdigest()[:10]}," in parameters
    # Prompts past the text encoders' 77 tokens are encoded as plain diffusers does, and said so.
    warnings = [e.message for e in events if isinstance(e, Log) and "tokens" in e.message]
    assert len(warnings) == 1 and "ignored" in warnings[0]
    assert long.sidecar["prompt_truncated"] and not sidecar["prompt_truncated"]


def test_an_old_diffusers_layout_run_still_generates_exports_and_resumes(text_encoder_run, kohya_file, dataset,
                                                                        settings, tmp_path):
    import shutil

    from engine.generation.generator import GenerateConfig, generate
    from engine.models.lora_files import read_lora_modules, write_diffusers_lora
    from engine.training.run_dir import RunDir
    from engine.training.trainer import train
    from tests.conftest import tiny_train_config

    # A run as likeness wrote them before kohya's layout: every LoRA file in diffusers' layout.
    old = tmp_path / text_encoder_run.name
    shutil.copytree(text_encoder_run, old, ignore=shutil.ignore_patterns("generations", "export"))
    for lora in [old / "lora.safetensors", *old.glob("checkpoints/*/lora.safetensors")]:
        write_diffusers_lora(lora, read_lora_modules(lora)[0])
        assert all(k.startswith(("unet.", "text_encoder")) for k in load_file(str(lora)))

    def picture(run: Path) -> np.ndarray:
        from PIL import Image

        result = generate(GenerateConfig(lora=run, steps=1, out=tmp_path / f"gen-{run.parent.name}"), settings)
        with Image.open(result.images[0].path) as image:
            return np.asarray(image.convert("RGB"))

    assert np.array_equal(picture(old), picture(text_encoder_run))
    assert main(["export", str(old), "--out", str(tmp_path / "me.safetensors")]) == 0
    exported, expected = load_file(str(tmp_path / "me.safetensors")), load_file(str(kohya_file))
    assert exported.keys() == expected.keys() and all(torch.equal(exported[k], expected[k]) for k in exported)

    # Interrupted after step 1, from before checkpoints kept the training state: resume reads the
    # checkpoint's diffusers-layout LoRA, and the run finishes in kohya's layout.
    (old / "checkpoints" / "step-000001" / "lora-training-state.safetensors").unlink()
    (old / "lora.safetensors").unlink()
    record = RunDir(old).read_run()
    RunDir(old).write_run({**record, "status": "cancelled", "steps_done": 1})
    train(tiny_train_config(dataset, old, **{**TEXT_ENCODER_RUN, "resume": True}), settings)
    assert RunDir(old).read_run()["status"] == "done"
    assert all(k.startswith("lora_") for k in load_file(str(old / "lora.safetensors")))


def test_export_check_maps_every_module_of_the_run_and_says_so(text_encoder_run, tmp_path, capsys):
    dest = tmp_path / "me.safetensors"
    assert main(["export", str(text_encoder_run), "--out", str(dest), "--check"]) == 0
    out = capsys.readouterr().out
    modules = len({k.split(".", 1)[0] for k in load_file(str(dest))})
    assert f"check: {modules} of {modules} LoRA modules map to SDXL base 1.0 in kohya, A1111, ComfyUI naming" in out
    assert "shapes not checked" in out  # the tiny model's layers are narrower than SDXL's
    assert main(["export", str(text_encoder_run), "--format", "diffusers", "--check",
                 "--out", str(tmp_path / "d.safetensors")]) == 0
    assert f"{modules} of {modules} LoRA modules map to SDXL base 1.0 in diffusers naming" in capsys.readouterr().out
