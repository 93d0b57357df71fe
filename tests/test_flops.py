"""flops.py: the FLOP count against a hand count, and its command."""
import re

from vitcifar.analysis import flops
from vitcifar.commands import flops as flops_command
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import TrainConfig


def test_flops_match_a_hand_count():
    config = TrainConfig(patch_size=16, patch_stride=16, num_layers=1, embedding_dim=4,
                         num_heads=2, mlp_hidden_dim=8, head_units=(6,))
    # 2 x 2 = 4 patches of 16*16*3 = 768 values, T = 5 tokens, D = 4, MLP 8, head 4-6-10
    assert flops.forward_flops_per_image(config) == {
        "patch_proj": 2 * 4 * 768 * 4,          # 24,576
        "qkv": 2 * 5 * 4 * 12,                  # 480
        "scores": 2 * 5 * 5 * 4,                # 200: 2 heads x (5x2 @ 2x5)
        "attention_values": 2 * 5 * 5 * 4,      # 200
        "output_proj": 2 * 5 * 4 * 4,           # 160
        "mlp": 2 * 5 * 4 * 8 * 2,               # 640
        "head": 2 * (4 * 6 + 6 * 10),           # 168
    }
    assert flops.train_flops_per_image(config) == 3 * 26_424
    # the sample preset: 60.5 MFLOP forward, 181.5 MFLOP per image per training step
    assert flops.train_flops_per_image(PRESETS["sample"]) == 181_490_688


def test_flops_script_prints_the_sample_count(capsys):
    assert flops_command.main([]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^forward +60\.50 MFLOP per image$", out, re.M)
    assert re.search(r"^training step +181\.49 MFLOP per image \(3x forward\)$", out, re.M)
    assert flops_command.main(["--preset", "huge"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --preset: invalid choice")

