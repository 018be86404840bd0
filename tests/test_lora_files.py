"""LoRA files at full SDXL size, without a model: every module our writer names maps onto SDXL base
1.0 (built on the meta device) under kohya's, A1111's and ComfyUI's naming rules; kohya's hashes; and
malformed LoRAs refused in one line (exit 2, HTTP 422) before anything loads them."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from engine.cli import main
from engine.errors import LikenessError
from tests.test_interop import comfyui_sdxl_lora_names, kohya_sdxl_lora_names

# diffusers' config.json of stabilityai/stable-diffusion-xl-base-1.0's UNet, as the published file has it
# (a copy here, so that the test does not read the constants it checks).
SDXL_UNET = {"block_out_channels": [320, 640, 1280], "layers_per_block": 2,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": [1, 2, 10]}
TE1_LAYERS, TE2_LAYERS = 12, 32


@pytest.fixture(scope="module")
def sdxl():
    from engine.models.lora_compatibility import sdxl_base_modules

    return sdxl_base_modules()


@pytest.fixture(scope="module")
def full_size_modules(sdxl) -> dict:
    """What likeness trains on full-size SDXL (the attention projections of the UNet and both text
    encoders), at rank 4 with random weights, keyed as the writer takes them."""
    generator = torch.Generator().manual_seed(0)
    modules = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        targets = ("to_q", "to_k", "to_v", "to_out.0") if component == "unet" else ("q_proj", "k_proj", "v_proj", "out_proj")
        for path, shape in sdxl.component(component).items():
            if path.endswith(targets) and (component != "unet" or ".transformer_blocks." in path):
                modules[f"{component}.{path}"] = (torch.randn(4, shape[1], generator=generator),
                                                  torch.randn(shape[0], 4, generator=generator))
    return modules


@pytest.fixture(scope="module")
def full_size_file(full_size_modules, tmp_path_factory) -> Path:
    from engine.models.lora_files import LoraInfo, write_kohya_lora

    dest = tmp_path_factory.mktemp("full") / "me.safetensors"
    return write_kohya_lora(dest, full_size_modules, LoraInfo(name="me", resolution=1024, rank=4, alpha=8.0,
                                                              date="2026-01-02", base="stabilityai/sdxl"))


def lora_modules(path: Path) -> set[str]:
    return {key.split(".", 1)[0] for key in load_file(str(path))}


def test_sdxl_base_is_built_on_the_meta_device_in_seconds(sdxl):
    from engine.models.lora_compatibility import sdxl_base_modules

    sdxl_base_modules.cache_clear()
    started = time.perf_counter()
    rebuilt = sdxl_base_modules()
    assert time.perf_counter() - started < 30  # about 3 s on an idle core; no weights, no download
    assert rebuilt == sdxl
    # SDXL base 1.0: 70 transformer blocks of 4 + 4 attention projections; CLIP-L 12 layers, bigG 32.
    assert sum(p.endswith("attn1.to_q") for p in sdxl.unet) == 70
    assert sdxl.unet["mid_block.attentions.0.transformer_blocks.9.attn2.to_k"] == (1280, 2048)
    assert sum(p.endswith("self_attn.q_proj") for p in sdxl.text_encoder) == TE1_LAYERS
    assert sdxl.text_encoder_2["text_model.encoder.layers.31.self_attn.q_proj"] == (1280, 1280)


def test_every_module_of_a_full_size_lora_maps_under_kohya_a1111_and_comfyui_naming(full_size_file):
    from engine.models.lora_compatibility import check_lora_compatibility

    report = check_lora_compatibility(full_size_file)
    assert report.modules == 560 + 4 * (TE1_LAYERS + TE2_LAYERS) == 736
    assert report.matched == {"kohya": 736, "A1111": 736, "ComfyUI": 736}
    assert report.ok and "736 of 736" in report.summary()
    # And against the key sets written out from each loader's rule (tests/test_interop.py), not ours.
    modules = lora_modules(full_size_file)
    comfy = comfyui_sdxl_lora_names(SDXL_UNET, TE2_LAYERS)
    kohya = kohya_sdxl_lora_names(SDXL_UNET, TE2_LAYERS)
    assert not modules - comfy and not modules - kohya
    unet = {m for m in modules if m.startswith("lora_unet_")}
    assert unet == {n for n in comfy if n.startswith("lora_unet_")} and len(unet) == 560
    assert {m for m in modules if m.startswith("lora_te1_")} == {
        f"lora_te1_text_model_encoder_layers_{b}_self_attn_{p}_proj" for b in range(TE1_LAYERS) for p in "qkv"} | {
        f"lora_te1_text_model_encoder_layers_{b}_self_attn_out_proj" for b in range(TE1_LAYERS)}


def test_the_check_fails_loudly_on_a_module_no_tool_would_load(full_size_file, tmp_path):
    from engine.models.lora_compatibility import check_lora_compatibility

    tensors = load_file(str(full_size_file))
    # input_blocks.3 is level 0's downsampler: no transformer there, so every tool skips it.
    stray = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"
    tensors.update({f"{stray}.lora_down.weight": torch.zeros(4, 320), f"{stray}.lora_up.weight": torch.zeros(320, 4),
                    f"{stray}.alpha": torch.tensor(4.0)})
    save_file(tensors, str(tmp_path / "stray.safetensors"))
    with pytest.raises(LikenessError, match=r"1 of 737 LoRA modules do not map to SDXL base 1.0 in kohya.*input_blocks_3_1"):
        check_lora_compatibility(tmp_path / "stray.safetensors")

    # A text-encoder module at the other encoder's width: the name maps, the layer does not fit.
    tensors = load_file(str(full_size_file))
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    tensors[f"{name}.lora_down.weight"] = torch.zeros(4, 1280)
    tensors[f"{name}.lora_up.weight"] = torch.zeros(1280, 4)
    save_file(tensors, str(tmp_path / "wide.safetensors"))
    with pytest.raises(LikenessError, match=r"1 LoRA modules do not fit SDXL base 1.0's layers.*\[768, 768\]"):
        check_lora_compatibility(tmp_path / "wide.safetensors")


def test_each_module_carries_alpha_and_the_trained_strength(full_size_file, full_size_modules):
    tensors = load_file(str(full_size_file))
    for key, (down, up) in list(full_size_modules.items())[::50]:
        component, path = key.split(".", 1)
        name = next(k for k in tensors if k.endswith(".lora_down.weight") and torch.equal(tensors[k], down))
        name = name.removesuffix(".lora_down.weight")
        alpha, rank = float(tensors[f"{name}.alpha"]), tensors[f"{name}.lora_down.weight"].shape[0]
        # What kohya, A1111 and ComfyUI apply: (alpha / rank) · up · down; the writer's modules hold the
        # trained strength already, so alpha = rank.
        applied = (alpha / rank) * tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]
        torch.testing.assert_close(applied, up @ down)


def test_kohya_file_reads_back_to_the_same_modules_and_exports_to_diffusers(full_size_file, full_size_modules,
                                                                           tmp_path):
    from engine.models.lora_compatibility import check_lora_compatibility
    from engine.models.lora_files import read_lora_modules, write_diffusers_lora

    modules, _ = read_lora_modules(full_size_file)
    assert modules.keys() == full_size_modules.keys()
    for key, (down, up) in modules.items():
        assert torch.equal(down, full_size_modules[key][0]) and torch.equal(up, full_size_modules[key][1])
    diffusers = write_diffusers_lora(tmp_path / "d.safetensors", modules)
    keys = load_file(str(diffusers)).keys()
    assert "unet.mid_block.attentions.0.transformer_blocks.9.attn2.to_out.0.lora.up.weight" in keys
    assert "text_encoder_2.text_model.encoder.layers.31.self_attn.q_proj.lora_linear_layer.down.weight" in keys
    assert check_lora_compatibility(diffusers).matched == {"diffusers": 736}


def test_metadata_and_hashes_are_the_ones_kohya_writes(full_size_file):
    with safe_open(str(full_size_file), "pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "4.0")  # the file's: scale folded in
    assert (meta["likeness_training_rank"], meta["likeness_training_alpha"]) == ("4", "8.0")  # as trained
    assert meta["ss_resolution"] == "(1024, 1024)" and meta["ss_output_name"] == "me"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert (meta["modelspec.title"], meta["modelspec.resolution"], meta["modelspec.date"]) == (
        "me", "1024x1024", "2026-01-02")
    # kohya's precalculate_safetensors_hashes: the file of the tensors with only the ss_* metadata;
    # the model hash is sha256 of its data after the header, the legacy hash 64 KiB from 1 MiB.
    raw = save(tensors, metadata={k: v for k, v in meta.items() if k.startswith("ss_")})
    assert len(raw) > 0x110000  # big enough that the legacy hash reads real bytes
    assert meta["sshs_legacy_hash"] == hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]
    # A1111 takes sshs_model_hash as the file's hash: it must be what A1111 computes from the file itself.
    data = full_size_file.read_bytes()
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()


# --- malformed LoRAs -------------------------------------------------------------------------------

KEY = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"


def tiny_lora(**change) -> dict:
    tensors = {f"{KEY}.lora_down.weight": torch.full((4, 64), 0.01), f"{KEY}.lora_up.weight": torch.full((64, 4), 0.01),
               f"{KEY}.alpha": torch.tensor(4.0)}
    tensors.update(change)
    return {k: v for k, v in tensors.items() if v is not None}


def huge_header(entries: int) -> bytes:
    header = b"{" + b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(entries)) + b"}"
    return len(header).to_bytes(8, "little") + header


MALFORMED = {
    "all NaN": (lambda p: save_file(tiny_lora(**{f"{KEY}.lora_up.weight": torch.full((64, 4), math.nan)}), p),
                "NaN or infinite"),
    "one +Inf": (lambda p: save_file(tiny_lora(**{f"{KEY}.lora_down.weight": torch.tensor(
        [[math.inf] + [0.0] * 63] + [[0.0] * 64] * 3)}), p), "1 of its values are NaN or infinite"),
    "bf16 NaN": (lambda p: save_file({k: v.to(torch.bfloat16) for k, v in tiny_lora(
        **{f"{KEY}.lora_up.weight": torch.full((64, 4), math.nan)}).items()}, p), "NaN or infinite"),
    "only down weights": (lambda p: save_file(tiny_lora(**{f"{KEY}.lora_up.weight": None}), p),
                          "have down weights but no up weights"),
    "1-D lora_A": (lambda p: save_file({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight":
                                        torch.zeros(64), "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
                                        ".lora_B.weight": torch.zeros(64, 4)}, p), "1 dimension(s)"),
    "ranks differ": (lambda p: save_file(tiny_lora(**{f"{KEY}.lora_up.weight": torch.zeros(64, 8)}), p),
                     "do not multiply"),
    "1,000,000 entries": (lambda p: Path(p).write_bytes(huge_header(1_000_000)), "a LoRA's is under 16 MiB"),
    "150,000 entries": (lambda p: Path(p).write_bytes(huge_header(150_000)), "lists 150,000 tensors"),
    "offsets past the end": (lambda p: Path(p).write_bytes(
        (lambda h: len(h).to_bytes(8, "little") + h)(b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}')),
        "lies outside the file"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_lora_is_refused_in_one_line_by_generate(case, tmp_path, capsys):
    write, needle = MALFORMED[case]
    lora = tmp_path / "bad.safetensors"
    write(str(lora))
    started = time.perf_counter()
    code = main(["generate", "--base", "tiny", "--lora", str(lora), "--steps", "1", "--width", "64",
                 "--out", str(tmp_path / "gen")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - started < 10  # the million-entry header took 64 s and 2.7 GB to fail
    assert not (tmp_path / "gen").exists()


@pytest.mark.slow
def test_a_malformed_lora_is_refused_by_export_and_check(text_encoder_run, tmp_path, capsys):
    import shutil

    from engine.models.lora_compatibility import check_lora_compatibility

    run = tmp_path / "run"
    shutil.copytree(text_encoder_run, run)
    MALFORMED["all NaN"][0](str(run / "lora.safetensors"))
    code = main(["export", str(run), "--out", str(tmp_path / "me.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "NaN or infinite" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "me.safetensors").exists()
    with pytest.raises(LikenessError, match="NaN or infinite"):
        check_lora_compatibility(run / "lora.safetensors")


def test_the_service_refuses_a_malformed_lora_at_submit(tmp_path, photos):
    from tests.service_helpers import Service

    home = tmp_path / "home"
    (home / "loras").mkdir(parents=True)
    MALFORMED["only down weights"][0](str(home / "loras" / "half.safetensors"))
    service = Service(home).start()
    try:
        answer = service.post("/jobs", json={"kind": "generate", "config": {
            "lora": "loras/half.safetensors", "base": "tiny", "out": "runs/gen", "steps": 1, "width": 64}})
        assert answer.status_code == 422, answer.text
        detail = answer.json()["detail"]
        assert detail.startswith("config.lora") and "no up weights" in detail and "\n" not in detail
        assert str(home) not in detail  # paths relative to the home, as every other field error
        assert service.get("/jobs").json() == []  # nothing queued
    finally:
        service.stop()
