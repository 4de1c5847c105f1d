"""The ``run`` command's contract: refused inputs name the problem and the fix and write nothing; the
files it writes; seeds and noise files; and that it runs on a tiny model set other than the goldens'
(official folder layout, so ``--vit`` / ``--vae`` default to the sibling files)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lance_model.cli import main
from lance_model.commands.run import ANSWER_FILE, RESULT_FILE
from lance_model.noise import comfy_noise
from lance_model.preprocess import bucket_frames, resolution_preset
from lance_model.tokenizer import LanceTokenizer

T2I_SIZE = ["--height", "64", "--width", "96"]  # latent 1×4×6


@pytest.fixture(scope="module")
def golden(golden_dir):
    ckpt = golden_dir / "ckpt"
    return {
        "image": ckpt / "Lance_tiny", "video": ckpt / "Lance_tiny_Video",
        "models": ["--vit", str(ckpt / "Qwen2.5-VL-ViT"), "--vae", str(ckpt / "Wan2.2_VAE.pth")],
        "png": golden_dir / "image_edit" / "inputs" / "image_16x9.png",
        "clip": golden_dir / "video_edit" / "inputs" / "clip_16x9_12fps.mp4",
        "frames": sorted((golden_dir / "video_edit" / "inputs").glob("decoded_read0_frame*.png")),
    }


def run(golden, task, out, *extra, video=False):
    ckpt = golden["video"] if video else golden["image"]
    return main(["run", "--task", task, "--checkpoint", str(ckpt), *golden["models"], "--out", str(out),
                 *map(str, extra)])


def _folder(folder, frames):
    folder.mkdir(parents=True)
    for frame in frames:
        shutil.copy(frame, folder / frame.name)
    return folder


REFUSED = [
    ("t2i", ["--prompt", "a cat"], "t2i needs the output height and width"),
    ("t2i", ["--prompt", "a cat", "--height", "100", "--width", "96"],
     "height must be a multiple of 16 px between 16 and 1024"),
    ("t2v", ["--prompt", "a cat", "--height", "64", "--width", "1040", "--frames", "9"],
     "width must be a multiple of 16 px between 16 and 1024"),
    ("t2v", ["--prompt", "a cat", *T2I_SIZE, "--frames", "8"], "t2v makes 4k+1 frames from 1 to 121"),
    ("t2v", ["--prompt", "a cat", *T2I_SIZE, "--frames", "125"], "t2v makes 4k+1 frames from 1 to 121"),
    ("t2v", ["--prompt", "a cat", *T2I_SIZE], "t2v needs the number of output frames"),
    ("t2i", ["--prompt", "   ", *T2I_SIZE], "t2i needs a non-empty prompt"),
    ("i2v", ["--prompt", "it moves", "--frames", "9"], "i2v needs --image"),
    ("i2v", ["--prompt", "it moves", "--frames", "1", "--image", "{png}"], "i2v makes 4k+1 frames from 5 to 121"),
    ("t2i", ["--prompt", "a cat", *T2I_SIZE, "--image", "{png}"], "t2i takes no --image"),
    ("image_edit", ["--prompt", "make it red", "--video", "{folder}"], "image_edit takes no --video; give --image"),
    ("image_edit", ["--prompt", "make it red", "--image", "{missing}"], "--image: file not found"),
    ("video_edit", ["--prompt", "make it red", "--video", "{folder4}"], "video_edit needs 4k+1 source frames"),
    ("x2t_image", ["--prompt", "what is it?", "--image", "{png}", "--max-new-tokens", "0"],
     "max_new_tokens must be at least 1"),
    ("x2t_image", ["--prompt", "what is it?", "--image", "{png}", "--temperature", "1", "--top-p", "0"],
     "sampling needs temperature >= 0 (0 = greedy) and 0 < top_p <= 1"),
    ("t2i", ["--prompt", "a cat", *T2I_SIZE, "--noise", "{noise_bad}"],
     "noise must be [24, 48] (24 target latent tokens, token-major)"),
    ("t2i", ["--prompt", "a cat", *T2I_SIZE, "--noise", "{eps_file}"], "has no tensor 'noise'"),
    ("image_edit", ["--prompt", "make it red", "--image", "{png}", "--resolution", "image_256res", "--posterior-eps",
                    "{eps_file}"],
     "posterior eps: eps must be channels-first [48, 1, 12, 21]"),
]


@pytest.mark.parametrize("task, extra, message", REFUSED, ids=[m for _, _, m in REFUSED])
def test_refused_requests_name_the_problem_and_write_nothing(golden, tmp_path, capsys, task, extra, message):
    save_file({"noise": torch.zeros(25, 48)}, str(tmp_path / "noise_bad.safetensors"))
    save_file({"eps": torch.zeros(48, 1, 4, 4)}, str(tmp_path / "eps.safetensors"))
    places = {"png": golden["png"], "missing": tmp_path / "nope.png", "noise_bad": tmp_path / "noise_bad.safetensors",
              "eps_file": tmp_path / "eps.safetensors", "folder": _folder(tmp_path / "five", golden["frames"]),
              "folder4": _folder(tmp_path / "four", golden["frames"][:4])}
    extra = [arg.format(**places) for arg in extra]
    assert run(golden, task, tmp_path / "out", *extra, video=task.startswith("video")) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_options_the_task_does_not_use_are_named(golden, tmp_path, capsys):
    run(golden, "x2t_image", tmp_path / "out", "--prompt", "what is it?", "--image", golden["png"], "--height", 64,
        "--frames", 9, "--fps", 12, "--max-new-tokens", 0)
    assert "note: x2t_image ignores --height --frames --fps" in capsys.readouterr().err


def test_missing_vision_tower_names_the_option(golden, tmp_path, capsys):
    code = main(["run", "--task", "x2t_image", "--checkpoint", str(golden["image"]), "--vit", str(tmp_path / "none"),
                 "--prompt", "what is it?", "--image", str(golden["png"]), "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "x2t_image needs the vision tower" in err and "pass --vit" in err


def _result(out):
    with safe_open(str(out / RESULT_FILE), "pt") as f:
        metadata = f.metadata()
    return load_file(str(out / RESULT_FILE)), json.loads(metadata["lance_run"])


def test_t2i_writes_latent_frames_and_provenance_atomically(golden, tmp_path):
    assert run(golden, "t2i", tmp_path / "a", "--prompt", "a red cube", *T2I_SIZE, "--steps", 2, "--seed", 7) == 0
    tensors, provenance = _result(tmp_path / "a")
    assert set(tensors) == {"final_latent", "decoded_uint8_thwc"}
    assert tensors["final_latent"].shape == (1, 4, 6, 48) and tensors["final_latent"].dtype == torch.bfloat16
    assert tensors["decoded_uint8_thwc"].shape == (1, 64, 96, 3) and tensors["decoded_uint8_thwc"].dtype == torch.uint8
    png = torch.from_numpy(np.array(Image.open(tmp_path / "a" / "frame_0000.png")))
    assert torch.equal(png, tensors["decoded_uint8_thwc"][0])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["frame_0000.png", RESULT_FILE]  # no temp files
    assert provenance["seed"] == 7 and provenance["steps"] == 2 and provenance["task"] == "t2i"


def test_seed_draws_comfy_noise_and_a_noise_file_replaces_it(golden, tmp_path):
    common = ["--prompt", "a red cube", *T2I_SIZE, "--steps", 2]
    assert run(golden, "t2i", tmp_path / "seed7", *common, "--seed", 7) == 0
    assert run(golden, "t2i", tmp_path / "seed8", *common, "--seed", 8) == 0
    rows = comfy_noise((1, 48, 1, 4, 6), 7)[0]
    save_file({"noise": rows}, str(tmp_path / "noise.safetensors"))
    assert run(golden, "t2i", tmp_path / "file", *common, "--seed", 8, "--noise", tmp_path / "noise.safetensors") == 0
    latent = {name: _result(tmp_path / name)[0]["final_latent"] for name in ("seed7", "seed8", "file")}
    assert torch.equal(latent["file"], latent["seed7"])
    assert not torch.equal(latent["seed8"], latent["seed7"])


def test_x2t_sampling_follows_the_seed(golden, tmp_path):
    common = ["--prompt", "What is it?", "--image", golden["png"], "--resolution", "image_256res",
              "--max-new-tokens", 8, "--temperature", 1.0]
    ids = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert run(golden, "x2t_image", tmp_path / name, *common, "--seed", seed) == 0
        ids[name] = _result(tmp_path / name)[0]["generated_ids"].tolist()
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"]


def test_x2t_writes_ids_and_their_answer(golden, tmp_path):
    assert run(golden, "x2t_image", tmp_path / "out", "--prompt", "What color is it?", "--image", golden["png"],
               "--resolution", "image_256res", "--max-new-tokens", 6) == 0
    tensors, _ = _result(tmp_path / "out")
    ids = tensors["generated_ids"]
    assert set(tensors) == {"generated_ids"} and ids.dtype == torch.int64 and 1 <= ids.numel() <= 6
    text = LanceTokenizer.from_dir(golden["image"]).decode(ids.tolist()).strip()
    assert (tmp_path / "out" / ANSWER_FILE).read_text(encoding="utf-8") == text + "\n"


@pytest.mark.parametrize("task, variant, extra", [
    ("t2v", "video", ["--height", "32", "--width", "48", "--frames", "5"]),
    ("image_edit", "image", ["--image", "{png}"]),
    ("x2t_video", "video", ["--video", "{clip}", "--max-new-tokens", "3"]),
])
def test_runs_on_another_tiny_model_with_sibling_vit_and_vae(tiny_checkpoint, golden, tmp_path, task, variant, extra):
    extra = [arg.format(png=golden["png"], clip=golden["clip"]) for arg in extra]
    out = tmp_path / "out"
    code = main(["run", "--task", task, "--checkpoint", str(getattr(tiny_checkpoint, variant)), "--prompt",
                 "Make it gold.", "--steps", "2", "--resolution", "video_192p", "--out", str(out), *extra])
    assert code == 0
    tensors, _ = _result(out)
    if task == "t2v":
        assert tensors["decoded_uint8_thwc"].shape == (5, 32, 48, 3)
        assert tensors["final_latent"].shape == (2, 2, 3, 48)
    elif task == "image_edit":  # the target keeps the source's bucket
        height, width = bucket_frames(Image.open(golden["png"]), resolution_preset("video_192p").vae, 16).shape[1:3]
        assert tensors["decoded_uint8_thwc"].shape == (1, height, width, 3)
        assert tensors["final_latent"].shape == (1, height // 16, width // 16, 48)
    else:  # the mp4 went through the reference's frame sampler and the bundled ViT
        assert 1 <= tensors["generated_ids"].numel() <= 3
