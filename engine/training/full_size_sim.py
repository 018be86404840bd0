"""Full-size SDXL training on a simulated card: every phase's peak GPU memory, with no GPU and no weights.

    simulate_training(config, free_gib=7.6) -> SimulatedPeaks   # phases in GiB, as a CUDA run records them

The same ``SDXLLoRATrainer`` code path runs, at the base's real shapes, under PyTorch's FakeTensorMode:
every tensor has its shape, dtype and storage size but no data, so SDXL base 1.0 (2.6 B UNet parameters)
costs no memory and a 1024-px step costs seconds of CPU. What the trainer sends to the card is counted:

- Every tensor stays a fake *CPU* tensor (a CPU-only torch refuses ``.to("cuda")`` even on fakes); each
  storage the code sent to the card is marked, an op with a marked input marks its outputs, and a copy
  lands where it was sent. After every op the live marked storages' bytes are summed: that is what
  ``torch.cuda.max_memory_allocated`` would say, phase by phase (``phase_peak_memory_mb`` in the
  simulation's run.json and :class:`SimulatedPeaks`).
- CUDA's autocast is emulated with CUDA's op lists (on CUDA ``group_norm``, ``layer_norm``, ``softmax``
  and the losses run in fp32, which changes the activations' bytes), and pushed again inside gradient
  checkpointing's recomputation, with the autocast state it captured.
- Tensors no op on the card touched stay real (the schedulers' tables, which they read back with numpy;
  the training photos' pixels, which memorisation reads). ``.item()`` and ``.numpy()`` of a fake
  tensor give zeros.
- The seam is the trainer's: its device placement, free memory, memory meter, pipeline loading
  and optimizer (8-bit AdamW is replaced by a stand-in that holds the same state bytes:
  bitsandbytes' kernels need a GPU).

The simulated run trains 1 step and draws the grid after it (not the one at step 0, which holds less)
with 1 denoising step and only as many images as one sample batch (the plan is the user's config's, so
the batch is the same), and draws 1 class image for prior preservation (with 1 step). Its run folder,
dataset and likeness home are a temporary folder, deleted after, even on Ctrl-C: the simulation never
writes a LoRA or a checkpoint where the user keeps them.

Not counted, and how much that was against the H200's ``max_memory_allocated`` (issue 11's points;
``bench/calibration/sdxl_phases_measured.json``): cuDNN's and cuBLAS's workspaces, the caching
allocator's rounding and fragmentation, and the CUDA context (which is outside ``max_memory_allocated``
anyway; the estimate's ``CUDA_CONTEXT_GIB``). Measured against the count: a bare UNet step with our LoRA
at rank 16, bf16, checkpointing on 5,939 MiB on the H200 against 5,762 counted (-3.0 %); off 12,710
against 12,513 (-1.5 %); the trainer after load 6,979 against 6,776 (-2.9 %), its loop 7,022 against
6,787 (-3.3 %); the fp32 VAE encoding 8 images at 1024 px 31,689 against 27,352 (-13.7 %: cuDNN's
convolution workspaces). So a simulated peak is a floor: a card needs a few per cent more, which the
estimate's margin holds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from engine.errors import LikenessError
from engine.events import EventSink, ignore_events
from engine.models.base_model import BaseModelSource, resolve_base
from engine.models.device import Placement
from engine.settings import Settings
from engine.training.config import DEFAULT_BASE, TrainConfig
from engine.training.memory_plan import MemoryPlan, choose_plan
from engine.training.trainer import SDXLLoRATrainer

MIB = 2**20
GIB = 2**30
# A config and tokenizer file is all the simulation reads of a base: kilobytes, never the weights.
CONFIG_FILES = ("model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*")
# The training photos the simulation trains on: their count does not change a peak (caching encodes
# plan.vae_encode_batch at a time, a step draws batch_size of them).
SIMULATED_PHOTOS = 2


@dataclass(frozen=True)
class SimulatedPeaks:
    """Each phase's simulated peak (GiB of torch's allocations on the card, as ``max_memory_allocated``
    counts them; no CUDA context), and the plan the trainer chose for the simulated card."""

    phases: dict[str, float]
    plan: MemoryPlan
    free_gib: float
    seconds: float

    @property
    def peak_gib(self) -> float:
        return max(self.phases.values())

    def to_json(self) -> dict:
        return {"simulated_phase_peak_gib": self.phases, "savers": self.plan.to_json(), "free_gib": self.free_gib,
                "seconds": round(self.seconds, 1)}


def simulate_training(config: TrainConfig, free_gib: float, settings: Settings | None = None,
                      on_event: EventSink = ignore_events, plan: MemoryPlan | None = None,
                      gpu_name: str = "simulated GPU") -> SimulatedPeaks:
    """Run ``config``'s training at full size on a simulated CUDA card with ``free_gib`` free; return each
    phase's peak. ``plan``: the savers to use, else the ones the trainer chooses for ``free_gib``.
    ``config.data`` and ``config.out`` are not read or written; the base's configs and tokenizers are.
    Bad bases fail as a real run would, with a LikenessError."""
    import time

    settings = settings or Settings()
    started = time.perf_counter()
    base = resolve_base(config.base, settings)
    with tempfile.TemporaryDirectory(prefix="likeness-sim-") as scratch:
        scratch = Path(scratch)
        configs = sdxl_config_folder(base, scratch / "base")
        if plan is None:
            plan = choose_plan(config, free_gib, on_cpu=False)
        simulated = _simulated_config(config, plan, scratch)
        sim_settings = settings.model_copy(update={"home": scratch / "home"})
        counter = CardCounter()
        trainer = _SimulatedTrainer(simulated, sim_settings, on_event, counter=counter, configs=configs,
                                    plan=plan, free_gib=free_gib, gpu_name=gpu_name)
        with counter:
            trainer.check_inputs()
            trainer.run_to_the_end()
        phases = {name: round(mb / 1024, 2) for name, mb in trainer.phases.peaks_mb.items()}
    return SimulatedPeaks(phases, plan, free_gib, time.perf_counter() - started)


# --- The base: configs and tokenizers only ------------------------------------------------------------

def sdxl_config_folder(base: BaseModelSource, scratch: Path) -> Path:
    """A folder holding ``base``'s model_index.json, each model's config and the tokenizers, checked to
    be SDXL's; no weights are read or downloaded. A hub base (and a single file, whose configs are SDXL
    base 1.0's) fetches only those files; offline and not cached, the same one-line error as a real run."""
    if base.kind in ("folder", "tiny"):
        folder = Path(base.location)
    else:
        folder = _hub_configs(base.location if base.kind == "hub" else DEFAULT_BASE, base)
    _check_sdxl(folder, base)
    return folder


