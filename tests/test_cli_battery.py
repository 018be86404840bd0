"""The outside audit's 81 CLI cases (issue 14), kept: every bad input exits 2 with one line on stderr
and leaves the file system as it found it; the good ones succeed without touching their inputs.

'in/' holds the inputs, 'o/' the outputs, as in the audit's table. Cases run in this process through
``engine.cli.main`` (a subprocess would pay the imports 81 times), except the ones that need another
environment (the hub reachable in principle), which run as ``python -m engine``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.cli import main

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    needle: str | None = None  # what the one error line must mention; None for a good case
    env: dict[str, str] = field(default_factory=dict)  # run in a subprocess with these variables

    @property
    def good(self) -> bool:
        return self.needle is None


TINY = ["--base", "tiny", "--resolution", "64", "--steps", "1", "--sample-every", "0", "--checkpoint-every", "0"]
UNICODE_PHOTOS = "in/фото мои с пробелами"
ONE_WORKER = ["--workers", "1"]  # a process pool's start-up would cost more than these few photos
# The hub "reachable" as far as likeness knows (not offline mode); whether it is, the case must say so.
ONLINE = {"HF_HUB_OFFLINE": "0"}

CASES = [
    Case("P01", ["prep", "in/nope", "--out", "o/p01"], "does not exist"),
    Case("P02", ["prep", "in/empty", "--out", "o/p02"], "no photos found"),
    Case("P03", ["prep", "in/nonimg", "--out", "o/p03", *ONE_WORKER], "no photo was accepted"),
    Case("P04", ["prep", "in/notzip.zip", "--out", "o/p04"], "neither a folder nor a .zip"),
    Case("P05", ["prep", "in/evil.zip", "--out", "o/p05", *ONE_WORKER], "no photo was accepted"),
    Case("P06", ["prep", "in/loops", "--out", "o/p06", *ONE_WORKER], "no photo was accepted"),
    Case("P07", ["prep", "in/chmod", "--out", "o/p07", *ONE_WORKER], "no photo was accepted"),
    Case("P08", ["prep", "in/photos", "--out", "in/afile.txt"], "is a file"),
    Case("P09", ["prep", "in/photos", "--out", "in/photos/ds"], "inside PHOTOS"),
    Case("P10", ["prep", UNICODE_PHOTOS, "--out", "o/данные p10", "--size", "64", "--workers", "1"]),
    Case("P11", ["prep", "in/photos", "--out", "o/p11", "--config", "in/prep-unknown.toml"], "bogus"),
    Case("P12", ["prep", "in/photos", "--out", "o/p12", "--config", "in/bad.toml"], "not valid"),
    Case("P13", ["prep", "in/photos", "--out", "o/p13", "--size", "0"], "--size"),
    Case("P14", ["prep", "in/photos", "--out", "o/p14", "--workers", "0"], "--workers"),
    Case("P15", ["prep", "in/photos/astronaut-00.jpg", "--out", "o/p15"], "neither a folder nor a .zip"),
    Case("T01", ["train", "--data", "in/ds", "--out", "o/t01", *TINY, "--steps", "0"], "--steps"),
    Case("T02", ["train", "--data", "in/ds", "--out", "o/t02", *TINY, "--steps", "-1"], "--steps"),
    Case("T03", ["train", "--data", "in/ds", "--out", "o/t03", *TINY, "--steps", "abc"], "--steps"),
    Case("T04", ["train", "--data", "in/ds", "--out", "o/t04", *TINY, "--resolution", "63"], "--resolution"),
    Case("T05", ["train", "--data", "in/ds", "--out", "o/t05", *TINY, "--rank", "0"], "--rank"),
    Case("T06", ["train", "--data", "in/ds", "--out", "o/t06", *TINY, "--rank", "100000"], "--rank"),
    Case("T07", ["train", "--data", "in/ds", "--out", "o/t07", *TINY, "--lr", "-1"], "--lr"),
    Case("T08", ["train", "--data", "in/ds", "--out", "o/t08", "--base", "nonexistent"], "unknown base model"),
    Case("T09", ["train", "--data", "in/ds", "--out", "o/t09", "--base", "nobody/nonexistent-model"],
         "nobody/nonexistent-model", env=ONLINE),
    Case("T10", ["train", "--data", "in/ds", "--out", "o/t10", "--base", "in/base.txt"], "must be a .safetensors"),
    Case("T11", ["train", "--data", "in/ds", "--out", "o/t11", "--base", "in/fake.safetensors"], "not a readable"),
    Case("T12", ["train", "--data", "in/nope", "--out", "o/t12", *TINY], "does not exist"),
    Case("T13", ["train", "--data", "in/empty", "--out", "o/t13", *TINY], "holds no images"),
    Case("T14", ["train", "--data", "in/nonimg", "--no-prep", "--out", "o/t14", *TINY], "could be read"),
    Case("T15", ["train", "--data", "in/ds", "--out", "in/afile.txt", *TINY], "is a file"),
    Case("T16", ["train", "--data", "in/ds", "--out", "in/ds/run", *TINY], "inside --data"),
    Case("T17", ["train", "--data", "in/ds", "--out", "in/finished", *TINY], "finished run"),
    Case("T18", ["train", "--data", "in/ds", "--out", "o/t18", "--config", "in/train-unknown.toml"], "--not-a-setting"),
    Case("T19", ["train", "--data", UNICODE_PHOTOS, "--out", "o/прогон t19", *TINY]),
    Case("T20", ["train", "--data", "in/ds", "--out", "o/t20", *TINY, "--batch-size", "0"], "--batch-size"),
    Case("T21", ["train", "--data", "in/ds", "--out", "o/t21", *TINY, "--resolution", "8"], "--resolution"),
    Case("T22", ["train"], "--data is required"),
    Case("G01", ["generate", "--lora", "in/nope.safetensors", "--out", "o/g01"], "does not exist"),
    Case("G02", ["generate", "--lora", "in/finished", "--sweep", "foo=1,2", "--out", "o/g02"], "not a placeholder"),
    Case("G03", ["generate", "--lora", "in/finished", "--sweep", "age=", "--out", "o/g03"], "expected NAME=VALUE"),
    Case("G04", ["generate", "--lora", "in/finished", "--prompt", "a photo of {who}", "--out", "o/g04"], "{who}"),
    Case("G05", ["generate", "--lora", "in/finished", "--width", "0", "--out", "o/g05"], "--width"),
    Case("G06", ["generate", "--lora", "in/finished", "--prompt", "a photo of {token} " + "x" * 10_000,
                 "--steps", "1", "--out", "o/g06"]),
    Case("G07", ["generate", "--base", "tiny", "--lora", "in/fake.safetensors", "--out", "o/g07"], "not a readable"),
    Case("G08", ["generate", "--base", "tiny", "--lora", "in/foreign/alien.safetensors", "--steps", "1",
                 "--out", "o/g08"], "other layer sizes"),
    Case("G09", ["generate", "--lora", "in/finished", "--out", "in/afile.txt"], "is a file"),
    Case("G10", ["generate", "--lora", "in/finished", "--base", "nonexistent", "--out", "o/g10"], "unknown base model"),
    Case("G11", ["generate", "--lora", "in/finished", "--sweep", "lora_scale=abc", "--out", "o/g11"], "float"),
    Case("G12", ["generate", "--lora", "in/finished", "--steps", "0", "--out", "o/g12"], "--steps"),
    Case("G13", ["generate", "--lora", "in/finished", "--temperature", "2", "--out", "o/g13"], "--temperature"),
    Case("G14", ["generate", "--lora", "in/empty", "--out", "o/g14"], "not a run or a LoRA file"),
    Case("G15", ["generate", "--lora", "in/finished", "--step", "999", "--out", "o/g15"], "no checkpoint at step 999"),
    Case("G16", ["generate", "--lora", "in/finished", "--prompt", "a photo {", "--out", "o/g16"], "malformed"),
    Case("G17", ["generate", "--lora", "in/finished", "--config", "in/generate-unknown.toml", "--out", "o/g17"],
         "--resolution"),
    Case("G18", ["generate", "--lora", "in/finished", "--height", "63", "--out", "o/g18"], "--height"),
    Case("G19", ["generate", "--lora", "in/run_corrupt", "--out", "o/g19"], "not a readable"),
    Case("G20", ["generate", "--base", "tiny", "--lora", "in/foreign/text.safetensors"], "not a readable"),
    Case("G21", ["generate", "--lora", "in/finished", "--sweep", "seed=-1", "--out", "o/g21"], "out of range"),
    Case("G22", ["generate", "--lora", "in/run_corrupt"], "not a readable"),
    Case("E01", ["export", "in/nope"], "not a likeness run directory"),
    Case("E02", ["export", "in/empty"], "not a likeness run directory"),
    Case("E03", ["export", "in/finished", "--out", "in/exists.safetensors"], "--force"),
    Case("E04", ["export", "in/finished", "--step", "999"], "no checkpoint at step 999"),
    Case("E05", ["export", "in/run_corrupt", "--out", "o/e05.safetensors"], "not a readable"),
    Case("E06", ["export", "in/run_nolora", "--out", "o/e06.safetensors"], "no final lora.safetensors"),
    Case("E07", ["export", "in/finished", "--out", "in/afile.txt/x.safetensors"], "is a file"),
    Case("E08", ["export", "in/finished", "--out", "o/e08dir"], "is a folder"),
    Case("E09", ["export", "in/finished", "--format", "bogus"], "--format"),
    # Not in .safetensors, the file would not even be listed by ComfyUI, A1111 or Forge.
    Case("E10", ["export", "in/finished", "--out", "o/e10.txt"], ".safetensors"),
    Case("E11", ["export", "in/foreign/diffusers_unet.safetensors"], "not a likeness run directory"),
    Case("P05b", ["prep", "in/evil.zip", "--out", "o/p05b", "--size", "64", "--workers", "1"]),
    Case("P06b", ["prep", "in/loops", "--out", "o/p06b", "--size", "64", "--workers", "1"]),
    Case("P07b", ["prep", "in/chmod", "--out", "o/p07b", "--size", "64", "--workers", "1"]),
    Case("P16", ["prep", "in/photos", "--out", "in/ds"], "not empty"),
    Case("T09b", ["train", "--data", "in/ds", "--out", "o/t09b", "--base", "nobody/nonexistent-model",
                  "--where", "local"], "nobody/nonexistent-model", env=ONLINE),
    Case("T11b", ["train", "--data", "in/ds", "--out", "o/t11b", "--base", "in/fake.safetensors", "--where", "local"],
         "not a readable"),
    Case("T11c", ["train", "--data", "in/ds", "--out", "o/t11c", "--base", "in/foreign/unet_checkpoint.safetensors",
                  "--where", "local"], "not an SDXL checkpoint"),
    Case("T23", ["train", "--data", "in/ds", "--out", "o/t23", "--base", "in/empty", "--where", "local"],
         "no model_index.json"),
    Case("T16b", ["train", "--data", "in/photos", "--out", "in/photos/run", *TINY], "inside --data"),
    Case("E08b", ["export", "in/finished", "--out", "o/e08dir", "--force"], "is a folder"),
    Case("E12", ["export", "in/finished", "--out", "/proc/x.safetensors"], "cannot write"),
]


def test_the_battery_has_the_audits_81_cases():
    assert len(CASES) == 81 and len({c.id for c in CASES}) == 81


def _photo_bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, photos, dataset, text_encoder_run, tiny_model) -> Path:
    """The audit's in/ (every kind of bad input, a dataset, a finished run) and an empty o/."""
    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("battery")
    inp = root / "in"
    inp.mkdir()
    (root / "o").mkdir()
    (root / "o" / "e08dir").mkdir()
    shots = sorted(photos.glob("*.jpg"))
    (inp / "empty").mkdir()
    nonimg = inp / "nonimg"
    nonimg.mkdir()
    (nonimg / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (nonimg / "b.png").write_text("not a png")
    (nonimg / "c.webp").write_bytes(b"")
    (inp / "notzip.zip").write_text("not a zip")
    with zipfile.ZipFile(inp / "evil.zip", "w") as archive:  # entries that try to leave the folder
        archive.writestr("../escape.jpg", _photo_bytes(shots[0]))
        archive.writestr("/absolute.jpg", _photo_bytes(shots[1]))
    loops = inp / "loops"
    loops.mkdir()
    for shot in shots[:2]:
        shutil.copy(shot, loops / shot.name)
    (loops / "self").symlink_to(".")
    (loops / "around").symlink_to("../loops")
    (loops / "broken.jpg").symlink_to("nowhere.jpg")
    locked = inp / "chmod"
    locked.mkdir()
    for shot in shots[:2]:
        shutil.copy(shot, locked / shot.name)
    shutil.copy(shots[2], locked / "locked.jpg")
    (locked / "locked.jpg").chmod(0)
    (inp / "afile.txt").write_text("mine")
    (inp / "exists.safetensors").write_text("mine too")
    shutil.copytree(photos, inp / "photos")
    shutil.copytree(photos, root / UNICODE_PHOTOS)
    (inp / "bad.toml").write_text("steps = = 3")
    (inp / "prep-unknown.toml").write_text("bogus_key = 1\n")
    (inp / "train-unknown.toml").write_text('data = "in/ds"\nout = "o/t18"\nnot_a_setting = 1\n')
    (inp / "generate-unknown.toml").write_text("resolution = 64\n")
    shutil.copytree(dataset, inp / "ds")
    shutil.copytree(text_encoder_run, inp / "finished")
    shutil.copytree(text_encoder_run, inp / "run_corrupt")
    (inp / "run_corrupt" / "lora.safetensors").write_bytes(b"\xff" * 64)  # "header too large"
    shutil.copytree(text_encoder_run, inp / "run_nolora")
    (inp / "run_nolora" / "lora.safetensors").unlink()
    (inp / "base.txt").write_text("not a model")
    (inp / "fake.safetensors").write_text("not a model either")
    foreign = inp / "foreign"
    foreign.mkdir()
    ours = load_file(str(text_encoder_run / "lora.safetensors"))
    save_file({k: v for k, v in ours.items() if k.startswith("lora_unet_")}, str(foreign / "diffusers_unet.safetensors"))
    (foreign / "text.safetensors").write_text("plain text")
    shutil.copy(tiny_model / "unet" / "diffusion_pytorch_model.safetensors", foreign / "unet_checkpoint.safetensors")
    # A LoRA for a UNet whose attention is 320 wide, where the tiny model's is 64.
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.{}.weight"
    save_file({key.format("down"): torch.zeros(4, 320), key.format("up"): torch.zeros(320, 4)},
              str(foreign / "alien.safetensors"))
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its type, mode, size and modification time.

    Folders' times count under in/ (nothing may even be created there and removed again); under o/,
    a folder created and removed again by a failed command changes only its parent's time.
    """
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            rel = path.relative_to(root).as_posix()
            is_dir = stat.S_ISDIR(info.st_mode)
            keep_time = not is_dir or rel.startswith("in/")
            state[rel] = (info.st_mode, None if is_dir else info.st_size, info.st_mtime_ns if keep_time else None)
    return state


def run_case(case: Case, root: Path, capfd, home: Path) -> tuple[int, str]:
    if case.env:
        env = {**os.environ, **case.env, "LIKENESS_HOME": str(home), "HF_HOME": str(home / "hf")}
        result = subprocess.run([sys.executable, "-m", "engine", *case.argv], cwd=root, env=env,
                                capture_output=True, text=True, timeout=300)
        return result.returncode, result.stderr
    try:
        code = main(list(case.argv))
    except SystemExit as exit_:  # argparse's mistakes
        code = exit_.code
    return code, capfd.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_case(case: Case, workspace: Path, capfd, monkeypatch, home):
    monkeypatch.chdir(workspace)
    capfd.readouterr()
    before = snapshot(workspace)
    code, err = run_case(case, workspace, capfd, home)
    after = snapshot(workspace)
    assert "Traceback" not in err, err
    if case.good:
        assert code == 0, err
        inputs_after = {k: v for k, v in after.items() if k.startswith("in/") or k == "in"}
        assert inputs_after == {k: v for k, v in before.items() if k.startswith("in/") or k == "in"}
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("likeness: error: "), err
    assert case.needle in lines[0], lines[0]
    assert "modal" not in lines[0].lower(), lines[0]  # a bad input is reported as itself, not as a cloud error
    changed = sorted(set(before.items()) ^ set(after.items()))
    assert not changed, changed[:5]
