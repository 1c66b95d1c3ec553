"""Every command's --help prints (argparse %-formats help strings, so a stray "%" in a config's help text
crashes it), and names what the command is for."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["import_prompts", "sample_responses", "export_rankings", "simulate_annotators", "train_sft", "train_rm",
            "train_ppo", "make_tiny_model", "demo", "reap_stale_runs"]


@pytest.mark.parametrize("command", COMMANDS)
def test_management_command_help(command):
    result = subprocess.run([sys.executable, "manage.py", command, "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"usage: manage.py {command}" in result.stdout


@pytest.mark.parametrize("module", ["training.rlhf.sft_cli", "training.rlhf.rm_cli", "training.rlhf.ppo_cli"])
def test_plain_cli_help(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--output-dir" in result.stdout or "--out" in result.stdout