def _hub_configs(repo_id: str, base: BaseModelSource) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_OFFLINE

    from engine.models.base_model import _looks_offline, _offline_error

    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(CONFIG_FILES), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or partly): ask the hub below
        pass
    if HF_HUB_OFFLINE:
        raise _offline_error(repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(CONFIG_FILES)))
    except Exception as error:  # noqa: BLE001 - httpx's and the hub's errors have no common base
        if _looks_offline(error):
            raise _offline_error(repo_id) from None
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LikenessError(f"base model {base.spec} could not be loaded as SDXL: {first[:200]}") from None


def _check_sdxl(folder: Path, base: BaseModelSource) -> None:
    def read(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError) as error:
            raise LikenessError(f"base model {base.spec} could not be loaded as SDXL: {name}: "
                                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None

    index = read("model_index.json")
    if not str(index.get("_class_name", "")).startswith("StableDiffusionXL"):
        raise LikenessError(f"base model {base.spec} could not be loaded as SDXL: its model_index.json is a "
                            f"{index.get('_class_name')!r}, not a StableDiffusionXLPipeline")
    unet = read("unet/config.json")
    if unet.get("addition_embed_type") != "text_time":
        raise LikenessError(f"base model {base.spec} could not be loaded as SDXL: its UNet has no text_time "
                            "conditioning")
    for name in ("vae/config.json", "text_encoder/config.json", "text_encoder_2/config.json"):
        read(name)


def build_pipeline(folder: Path, torch_dtype: dict, fake_mode):
    """SDXL's pipeline from ``folder``'s configs, its models' weights fakes of ``fake_mode``; the scheduler
    stays real (it reads its tables back with numpy)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.schedulers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.quiet import quiet_libraries

    quiet_libraries()
    default, vae_dtype = torch_dtype.get("default", torch.float32), torch_dtype.get("vae", torch.float32)
    with fake_mode:
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")).to(default)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")).to(vae_dtype)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")).to(default)
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(folder / "text_encoder_2")).to(default)
    index = json.loads((folder / "model_index.json").read_text())
    scheduler_class = getattr(__import__("diffusers"), index.get("scheduler", [None, ""])[1],
                              EulerDiscreteScheduler)
    return StableDiffusionXLPipeline(
        vae=vae, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        scheduler=scheduler_class.from_config(scheduler_class.load_config(folder / "scheduler")),
    )


# --- The simulated run ----------------------------------------------------------------------------------

def _simulated_config(config: TrainConfig, plan: MemoryPlan, scratch: Path) -> TrainConfig:
    """``config`` cut to what its peaks need: 1 step, the grid at 1 denoising step and one sample batch's
    images, 1 class image; its data and run folder in ``scratch``."""
    from PIL import Image

    photos = scratch / "photos"
    photos.mkdir(parents=True)
    for index in range(max(SIMULATED_PHOTOS, config.batch_size)):
        # Small files: the trainer resizes them to the resolution as it would a user's photos.
        Image.new("RGB", (64, 64), (120 + index, 100, 90)).save(photos / f"{index}.png")
    # One sample batch's images: the grid's first pass, its peak the same as every other pass's.
    seeds = config.sample_seeds[:plan.sample_batch]
    prompts = config.validation_prompts[:max(1, math.ceil(plan.sample_batch / len(seeds)))]
    return config.model_copy(update={
        "data": photos, "out": scratch / "run", "prep": False, "steps": 1, "resume": False, "force": False,
        "sample_every": config.sample_every and 1, "sample_steps": 1, "validation_prompts": prompts,
        "sample_seeds": seeds, "checkpoint_every": 0, "num_class_images": 1, "compile_unet": False,
        "device": "cuda", "mixed_precision": "bf16" if config.mixed_precision == "auto" else config.mixed_precision,
    })


class _Done(BaseException):
    """The simulated run's last step is drawn: stop before the LoRA is saved (its weights are fakes)."""


class _SimulatedTrainer(SDXLLoRATrainer):
    """The trainer with the seam's parts replaced by the simulated card's."""

    def __init__(self, config, settings, on_event, *, counter: CardCounter, configs: Path, plan: MemoryPlan,
                 free_gib: float, gpu_name: str):
        super().__init__(config, settings, on_event, step_hook=self._stop_after_last_step)
        self.counter, self.configs, self.forced_plan = counter, configs, plan
        self.free_gib, self.gpu_name = free_gib, gpu_name
        self.memory_meter = counter
        # Checkpointing by block runs each checkpointed block through this (engine.training.checkpointing).
        self.recompute = counter.checkpoint

    def _device_placement(self) -> Placement:
        dtype = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}[self.config.mixed_precision]
        return Placement("cuda", dtype, self.gpu_name)

    def _free_memory_gib(self) -> float:
        return self.free_gib

    def check_inputs(self) -> None:
        super().check_inputs()
        # The user's config chose the plan (its sample batch is the whole grid's); the cut config must not.
        self.plan = self.forced_plan

    def _load_pipeline(self, torch_dtype: dict):
        return build_pipeline(self.configs, torch_dtype, self.counter.fake_mode)

    def load(self) -> None:
        super().load()
        # Checkpointing recomputes inside backward, where our function mode is not active: push it again
        # there, under the autocast state captured in forward.
        for model in (self.unet, *self.text_encoders):
            for module in model.modules():
                if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
                    module._gradient_checkpointing_func = self.counter.checkpoint

    def _optimizer(self):
        if self.plan.optimizer == "adamw8bit":
            return EightBitAdamStandIn(self.trainable)
        optimizer = super()._optimizer()
        # On CUDA torch's AdamW takes the multi-tensor path, with its temporaries; on CPU tensors it would not.
        for group in optimizer.param_groups:
            group["foreach"] = True
        return optimizer

    def _save_samples(self, step: int, embeds):
        # The grid before the first step holds less than the one after it (no optimizer state yet, the
        # same passes): only the last is drawn, and sampling's peak is its.
        if step == 0:
            return None
        return super()._save_samples(step, embeds)

    def _stop_after_last_step(self, step: int) -> None:
        if step >= self.config.steps:
            raise _Done

    def run_to_the_end(self) -> None:
        with contextlib.suppress(_Done):
            self.run()


