"""Is this file a LoRA likeness can load? Checked before anything loads it (generate, export, the
compatibility check, the service's submit), so a damaged file costs one line, not a traceback, an
all-black picture or a silent no-op.

A .safetensors file is an 8-byte little-endian header length, that many bytes of JSON (each tensor's
dtype, shape and byte range, and ``__metadata__``), then the tensor data. Everything here reads the
length first and refuses an absurd header before parsing it, then the header, then the values with
numpy (no torch: a typo must cost less than torch's import).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from engine.errors import LikenessError

# An SDXL LoRA of every Linear and Conv layer has about 2,500 modules (three tensors each), which a
# header of ~0.5 MB describes; these bounds leave a hundredfold margin and stop a header of a
# million entries (seconds and gigabytes to parse) before it is parsed.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_TENSORS = 100_000

_BYTES_PER = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
              "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8}
# A float is NaN or infinite exactly when its exponent bits are all ones (float8 e4m3 has no
# infinity, and its one NaN pattern is all ones below the sign).
_NONFINITE_MASK = {"F64": (0x7FF0000000000000, "<u8"), "F32": (0x7F800000, "<u4"), "F16": (0x7C00, "<u2"),
                   "BF16": (0x7F80, "<u2"), "F8_E5M2": (0x7C, "u1"), "F8_E4M3": (0x7F, "u1")}

# The two halves of a module in the layouts loaders read: kohya's lora_down / lora_up (and .alpha),
# diffusers' .lora.down / .lora_linear_layer.down, peft's lora_A / lora_B.
_HALF = re.compile(r"^(?P<module>.+?)(?:\.lora_(?P<kohya>down|up)\.weight|\.alpha"
                   r"|\.(?:lora|lora_linear_layer)\.(?P<diffusers>down|up)\.weight|\.lora_(?P<peft>A|B)\.weight)$")


def _refuse(path: Path, why: str) -> LikenessError:
    return LikenessError(f"{path} is not a usable LoRA: {why}")


def _unreadable(path: Path, why: str) -> LikenessError:
    return LikenessError(f"{path} is not a readable .safetensors LoRA: {why}")


def read_header(path: Path) -> tuple[dict, int]:
    """The parsed header of a .safetensors file and where its data starts, its size checked before
    it is read and parsed."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            if size < 8:
                raise _unreadable(path, f"{size} bytes, shorter than a .safetensors header")
            length = int.from_bytes(handle.read(8), "little")
            if length > MAX_HEADER_BYTES:
                raise _unreadable(path, f"its header claims {length:,} bytes; a LoRA's is under {MAX_HEADER_BYTES // 2**20} MiB")
            if 8 + length > size:
                raise _unreadable(path, f"its header claims {length:,} bytes but the file has {size:,}")
            raw = handle.read(length)
    except OSError as error:
        raise LikenessError(f"cannot read {path}: {error.strerror or error}") from None
    # Counted in the raw bytes, before json builds a million dicts.
    entries = raw.count(b'"data_offsets"')
    if entries > MAX_TENSORS:
        raise _unreadable(path, f"its header lists {entries:,} tensors; a LoRA has at most {MAX_TENSORS:,}")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _unreadable(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _unreadable(path, "its header is not a JSON object")
    data_size = size - 8 - length
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _unreadable(path, "its __metadata__ is not a map of strings")
            continue
        _check_entry(path, key, entry, data_size)
    return header, 8 + length


def _check_entry(path: Path, key: str, entry, data_size: int) -> None:
    if not isinstance(entry, dict):
        raise _unreadable(path, f"tensor {key} has no dtype, shape and data offsets")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _BYTES_PER:
        raise _unreadable(path, f"tensor {key} has dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _unreadable(path, f"tensor {key} has shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise _unreadable(path, f"tensor {key} lies outside the file (data offsets {offsets!r})")
    if offsets[1] - offsets[0] != math.prod(shape) * _BYTES_PER[dtype]:
        raise _unreadable(path, f"tensor {key}'s {offsets[1] - offsets[0]:,} bytes do not hold a {dtype} of shape {shape}")


def validate_lora(path: Path) -> dict:
    """Refuse, in one line, a file that no loader can use as a LoRA: a damaged or absurd header,
    a module with only one of its down / up weights, weights of the wrong rank (a LoRA's are 2-D,
    or 4-D for a conv), down and up that do not multiply, or any NaN or infinite value.
    Returns the header."""
    header, data_start = read_header(path)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    modules: dict[str, dict[str, str]] = {}
    for key in tensors:
        if match := _HALF.match(key):
            half = match["kohya"] or match["diffusers"] or {"A": "down", "B": "up"}.get(match["peft"]) or "alpha"
            modules.setdefault(match["module"], {})[half] = key
    pairs = 0
    for module, halves in sorted(modules.items()):
        if "down" not in halves and "up" not in halves:
            continue  # an alpha alone: nothing a loader applies
        if "down" not in halves or "up" not in halves:
            has, missing = ("down", "up") if "down" in halves else ("up", "down")
            lonely = sum(1 for h in modules.values() if has in h and missing not in h)
            raise _refuse(path, f"{lonely} module(s) have {has} weights but no {missing} weights (e.g. {module})")
        down, up = tensors[halves["down"]]["shape"], tensors[halves["up"]]["shape"]
        for half, shape in (("down", down), ("up", up)):
            if len(shape) not in (2, 4):
                raise _refuse(path, f"{halves[half]} has {len(shape)} dimension(s) {shape}; a LoRA weight has 2 "
                                    "(linear) or 4 (conv)")
        if down[0] != up[1] or len(down) != len(up):
            raise _refuse(path, f"{module}'s down {down} and up {up} weights do not multiply (ranks {down[0]} and {up[1]})")
        pairs += 1
    if not pairs:
        raise _refuse(path, "it holds no LoRA weights (no down / up pairs)")
    _check_values(path, tensors, data_start)
    return header


def _check_values(path: Path, tensors: dict, data_start: int) -> None:
    import numpy as np

    if not tensors:
        return
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start) if any(
        t["data_offsets"][1] > t["data_offsets"][0] for t in tensors.values()) else None
    bad = {}
    for key, entry in tensors.items():
        mask = _NONFINITE_MASK.get(entry["dtype"])
        start, end = entry["data_offsets"]
        if mask is None or end == start or data is None:
            continue
        bits, view = mask
        words = data[start:end].view(np.dtype(view))
        count = int(np.count_nonzero((words & np.array(bits, dtype=view)) == bits))
        if count:
            bad[key] = count
    if bad:
        key = max(bad, key=bad.get)
        total = sum(bad.values())
        raise _refuse(path, f"{total:,} of its values are NaN or infinite, in {len(bad)} tensor(s) (e.g. {key}); "
                            "it would draw black or noise")


def check_lora_file(path: Path) -> None:
    """Fail in one line, before anything heavy loads, when ``path`` is not a usable LoRA file."""
    validate_lora(path)
