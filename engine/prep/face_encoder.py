"""dlib's face recognition ResNet, run by torch: the same 128-d encodings, several times faster.

The dlib-bin wheel is built without BLAS, so its network takes ~75 ms a face on one core, the
largest single cost of prep. This reads the weights from face_recognition_models' own
``dlib_face_recognition_resnet_model_v1.dat`` and runs the same layers with torch (oneDNN); the
face chips still come from dlib (landmarks and alignment), so encodings agree with dlib's to
float precision (tests/test_prep_loading.py checks it).

The file is dlib's serialization of ``anet_type`` (dlib/examples/dnn_face_recognition_ex.cpp),
written input side first: each layer's name, its parameters as a little-endian float32 tensor,
then its settings. Tags and skips leave no name; the residual structure is known: each block is
conv, affine, relu, conv, affine, [avg_pool when it downsamples], add_prev, relu.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25  # dlib's compute_face_descriptor default


@dataclass
class _Layer:
    kind: str
    params: np.ndarray | None = None
    settings: list[int] = field(default_factory=list)


class _Reader:
    """dlib's serialization: integers as a length byte (high bit: negative) and little-endian bytes."""

    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.at = data, offset

    def integer(self) -> int:
        head = self.data[self.at]
        size, negative = head & 0x0F, bool(head & 0x80)
        value = int.from_bytes(self.data[self.at + 1:self.at + 1 + size], "little")
        self.at += 1 + size
        return -value if negative else value

    def dlib_float(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        return mantissa * 2.0**exponent

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise ValueError(f"tensor version {version}")
        n, k, nr, nc = (self.integer() for _ in range(4))
        count = n * k * nr * nc
        values = np.frombuffer(self.data, dtype="<f4", count=count, offset=self.at).copy()
        self.at += 4 * count
        return values.reshape(n, k, nr, nc)


# Each layer's serialized name (its version), and what it is here.
_KINDS = {b"input_rgb_image_sized": "input", b"con_4": "con", b"affine_": "affine", b"relu_": "relu",
          b"max_pool_2": "max_pool", b"avg_pool_2": "avg_pool", b"add_prev_": "add_prev", b"fc_2": "fc"}
# A name is serialized as a string: 0x01, its length in one byte, its bytes. Searching only between
# the float tensors (the reader skips them), a match is always a layer.
_NAME = re.compile(b"\x01[\x04-\x15](" + b"|".join(re.escape(name) for name in _KINDS) + b")")


def _layers(data: bytes) -> tuple[tuple[float, float, float], list[_Layer]]:
    """The mean colour the input subtracts, and the layers from input to output."""
    layers: list[_Layer] = []
    mean = (0.0, 0.0, 0.0)
    at = 0
    while found := _NAME.search(data, at):
        reader = _Reader(data, found.end())
        kind = _KINDS[found.group(1)]
        if kind == "input":
            mean = (reader.dlib_float(), reader.dlib_float(), reader.dlib_float())
        elif kind == "con":
            params = reader.tensor()
            # num_filters, nr, nc, stride_y, stride_x, padding_y, padding_x
            layers.append(_Layer("con", params, [reader.integer() for _ in range(7)]))
        elif kind == "affine":
            layers.append(_Layer("affine", reader.tensor()))
        elif kind in ("max_pool", "avg_pool"):
            # nr, nc, stride_y, stride_x, padding_y, padding_x; nr = 0: the whole image
            layers.append(_Layer(kind, None, [reader.integer() for _ in range(6)]))
        elif kind == "fc":
            outputs, inputs = reader.integer(), reader.integer()
            layers.append(_Layer("fc", reader.tensor(), [outputs, inputs]))
        else:
            layers.append(_Layer(kind))
        at = reader.at
    return mean, layers


class FaceEncoder:
    """128-d encodings of 150 px face chips (dlib.get_face_chip), as dlib's network computes them."""

    def __init__(self, model_path: str):
        import torch

        with open(model_path, "rb") as handle:
            mean, layers = _layers(handle.read())
        kinds = [layer.kind for layer in layers]
        if kinds.count("con") != 29 or kinds[-1] != "fc" or layers[-1].settings[0] != 128:
            # Another network (or a format this reader does not know) must not give quiet garbage.
            raise RuntimeError(f"{model_path} is not dlib_face_recognition_resnet_model_v1 as likeness reads it")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.layers: list[tuple[str, Any]] = []
        for layer in layers:
            if layer.kind == "con":
                filters, nr, nc, stride, _, padding, _ = layer.settings
                flat = torch.from_numpy(layer.params.reshape(-1))
                weights = flat[:-filters]
                inputs = weights.numel() // (filters * nr * nc)
                self.layers.append(("con", (weights.view(filters, inputs, nr, nc), flat[-filters:], stride, padding)))
            elif layer.kind == "affine":
                gamma, beta = torch.from_numpy(layer.params.reshape(2, -1))
                self.layers.append(("affine", (gamma.view(1, -1, 1, 1), beta.view(1, -1, 1, 1))))
            elif layer.kind == "fc":
                outputs, inputs = layer.settings
                self.layers.append(("fc", torch.from_numpy(layer.params.reshape(inputs, outputs))))
            else:
                self.layers.append((layer.kind, layer.settings))

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """Encodings (N, 128) of RGB uint8 chips (N, 150, 150, 3)."""
        import torch
        import torch.nn.functional as F

        # float32 whatever the caller has on (a trainer's autocast): the encodings are dlib's.
        with torch.inference_mode(), torch.autocast("cpu", enabled=False):
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
            x = (x - self.mean) / 256.0
            block_input = None
            for kind, args in self.layers:
                if kind == "con":
                    if block_input is None:
                        block_input = x
                    weights, bias, stride, padding = args
                    x = F.conv2d(x, weights, bias, stride=stride, padding=padding)
                elif kind == "affine":
                    gamma, beta = args
                    x = x * gamma + beta
                elif kind == "relu":
                    x = F.relu(x)
                elif kind == "max_pool":
                    nr, nc, stride, _, padding, _ = args
                    x = F.max_pool2d(x, (nr, nc), stride, padding)
                    block_input = None
                elif kind == "avg_pool" and args[0] == 0:
                    x = x.mean(dim=(2, 3))  # avg_pool_everything
                elif kind == "avg_pool":
                    nr, nc, stride, _, padding, _ = args
                    assert block_input is not None
                    block_input = F.avg_pool2d(block_input, (nr, nc), stride, padding)
                elif kind == "add_prev":
                    assert block_input is not None
                    x = _add_zero_padded(x, block_input)
                    block_input = None
                elif kind == "fc":
                    x = x.reshape(x.shape[0], -1) @ args
            return x.numpy().astype(np.float64)


def _add_zero_padded(a, b):
    """dlib's add_prev: tensors of different sizes add where they overlap; the rest is zero-filled."""
    import torch.nn.functional as F

    shape = [max(s, t) for s, t in zip(a.shape, b.shape, strict=True)]

    def grow(x):
        pads = []
        for axis in (3, 2, 1):
            pads += [0, shape[axis] - x.shape[axis]]
        return F.pad(x, pads) if any(pads) else x

    return grow(a) + grow(b)


@cache
def face_encoder(model_path: str) -> FaceEncoder:
    """The encoder for this network file, loaded once per process."""
    return FaceEncoder(model_path)

