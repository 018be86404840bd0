"""Every mistake a user can make gets one clear line and exit code 2, and touches nothing of theirs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--base", "tiny", "--data", str(data), "--out", str(out), "--resolution", "64",
            "--steps", "2", "--sample-every", "0", "--checkpoint-every", "0", *extra]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    """Exit 2; the error is stderr's last line and its only error line (progress lines may precede it)."""
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], err
    assert lines[-1].startswith("likeness: error: ")
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_missing_data_dir(capsys, tmp_path):
    code, err = run_cli(capsys, *train_args(tmp_path / "nope", tmp_path / "out"))
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "out").exists()


def test_empty_data_dir(capsys, tmp_path):
    (tmp_path / "photos").mkdir()
    code, err = run_cli(capsys, *train_args(tmp_path / "photos", tmp_path / "out"))
    assert_one_line_error(code, err, "holds no images")


def test_no_usable_images(capsys, tmp_path, tiny_model):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    code, err = run_cli(capsys, *train_args(photos, tmp_path / "out"))
    assert_one_line_error(code, err, "no photo was accepted out of 2")


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--steps", "0", "--steps"),
    ("--steps", "-5", "--steps"),
    ("--resolution", "100", "multiple of 8"),
    ("--rank", "0", "--rank"),
    ("--lr", "-1", "--lr"),
])
def test_bad_numbers(capsys, tmp_path, photos, flag, value, needle):
    argv = train_args(photos, tmp_path / "out")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_unknown_base(capsys, tmp_path, photos):
    argv = train_args(photos, tmp_path / "out")
    argv[argv.index("--base") + 1] = "not a model"
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "unknown base model")


def test_missing_base_file(capsys, tmp_path, photos):
    argv = train_args(photos, tmp_path / "out")
    argv[argv.index("--base") + 1] = str(tmp_path / "sdxl.safetensors")
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "does not exist")


def test_unwritable_output(capsys, tmp_path, photos, tiny_model):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    code, err = run_cli(capsys, *train_args(photos, blocker / "run"))
    assert_one_line_error(code, err, "is a file, not a folder")
    assert blocker.read_text() == "mine"


def test_output_holding_other_files_is_left_alone(capsys, tmp_path, photos, tiny_model):
    out = tmp_path / "my-folder"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = run_cli(capsys, *train_args(photos, out))
    assert_one_line_error(code, err, "not a likeness run")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_finished_run_is_replaced_only_by_force_and_only_once_the_new_one_is_under_way(capsys, monkeypatch, tmp_path,
                                                                                         home, photos, tiny_model):
    out = tmp_path / "run"
    # From raw photos, so the run's prepared dataset/ is among what --force replaces; a checkpoint and
    # the user's own file beside the run, which is never ours to move.
    assert main(train_args(photos, out, "--checkpoint-every", "1")) == 0
    (out / "notes.txt").write_text("mine")
    before = _files(out)
    assert {"run.json", "lora.safetensors", "dataset/manifest.json", "checkpoints/step-000001/state.json"} <= set(before)

    # A base that passes every check before loading, and then fails to load: the tiny model with half its
    # UNet's weights (a damaged disk), in a home of its own; the tiny one, so the run stays on this CPU.
    broken_home = tmp_path / "home-with-a-damaged-base"
    broken = broken_home / "models" / tiny_model.name
    shutil.copytree(tiny_model, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    monkeypatch.setenv("LIKENESS_HOME", str(broken_home))
    capsys.readouterr()
    code, err = run_cli(capsys, *train_args(photos, out, "--force"))
    monkeypatch.setenv("LIKENESS_HOME", str(home))
    assert_one_line_error(code, err, "could not be loaded")
    assert _files(out) == before

    # Killed while loading (after the old run was set aside, before the first step): the next start in
    # that folder puts the old run back, even one that is refused.
    script = "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", script, *train_args(photos, out, "--force")],
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / ".replaced" / "moved.json").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / ".replaced").is_dir()  # killed before the new run's first step
    code, err = run_cli(capsys, *train_args(photos, out))
    assert_one_line_error(code, err, "finished run", "--force")
    assert "put back the run" in err
    assert _files(out) == before

    # A --force that gets under way replaces the run, and keeps nothing of the old one aside.
    assert main(train_args(photos, out, "--force", "--seed", "7")) == 0
    assert (out / "lora.safetensors").read_bytes() != before["lora.safetensors"]
    assert not (out / "checkpoints").exists() and (out / "notes.txt").read_text() == "mine"
    assert not (out / ".replaced").exists() and not (out / ".discarded").exists()


def test_compile_on_the_cpu(capsys, tmp_path, photos):
    code, err = run_cli(capsys, *train_args(photos, tmp_path / "out", "--compile", "--device", "cpu"))
    assert_one_line_error(code, err, "--compile needs a CUDA GPU")


def test_resume_without_checkpoint(capsys, tmp_path, photos):
    code, err = run_cli(capsys, *train_args(photos, tmp_path / "out", "--resume"))
    assert_one_line_error(code, err, "no checkpoint")