def _eight_bit_state_class():
    import torch

    class EightBitAdamStandIn(torch.optim.Optimizer):
        """bitsandbytes' AdamW8bit's memory on the card: two uint8 moments per weight and an fp32 absmax
        per block of 256 for each (its quantile maps are 2 KB); the update itself is in place."""

        def __init__(self, params):
            super().__init__(params, {"lr": 1e-4})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for param in group["params"]:
                    state = self.state[param]
                    if not state:
                        blocks = math.ceil(param.numel() / 256)
                        state["state1"] = torch.zeros_like(param, dtype=torch.uint8)
                        state["state2"] = torch.zeros_like(param, dtype=torch.uint8)
                        state["absmax1"] = param.new_zeros(blocks)
                        state["absmax2"] = param.new_zeros(blocks)
                    if param.grad is not None:
                        param.add_(param.grad, alpha=-group["lr"])

    return EightBitAdamStandIn


def EightBitAdamStandIn(params):  # noqa: N802 - a class built lazily: torch is a heavy import
    return _eight_bit_state_class()(params)


# --- The count -------------------------------------------------------------------------------------------

# CUDA autocast's lists, as far as SDXL's models use them (torch's autocast_mode.cpp): these run in the
# autocast dtype...
_LOWER_PRECISION = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose2d", "matmul", "__matmul__", "bmm",
                    "baddbmm", "mm", "addmm", "einsum", "scaled_dot_product_attention")
