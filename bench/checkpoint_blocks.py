"""The per-block table the checkpointing plan chooses from: what each block of SDXL holds for backward,
and what recomputing it costs.

    python -m bench.checkpoint_blocks          # about 3 minutes on 2 cores; no GPU, no weights

For every checkpointable block (engine.training.checkpointing: each UNet resnet and attention block,
each text-encoder layer) of SDXL base 1.0 with our rank-16 LoRA, on torch's meta device (shapes only):

1. **Forward FLOPs**, counted by torch's ``FlopCounterMode`` at 1024 and 512 px. Checkpointing a block
   recomputes its forward once in backward, so these are what it costs. Two sizes give each block's
   FLOPs as ``linear * p + quadratic * p**2`` (p: pixels relative to 1024x1024; self-attention grows
   with the square of the tokens).
2. **Bytes kept for backward**: the storages each block's ops save for backward that the block itself
   allocated (its weights and its output excluded: those stay whatever is checkpointed), counted per
   1024-px image. This is what checkpointing the block frees. They are counted in bf16 without CUDA's
   autocast lists, so the table scales them to the H200's measured difference between a step with no
   checkpointing and one with full checkpointing (``memory_plan.UNET_ACTIVATIONS_FULL_GIB`` and
   ``..._CHECKPOINTED_GIB``); the raw sum is kept beside the scale.

Writes engine/training/data/sdxl_checkpoint_blocks.json, which the planner reads.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import defaultdict
from pathlib import Path

TABLE = Path(__file__).parent.parent / "engine" / "training" / "data" / "sdxl_checkpoint_blocks.json"
RANK = 16
GIB = 2**30


def _unet_step(unet, pixels_side: int):
    import torch

    meta = dict(device="meta", dtype=torch.bfloat16)
    latent, cross = pixels_side // 8, unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return lambda: unet(torch.randn(1, 4, latent, latent, **meta), torch.tensor([500], device="meta"),
                        encoder_hidden_states=torch.randn(1, 77, cross, **meta),
                        added_cond_kwargs={"text_embeds": torch.randn(1, pooled, **meta),
                                           "time_ids": torch.randn(1, 6, **meta)}).sample


def _units(blocks: dict) -> dict:
    """block name -> the modules checkpointing it recomputes one by one."""
    return {name: list(getattr(block, "transformer_blocks", None) or [block]) for name, block in blocks.items()}


def forward_flops(model, blocks: dict, run) -> dict[str, float]:
    """Forward FLOPs of each block (its checkpointed units) in one ``run()``, and the whole forward's."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, depth=None) as counter:
        run()
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    flops = {}
    for name, units in _units(blocks).items():
        paths = [path for path, module in model.named_modules() if any(module is u for u in units)]
        flops[name] = float(sum(sum(counts.get(f"{prefix}.{path}", {}).values()) for path in paths))
    flops["__forward__"] = float(counter.get_total_flops())
    return flops


def kept_bytes(model, blocks: dict, run) -> dict[str, float]:
    """Bytes each block's units allocate and save for backward, their outputs excluded, in one ``run()``."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    owner_of_unit = {id(u): name for name, units in _units(blocks).items() for u in units}
    inside: list[str] = []
    created: dict[int, str] = {}  # storage -> the block whose unit allocated it
    keep_alive = []  # storages held, so no address is reused while counting
    outputs: set[int] = set()
    saved: dict[str, dict[int, int]] = defaultdict(dict)
    params = {p.untyped_storage()._cdata for p in model.parameters()}

    def key(t):
        return t.untyped_storage()._cdata

    class Tag(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if inside:
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and key(t) not in created:
                        created[key(t)] = inside[-1]
                        keep_alive.append(t.untyped_storage())
            return out

    def pre(module, args, kwargs=None):
        inside.append(owner_of_unit[id(module)])

    def post(module, args, out):
        inside.pop()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                outputs.add(key(t))

    def pack(t):
        k = key(t)
        if k in created and k not in params:
            saved[created[k]][k] = t.untyped_storage().nbytes()
        return t

    handles = []
    for units in _units(blocks).values():
        for unit in units:
            handles += [unit.register_forward_pre_hook(pre), unit.register_forward_hook(post)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), Tag():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return {name: float(sum(b for k, b in saved[name].items() if k not in outputs)) for name in blocks}


@contextlib.contextmanager
def memory_efficient_attention():
    """SDPA as CUDA runs it for us: a fused kernel that keeps q, k, v, the output and the log-sum-exp for
    backward. On the meta device torch would fall back to the math path, which keeps the whole attention
    matrix (335 MB a layer at 4096 tokens) that no CUDA kernel we use holds."""
    import torch
    import torch.nn.functional as F

    plain = F.scaled_dot_product_attention

    def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is not None or kwargs or query.shape[-1] != value.shape[-1]:
            return plain(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, **kwargs)
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, True, dropout_p, is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = plain


def _text_step(encoder):
    import torch

    return lambda: encoder(torch.zeros(1, 77, dtype=torch.long, device="meta"), output_hidden_states=True)


def tiny_models(path: Path | None = None) -> dict:
    """The built-in tiny model's text encoders and UNet on the meta device, from its configs (in ``path``,
    or built in likeness's models folder)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.models.tiny import ensure_tiny_model
    from engine.settings import Settings

    path = path or ensure_tiny_model(Settings().models_dir)
    with torch.device("meta"):
        return {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(path / "unet")),
                "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(path / "text_encoder")),
                "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(path / "text_encoder_2"))}