def test_config_file_errors(capsys, tmp_path, photos):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    code, err = run_cli(capsys, *train_args(photos, tmp_path / "out", "--config", str(bad)))
    assert_one_line_error(code, err, "not valid")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("stepz: 3\n")
    code, err = run_cli(capsys, *train_args(photos, tmp_path / "out", "--config", str(unknown)))
    assert_one_line_error(code, err, "stepz")


def test_lora_that_does_not_fit_the_base(capsys, tmp_path, tiny_model):
    import torch
    from safetensors.torch import save_file

    alien = tmp_path / "alien.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.{}.weight"
    save_file({key.format("down"): torch.zeros(4, 320), key.format("up"): torch.zeros(1280, 4)}, str(alien))
    code, err = run_cli(capsys, "generate", "--base", "tiny", "--lora", str(alien), "--steps", "1",
                        "--width", "64", "--out", str(tmp_path / "gen"))
    # One line that says why (the layer sizes differ), not diffusers' list of every mismatched layer.
    assert_one_line_error(code, err, "made for a model with other layer sizes", "320 vs 64", "not for base tiny")
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["--sweep", "age"], "expected NAME=VALUE"),
    (["--sweep", "temperature=0,2"], "0..1"),
    (["--sweep", "lora_scale=a,b"], "float"),
    (["--sweep", "colour=red,blue"], "not a placeholder"),
    (["--prompt", "{token} at age {age}"], "{age} has no value"),
    (["--lora", "/nowhere/run"], "does not exist"),
    (["--width", "100"], "--width"),
])
def test_generate_argument_errors(capsys, tmp_path, argv, needle):
    code, err = run_cli(capsys, "generate", "--base", "tiny", "--out", str(tmp_path / "gen"), *argv)
    assert_one_line_error(code, err, needle)


def test_offline_hub_model_says_what_to_download(tmp_path, photos):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "LIKENESS_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--data", str(photos), "--out", str(tmp_path / "out"),
         "--base", "stabilityai/stable-diffusion-xl-base-1.0", "--steps", "1", "--where", "local"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_the_first_dry_run_builds_the_tiny_model_without_the_libraries_notices(tmp_path, dataset):
    env = {**os.environ, "LIKENESS_HOME": str(tmp_path / "home")}  # a home with no tiny model yet
    result = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--data", str(dataset), "--out", str(tmp_path / "out"),
         "--base", "tiny", "--steps", "1", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "models").is_dir() and result.stdout.startswith("estimated peak RAM")
    assert result.stderr == ""  # transformers' torchvision notices and shard progress bars used to land here


def test_single_file_base_that_is_not_sdxl(capsys, tmp_path, dataset):
    import torch
    from safetensors.torch import save_file

    junk = tmp_path / "model.safetensors"
    save_file({"not.a.unet": torch.zeros(2)}, str(junk))
    argv = train_args(dataset, tmp_path / "out")
    argv[argv.index("--base") + 1] = str(junk)
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, str(junk))


@pytest.mark.parametrize(("extra", "needle"), [
    (["--rank", "65"], "--rank 65 is more than the 64 channels"),  # the tiny UNet's attention is 64 wide
    (["--rank", "33", "--train-text-encoder"], "32 channels of the narrowest layer it adapts in tiny's text encoder"),
])
def test_rank_is_bounded_by_the_narrowest_adapted_layer(capsys, tmp_path, dataset, tiny_model, extra, needle):
    code, err = run_cli(capsys, *train_args(dataset, tmp_path / "out", *extra))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "out").exists()


def test_a_cpu_run_that_cannot_fit_in_ram_is_refused_before_loading(capsys, tmp_path, dataset):
    # An SDXL-family base (any but tiny) that is only a model_index.json: loading it would fail, so
    # reaching the one-line RAM refusal shows the estimate is checked before anything loads.
    base = tmp_path / "sdxl"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    argv = train_args(dataset, tmp_path / "out", "--device", "cpu", "--batch-size", "64")
    argv[argv.index("--base") + 1] = str(base)
    argv[argv.index("--resolution") + 1] = "4096"
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "GiB of RAM on the CPU")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [
    ["generate", "--lora", "nope.safetensors"],
    ["generate", "--lora", "EMPTY"],
    ["generate", "--base", "tiny", "--prompt", "a photo of {who}"],
    ["generate", "--lora", "TEXT"],
    ["export", "nope"],
    ["train", "--data", "nope", "--out", "out"],
])
def test_cheap_mistakes_are_reported_before_torch_is_imported(tmp_path, argv):
    # Importing torch and diffusers takes seconds: a typo must be answered before that.
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "TEXT").write_text("not a LoRA")
    argv = [a.replace("TEXT", "TEXT.safetensors") for a in argv]
    (tmp_path / "TEXT").rename(tmp_path / "TEXT.safetensors")
    script = ("import sys; from engine.cli import main; code = main(sys.argv[1:]); "
              "sys.exit(code + 100 if 'torch' in sys.modules else code)")
    result = subprocess.run([sys.executable, "-c", script, *argv], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("likeness: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["EMPTY", "TEXT.safetensors"]
