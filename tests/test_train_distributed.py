"""rtune train across processes for real: two CPU processes (gloo) under ``accelerate launch``
equal one process with the same global batch; the shipped FSDP and DeepSpeed configs read and
turned into a launch by accelerate itself."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.local

ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{\n"):])


def test_two_processes_equal_one_with_the_same_global_batch(tiny_llama_path, tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"What is {i} plus {i}?", "input": "",
                                 "output": f"The answer is {2 * i}."} for i in range(16)]))
    common = ["train", str(data), "--model", str(tiny_llama_path), "--global-batch-size", "4",
              "--per-device-batch-size", "2", "--max-steps", "3", "--learning-rate", "2e-3",
              "--warmup-ratio", "0", "--max-length", "128", "--logging-steps", "1", "--json"]
    # CPU processes even where a GPU is present: the gloo backend, as on a CPU-only machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    one = subprocess.run([sys.executable, "-m", "rtune", *common, "-o", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
         str(free_port()), "-m", "rtune", *common, "-o", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = summary(one.stdout), summary(two.stdout)
    assert (a["plan"]["world_size"], a["plan"]["gradient_accumulation_steps"]) == (1, 2)
    assert (b["plan"]["world_size"], b["plan"]["gradient_accumulation_steps"]) == (2, 1)
    assert b["steps"] == a["steps"] == 3 and b["tokens_seen"] == a["tokens_seen"]
    assert b["losses"] == pytest.approx(a["losses"], rel=1e-5)
    w1 = load_file(tmp_path / "one" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model.safetensors")
    assert w1.keys() == w2.keys()
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-5


def _launch(config: str) -> object:
    """``accelerate launch --config_file CONFIG -m rtune train ...`` as accelerate reads it."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from rtune.train_config import accelerate_config

    args = launch_command_parser().parse_args(
        ["--config_file", str(accelerate_config(config)), "-m", "rtune", "train", "data.json"])
    return _validate_launch_command(args)[0]


def test_the_shipped_fsdp_config_makes_an_fsdp_launch(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    from rtune.train_config import accelerate_config

    cfg = load_config_from_file(str(accelerate_config("fsdp")))
    assert cfg.distributed_type == DistributedType.FSDP
    args = _launch("fsdp")
    assert args.use_fsdp and args.num_processes == 8 and args.mixed_precision == "bf16"
    env = prepare_multi_gpu_env(args)
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what each launched process builds
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


def test_the_shipped_deepspeed_config_makes_a_zero3_launch(monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    from rtune.train_config import accelerate_config

    cfg = load_config_from_file(str(accelerate_config("deepspeed_zero3")))
    assert cfg.distributed_type == DistributedType.DEEPSPEED
    assert cfg.deepspeed_config["zero_stage"] == 3
    args = _launch("deepspeed_zero3")
    assert args.use_deepspeed and args.zero_stage == 3 and args.num_processes == 8
    if importlib.util.find_spec("deepspeed") is None:
        return  # the plugin itself needs deepspeed installed (train extra on GPU machines)
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    _, env = prepare_deepspeed_cmd_env(args)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3 and plugin.zero3_save_16bit_model