def measure(family: str = "sdxl", tiny_path: Path | None = None) -> dict:
    """The table of ``family``: 'sdxl' (SDXL base 1.0's shapes) or 'tiny' (the built-in test model)."""
    from bench.gpu_bench import build_models

    started = time.perf_counter()
    models = build_models(1.0, "meta") if family == "sdxl" else tiny_models(tiny_path)
    with memory_efficient_attention():
        return _measure(family, models, started)


def _measure(family: str, models: dict, started: float) -> dict:
    import torch
    from peft import LoraConfig

    from engine.models.lora_files import TEXT_ENCODER_TARGET_MODULES, UNET_TARGET_MODULES
    from engine.training import memory_plan
    from engine.training.checkpointing import text_encoder_layers, unet_blocks

    for model in models.values():
        model.requires_grad_(False)
        model.to(torch.bfloat16)
    unet = models["unet"]
    with torch.device("meta"):
        unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                    target_modules=UNET_TARGET_MODULES))
    blocks = unet_blocks(unet)
    flops_1024 = forward_flops(unet, blocks, _unet_step(unet, 1024))
    flops_512 = forward_flops(unet, blocks, _unet_step(unet, 512))
    raw = kept_bytes(unet, blocks, _unet_step(unet, 1024))
    # The count leaves out CUDA's autocast (fp32 norms) and allocator rounding: SDXL's is scaled to what
    # the H200 measured between no and full checkpointing, keeping each block's share. The tiny model's
    # estimate is flat (memory_plan.TINY_PHASE_GIB): its table only orders its blocks, unscaled.
    measured_gib = memory_plan.UNET_ACTIVATIONS_FULL_GIB - memory_plan.UNET_ACTIVATIONS_CHECKPOINTED_GIB
    scale = measured_gib * GIB / sum(raw.values()) if family == "sdxl" else 1.0

    def fit(name: str) -> tuple[float, float]:
        # F(p) = a p + b p^2 through (1, F_1024) and (1/4, F_512).
        f1, f4 = flops_1024[name], flops_512[name]
        b = (f1 - 4 * f4) / (1 - 1 / 4)
        return f1 - b, b

    table_blocks = []
    for name in blocks:
        linear, quadratic = fit(name)
        table_blocks.append({"name": name, "gib": round(raw[name] * scale / GIB, 6),
                             "flops": round(linear), "flops_quadratic": round(quadratic)})
    forward_linear, forward_quadratic = fit("__forward__")

    text = []
    for key in ("text_encoder", "text_encoder_2"):
        encoder = models[key]
        with torch.device("meta"):
            encoder.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                           target_modules=TEXT_ENCODER_TARGET_MODULES))
        layers = text_encoder_layers(encoder, key)
        flops = forward_flops(encoder, layers, _text_step(encoder))
        held = kept_bytes(encoder, layers, _text_step(encoder))
        text += [{"name": name, "gib": round(held[name] * scale / GIB, 7), "flops": round(flops[name])}
                 for name in layers]

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    model = "SDXL base 1.0" if family == "sdxl" else "the built-in tiny model"
    return {
        "what": f"{model} + rank-16 LoRA: each checkpointable block's activations kept for backward "
                "(GiB per 1024x1024 image, or per prompt for a text-encoder layer, half precision) and its "
                "forward FLOPs (recomputed once when checkpointed)",
        "provenance": {
            "made_by": f"python -m bench.checkpoint_blocks ({family})", "commit": commit,
            "torch": torch.__version__, "seconds": round(time.perf_counter() - started, 1),
            "flops": "torch.utils.flop_counter.FlopCounterMode on the meta device at 1024 and 512 px; "
                     "F(p) = flops * p + flops_quadratic * p**2, p = pixels / 1024**2",
            "memory": "bytes of the storages each block allocates and saves for backward (saved_tensors_hooks, "
                      "meta device, bf16, attention as CUDA's memory-efficient kernel), its output excluded"
                      + (", scaled so the UNet's blocks sum to the H200's measured difference between no and "
                         "full checkpointing (UNET_ACTIVATIONS_FULL_GIB - UNET_ACTIVATIONS_CHECKPOINTED_GIB)"
                         if family == "sdxl" else ""),
            "raw_unet_gib": round(sum(raw.values()) / GIB, 4), "scale": round(scale, 4),
            **({"measured_difference_gib": round(measured_gib, 3)} if family == "sdxl" else {}),
        },
        "resolution": 1024, "lora_rank": RANK,
        "unet_forward_flops": round(forward_linear), "unet_forward_flops_quadratic": round(forward_quadratic),
        "unet_blocks": table_blocks, "text_encoder_layers": text,
    }


def table_path(family: str) -> Path:
    return TABLE if family == "sdxl" else TABLE.with_name(f"{family}_checkpoint_blocks.json")


def main() -> None:
    for family in ("tiny", "sdxl"):
        table = measure(family)
        path = table_path(family)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=1) + "\n")
        total = sum(b["gib"] for b in table["unet_blocks"])
        print(f"{family}: {len(table['unet_blocks'])} UNet blocks ({total:.3f} GiB), "
              f"{len(table['text_encoder_layers'])} text-encoder layers -> {path} "
              f"({table['provenance']['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