# ...and these in fp32, whatever their inputs (on the CPU's lists they are not).
_FLOAT32 = ("group_norm", "layer_norm", "softmax", "log_softmax", "mse_loss", "cosine_similarity")


class CardCounter:
    """Counts the bytes a simulated CUDA card holds; a :class:`engine.models.device.MemoryMeter`.

    ``with counter:`` pushes the modes (fake tensors, the card's marks, CUDA's autocast emulation);
    ``counter.fake_mode`` builds fake models; ``counter.autocast(dtype)`` is CUDA's autocast;
    ``counter.checkpoint`` is torch's non-reentrant checkpoint with the modes pushed again in recompute.
    """

    def __init__(self):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
        # Module.to() swaps a fake parameter for its copy, and the swap refuses a tensor anything holds a
        # weak reference to: the converter's memo of fakes does. Nothing here needs the memo (a tensor
        # sent to the card is a copy anyway), so it is not kept.
        self.fake_mode.fake_tensor_converter.set_tensor_memo = lambda *_args: None
        self.on_card: dict[int, int] = {}  # id(storage) -> bytes
        self.allocated = 0
        self.peak = 0
        self.autocast_dtype = None
        self._suppress_marks = False
        self._in_dispatch = False  # FakeTensorMode's own code runs: devices are the CPU's
        self._force_fake = False
        self._dispatch = _dispatch_mode_class()(self)
        self._function = _function_mode_class()(self)
        self._stack: contextlib.ExitStack | None = None

    # MemoryMeter
    def reset_peak(self) -> None:
        self.peak = self.allocated

    def peak_mb(self) -> float:
        return self.peak / MIB

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._cards_device())
        self._stack.enter_context(self._cuda_autocast())
        self._stack.enter_context(self._dispatch)
        self._stack.enter_context(self._function)
        return self

    @contextlib.contextmanager
    def _cuda_autocast(self):
        """``torch.autocast("cuda", ...)`` (the trainer's, the sample grids') is the emulation: a CPU-only
        torch would refuse it, and the CPU's autocast has other op lists. Put back after."""
        import torch

        original, counter = torch.autocast, self

        def autocast(device_type, dtype=None, enabled=True, cache_enabled=None):
            if device_type != "cuda":
                return original(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
            return counter.autocast((dtype or torch.float16) if enabled else None)

        torch.autocast = autocast
        try:
            yield
        finally:
            torch.autocast = original

    @contextlib.contextmanager
    def _cards_device(self):
        """A fake tensor on the card says ``cuda`` to the code that asks (``latents.to(vae.device)`` must
        keep it there), but ``cpu`` to FakeTensorMode's own kernels, which run on the CPU.

        FakeTensor's ``device`` is a Python property, which no mode sees: it is replaced for the
        simulation's duration, and put back after.
        """
        import torch
        from torch._subclasses.fake_tensor import FakeTensor

        original = FakeTensor.__dict__["device"]
        cuda, counter = torch.device("cuda"), self

        def device(tensor):
            if not counter._in_dispatch and counter.is_on_card(tensor):
                return cuda
            return original.fget(tensor)

        FakeTensor.device = property(device, original.fset)
        try:
            yield
        finally:
            FakeTensor.device = original

    def __exit__(self, *exc):
        stack, self._stack = self._stack, None
        return stack.__exit__(*exc)

    @contextlib.contextmanager
    def autocast(self, dtype):
        saved, self.autocast_dtype = self.autocast_dtype, dtype
        try:
            yield
        finally:
            self.autocast_dtype = saved

    def checkpoint(self, function, *args, **kwargs):
        from torch.utils.checkpoint import checkpoint

        captured = self.autocast_dtype

        def contexts():
            return contextlib.nullcontext(), self._recompute(captured)

        return checkpoint(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    @contextlib.contextmanager
    def _recompute(self, dtype):
        from torch.overrides import _get_current_function_mode_stack

        with contextlib.ExitStack() as stack:
            if self._function not in _get_current_function_mode_stack():
                stack.enter_context(self._function)
            stack.enter_context(self.autocast(dtype))
            yield

    # The marks
    def is_on_card(self, tensor) -> bool:
        try:
            return id(tensor.untyped_storage()) in self.on_card
        except (RuntimeError, NotImplementedError):
            return False  # a tensor without a storage (sparse, nested): never one of ours

    def mark(self, tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.on_card:
            return
        size = storage.nbytes()
        # The caching allocator hands out multiples of 512 bytes.
        size = -(-size // 512) * 512
        self.on_card[key] = size
        self.allocated += size
        self.peak = max(self.peak, self.allocated)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        self.allocated -= self.on_card.pop(key, 0)


def _tensors(tree) -> list:
    import torch
    from torch.utils._pytree import tree_leaves

    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


@functools.cache
def _dispatch_mode_class():
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.utils._python_dispatch import TorchDispatchMode

    local_scalar = torch.ops.aten._local_scalar_dense.default

    class CardDispatch(TorchDispatchMode):
        """Below autograd: fake where any input is fake, real otherwise; marks what the card's inputs make."""

        def __init__(self, counter: CardCounter):
            super().__init__()
            self.counter = counter

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            counter = self.counter
            inputs = _tensors((args, kwargs))
            if func is local_scalar and isinstance(args[0], FakeTensor):
                # .item() of a fake: no data to read. Zero is harmless to a loss log or a step count.
                return False if args[0].dtype == torch.bool else (0.0 if args[0].is_floating_point() else 0)
            saved, counter._in_dispatch = counter._in_dispatch, True
            try:
                if counter._force_fake or any(isinstance(t, FakeTensor) for t in inputs):
                    with counter.fake_mode:
                        out = func(*args, **kwargs)
                else:
                    out = func(*args, **kwargs)
            finally:
                counter._in_dispatch = saved
            if not counter._suppress_marks and any(counter.is_on_card(t) for t in inputs):
                for tensor in _tensors(out):
                    counter.mark(tensor)
            return out

    return CardDispatch


def _device_of(args, kwargs):
    import torch

    try:
        device, _dtype, _non_blocking, _format = torch._C._nn._parse_to(*args, **kwargs)
    except (TypeError, RuntimeError):
        return None
    return device


@functools.cache
def _function_mode_class():
    import numpy as np
    import torch
    from torch._subclasses.fake_tensor import FakeTensor
    from torch.overrides import TorchFunctionMode

    to_methods = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu}
    device_property, is_cuda_property = torch.Tensor.device, torch.Tensor.is_cuda
    cuda = torch.device("cuda")
    reads = {torch.Tensor.numpy, torch.Tensor.tolist}

    def names(candidates):
        found = set()
        for name in candidates:
            for owner in (torch, torch.nn.functional, torch.Tensor):
                function = getattr(owner, name, None)
                if function is not None:
                    found.add(function)
        return found

    lower, float32 = names(_LOWER_PRECISION), names(_FLOAT32)

    def cast(tree, dtype):
        from torch.utils._pytree import tree_map

        return tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point()
                        and t.dtype != dtype else t, tree)

    class CudaEmulation(TorchFunctionMode):
        """Above autograd: ``.to("cuda")`` lands on the simulated card; CUDA's autocast lists."""

        def __init__(self, counter: CardCounter):
            super().__init__()
            self.counter = counter

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            counter = self.counter
            owner = getattr(func, "__self__", None)
            # What is on the card says so: code that follows a model's or a tensor's device
            # (``latents.to(vae.device)``) must keep it there, as on CUDA.
            if owner is device_property:
                return cuda if counter.is_on_card(args[0]) else func(*args, **kwargs)
            if owner is is_cuda_property:
                return counter.is_on_card(args[0])
            if func in to_methods:
                return self._move(func, args, kwargs)
            if func in reads and isinstance(args[0], FakeTensor):
                zeros = np.zeros(tuple(args[0].shape), dtype=_numpy_dtype(args[0].dtype))
                return zeros if func is torch.Tensor.numpy else zeros.tolist()
            if _is_cuda(kwargs.get("device")):
                # A tensor made on the card (torch.arange(..., device=timesteps.device)): a fake, marked.
                kwargs = {**kwargs, "device": "cpu"}
                counter._suppress_marks, counter._force_fake = True, True
                try:
                    out = func(*args, **kwargs)
                finally:
                    counter._suppress_marks, counter._force_fake = False, False
                for tensor in _tensors(out):
                    counter.mark(tensor)
                return out
            dtype = counter.autocast_dtype
            if dtype is not None:
                if func in lower:
                    args, kwargs = cast((args, kwargs), dtype)
                elif func in float32:
                    args, kwargs = cast((args, kwargs), torch.float32)
            return func(*args, **kwargs)

        def _move(self, func, args, kwargs):
            counter = self.counter
            tensor = args[0]
            if func is torch.Tensor.cuda:
                to_card, rest = True, {}
            elif func is torch.Tensor.cpu:
                to_card, rest = False, {}
            else:
                device = _device_of(args[1:], kwargs)
                if device is None:
                    return func(*args, **kwargs)  # a dtype's cast: the rule of marks places it
                to_card = device.type == "cuda"
                _device, dtype, _non_blocking, memory_format = torch._C._nn._parse_to(*args[1:], **kwargs)
                rest = {"dtype": dtype} if dtype is not None else {}
                if memory_format is not None:
                    rest["memory_format"] = memory_format
            if to_card == counter.is_on_card(tensor):
                return tensor.to(**rest) if rest else tensor
            # A move: a copy on the other side, fake when it lands on the card.
            counter._suppress_marks, counter._force_fake = True, to_card
            try:
                moved = tensor.to("cpu", copy=True, **rest)
            finally:
                counter._suppress_marks, counter._force_fake = False, False
            if to_card:
                counter.mark(moved)
            return moved

    return CudaEmulation


def _is_cuda(device) -> bool:
    import torch

    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


def _numpy_dtype(dtype):
    import numpy as np
    import torch

    return {torch.bfloat16: np.float32, torch.float16: np.float16, torch.float32: np.float32,
            torch.float64: np.float64, torch.bool: np.bool_, torch.uint8: np.uint8}.get(dtype, np.int64)
