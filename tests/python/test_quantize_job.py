"""The main job: ArrowQuantV2 / `arrowquant quantize` on diffusers models built here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from child_process import default_sigint

import arrowquant as aq


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowquant", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=(os.environ | env) if env else None,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DConditionModel

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(128, 256),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    pipe = root / "sd-tiny"
    unet.half().save_pretrained(pipe / "unet", max_shard_size="5MB")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(pipe / "scheduler")
    (pipe / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "scheduler": ["diffusers", "DDPMScheduler"],
            }
        )
    )
    dit = DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=64,
        in_channels=4,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    )
    dit.half().save_pretrained(root / "dit-tiny", max_shard_size="2MB")
    return {"unet": pipe, "dit": root / "dit-tiny"}


def _f16_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.safetensors"))


@pytest.mark.parametrize("which", ["unet", "dit"])
def test_local_profile_file_is_small_and_matches_its_report(
    models: dict[str, Path], tmp_path: Path, which: str
) -> None:
    out = tmp_path / "out"
    r = _run(
        "quantize", str(models[which]), str(out), "--profile", "local", "--no-calibration", "--json"
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    model = aq.open(out / "model.aq.parquet")
    assert sorted(model.names()) == sorted(layer["name"] for layer in rep["layers"])
    size = (out / "model.aq.parquet").stat().st_size
    assert size == rep["summary"]["file_bytes"]
    assert size <= 0.30 * _f16_bytes(models[which]), (size, _f16_bytes(models[which]))
    quantized = [layer for layer in rep["layers"] if layer["action"] == "quantized"]
    assert quantized, "nothing was quantized"
    for layer in quantized:
        info = model.info(layer["name"])
        assert info["spec"]["format"] == layer["format"]
        assert info["metrics"]["rel_rmse"] == pytest.approx(layer["metrics"]["rel_rmse"])
        q = model.tensor(layer["name"])
        assert q.nbytes == layer["stored_bytes"]
        assert 8 * q.nbytes / int(np.prod(layer["shape"])) == pytest.approx(q.bits_per_weight)
    by = {layer["name"]: layer for layer in rep["layers"]}
    if which == "unet":
        assert by["unet/conv_in.weight"]["action"] == "kept"
        assert by["unet/conv_in.weight"]["why"] == "first or last layer"
        assert by["unet/time_embedding.linear_1.weight"]["bits"] == 8  # sensitive: more bits
        assert by["unet/time_embedding.linear_1.weight"]["why"] == "time embedding"
        assert by["unet/down_blocks.0.resnets.0.conv1.weight"]["bits"] == 4  # convs quantized
        assert rep["modality"] == "image"
    else:
        modulation = [n for n, layer in by.items() if "adaLN" in layer["why"]]
        assert modulation and all(by[n]["action"] == "quantized" for n in modulation)
        # Each block's label embedding table (under norm1.emb) is kept like any embedding.
        labels = [n for n in by if "class_embedder.embedding_table" in n]
        assert labels and all(by[n]["why"] == "embedding" for n in labels)
        assert all(by[n]["action"] == "kept" for n in labels)
    md = (out / "report.md").read_text()
    assert "| tensor |" in md and "bits per weight" in md
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hard_layer_falls_back_and_says_why(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    plain = rng.normal(0, 0.02, (64, 256)).astype(np.float32)
    hard = rng.normal(0, 0.02, (64, 256)).astype(np.float32)
    hard[:, 3::17] *= 6  # outlier input channels
    safetensors.numpy.save_file(
        {"blocks.0.ff.weight": plain, "blocks.0.attn.weight": hard}, tmp_path / "m.safetensors"
    )
    rep = aq.ArrowQuantV2().quantize_diffusion_model(
        tmp_path / "m.safetensors",
        tmp_path / "out",
        aq.DiffusionQuantConfig.from_profile("edge", max_rel_rmse=0.33),
    )
    by = {layer["name"]: layer for layer in rep.layers}
    assert by["blocks.0.ff.weight"]["bits"] == 2
    assert by["blocks.0.attn.weight"]["bits"] == 3  # the ladder climbs 2 -> 3 -> 4 -> 8
    assert "int2: relative RMSE" in by["blocks.0.attn.weight"]["fallbacks"][0]
    assert "int2: relative RMSE" in (tmp_path / "out" / "report.md").read_text()


def test_bad_inputs_exit_2_with_one_line_and_leave_nothing(
    models: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    (tmp_path / "empty").mkdir()
    (tmp_path / "exists").mkdir()
    cases = [
        ("quantize", str(tmp_path / "missing"), str(tmp_path / "o1")),
        ("quantize", str(tmp_path / "empty"), str(tmp_path / "o2")),
        ("quantize", str(tmp_path / "bad.safetensors"), str(tmp_path / "o3")),
        ("quantize", str(models["unet"]), str(tmp_path / "no" / "such" / "dir")),
        ("quantize", str(models["unet"]), str(tmp_path / "exists")),
        ("quantize", str(models["unet"]), str(tmp_path / "o4"), "--max-rel-rmse", "-1"),
        ("quantize", str(models["unet"]), str(tmp_path / "o5"), "--override", "([=4"),
        ("quantize", str(models["unet"]), str(tmp_path / "o6"), "--bits", "5"),
        ("inspect", str(tmp_path / "bad.safetensors")),
    ]
    for args in cases:
        r = _run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("arrowquant: error:"), (args, r.stderr)
    r = _run(
        "quantize", str(models["unet"]), str(tmp_path / "o7"), env={"ARROW_QUANT_BITS": "four"}
    )
    assert r.returncode == 2 and "ARROW_QUANT_BITS" in r.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["bad.safetensors", "empty", "exists"], left
    assert not any((tmp_path / "exists").iterdir())


def test_fail_fast_exit_1(models: dict[str, Path], tmp_path: Path) -> None:
    r = _run(
        "quantize",
        str(models["dit"]),
        str(tmp_path / "o"),
        "--max-rel-rmse",
        "0.0001",
        "--fail-fast",
        "--no-calibration",
    )
    assert r.returncode == 1, r.stderr
    assert "relative RMSE" in r.stderr
    assert not (tmp_path / "o").exists()


def test_progress_callback_exception_cancels_cleanly(
    models: dict[str, Path], tmp_path: Path
) -> None:
    calls: list[tuple[int, int, str]] = []

    def progress(done: int, total: int, name: str) -> None:
        calls.append((done, total, name))
        if len(calls) == 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            models["unet"], tmp_path / "o", progress_callback=progress
        )
    assert len(calls) == 3
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(aq.CancelledError):
        aq.ArrowQuantV2().quantize_diffusion_model(
            models["unet"], tmp_path / "o", progress_callback=lambda *a: False
        )
    assert list(tmp_path.iterdir()) == []


def test_overrides_and_validate(models: dict[str, Path], tmp_path: Path) -> None:
    cfg = aq.DiffusionQuantConfig.from_profile("local", overrides=[r"attn\d?\.to_q=8", "ff=keep"])
    rep = aq.ArrowQuantV2().quantize_diffusion_model(models["unet"], tmp_path / "o", cfg)
    for layer in rep.layers:
        if "to_q.weight" in layer["name"]:
            assert layer["bits"] == 8, layer
        if ".ff." in layer["name"] and layer["name"].endswith("weight"):
            assert layer["action"] == "kept" and layer["why"].startswith("override")
    r = _run("validate", str(models["unet"]), str(tmp_path / "o"), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and all(row["rel_rmse"] < 0.12 for row in rows)


def test_config_validation_profiles_and_env() -> None:
    c = aq.DiffusionQuantConfig.from_profile("cloud")
    assert (c.bits, c.max_rel_rmse) == (8, 0.02)
    assert aq.DiffusionQuantConfig.from_dict(c.to_dict()) == c
    with pytest.raises(aq.ConfigurationError, match="bits"):
        aq.DiffusionQuantConfig(bits=5)
    with pytest.raises(aq.ConfigurationError, match="profile"):
        aq.DiffusionQuantConfig.from_profile("phone")
    with pytest.raises(aq.ConfigurationError, match="unknown config fields: colour"):
        aq.DiffusionQuantConfig.from_dict({"colour": 1})
    e = c.with_env({"ARROW_QUANT_BITS": "4", "ARROW_QUANT_FAIL_FAST": "true"})
    assert e.bits == 4 and e.fail_fast
    with pytest.raises(aq.ConfigurationError, match="ARROW_QUANT_MAX_REL_RMSE"):
        c.with_env({"ARROW_QUANT_MAX_REL_RMSE": "low"})
    with pytest.raises(aq.ConfigurationError, match="ARROW_QUANT_FAIL_FAST"):
        c.with_env({"ARROW_QUANT_FAIL_FAST": "maybe"})
    assert "bits=8" in repr(c)
    y = c.to_yaml()
    assert aq.DiffusionQuantConfig.from_yaml(y) == c
    with pytest.raises(aq.ConfigurationError, match="max_rel_rmse"):
        aq.DiffusionQuantConfig.from_yaml("bits: 4\nmax_rel_rmse: -2\n")
    with pytest.raises(aq.ConfigurationError, match="YAML"):
        aq.DiffusionQuantConfig.from_yaml("bits: [4\n")


def test_dry_run_shows_rules_and_writes_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    r = _run(
        "quantize", str(models["unet"]), str(tmp_path / "o"), "--dry-run", "--override", "to_k=8"
    )
    assert r.returncode == 0, r.stderr
    assert "first match wins" in r.stdout and "to_k  ->  int8" in r.stdout
    assert "unet/conv_in.weight" in r.stdout and "first or last layer" in r.stdout
    r = _run("quantize", str(models["unet"]), str(tmp_path / "o"), "--dry-run", "--json")
    plan = {t["name"]: t for t in json.loads(r.stdout)["tensors"]}
    assert plan["unet/conv_in.weight"]["bits"] == 0
    assert plan["unet/down_blocks.0.resnets.0.conv1.weight"]["bits"] == 4
    assert not (tmp_path / "o").exists()


def test_config_file_on_the_command_line(models: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        aq.DiffusionQuantConfig.from_profile("cloud", calibration="").to_yaml()
    )
    r = _run(
        "quantize",
        str(models["dit"]),
        str(tmp_path / "o"),
        "--config",
        str(tmp_path / "c.yaml"),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["bits"] == 8
    (tmp_path / "bad.yaml").write_text("bits: 5\n")
    r = _run(
        "quantize", str(models["dit"]), str(tmp_path / "o2"), "--config", str(tmp_path / "bad.yaml")
    )
    assert r.returncode == 2 and "bits" in r.stderr


def test_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    import signal
    import time

    # 128 f16 tensors of 1024x1024 (256 MiB): the pipeline runs for about a second on a fast
    # machine, so the interrupt lands inside it, however fast quantization gets.
    rng = np.random.default_rng(0)
    row = rng.normal(0, 0.02, (1024, 1024)).astype(np.float16)
    weights = {f"blocks.{i}.ff.weight": np.roll(row, i, axis=1) for i in range(128)}
    safetensors.numpy.save_file(weights, tmp_path / "m.safetensors")
    del weights, row
    out = tmp_path / "out"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "arrowquant",
            "quantize",
            str(tmp_path / "m.safetensors"),
            str(out),
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )

    def writing_model() -> bool:
        # The C++ writer creates the model file's temporary name when the pipeline starts.
        try:
            return any(
                y.name.startswith("model.aq.parquet.tmp")
                for x in tmp_path.iterdir()
                if x.name.startswith(".out.tmp")
                for y in x.iterdir()
            )
        except FileNotFoundError:  # the folder went away: the run ended (asserted below)
            return False

    deadline = time.monotonic() + 60
    while not writing_model():
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.002)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]


def test_target_bpw_budget(models: dict[str, Path], tmp_path: Path) -> None:
    r = _run("quantize", str(models["unet"]), str(tmp_path / "o"), "--target-bpw", "5", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert "met" in rep["summary"]["budget"]
    # The budget is the file's (metadata, footer, scales as zstd stores them), not the payload's
    # uncompressed bits per weight that the summary reports.
    params = sum(math.prod(layer["shape"]) for layer in rep["layers"])
    file_bpw = 8 * (tmp_path / "o" / "model.aq.parquet").stat().st_size / params
    assert 4.5 < file_bpw <= 5.0, file_bpw
    widths = {
        layer["bits"] for layer in rep["layers"] if layer["why"] == "width from the size budget"
    }
    assert len(widths) >= 2, widths  # a mix of widths, chosen per layer
    r = _run("quantize", str(models["unet"]), str(tmp_path / "o2"), "--target-bpw", "0.5")
    assert r.returncode == 2 and "target_bpw" in r.stderr
