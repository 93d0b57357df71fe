"""`python flops.py [--preset NAME]`: FLOPs per image of a preset's model, by part."""
from __future__ import annotations

from vitcifar.analysis.flops import (TRAIN_STEP_FACTOR, forward_flops_per_image,
                                     train_flops_per_image)
from vitcifar.config.flags import Parser
from vitcifar.config.presets import PRESETS
from vitcifar.errors import entry_point


@entry_point
def main(argv=None) -> int:
    """`python flops.py [--preset NAME]`: the count by part, forward and per training step."""
    parser = Parser(prog="flops.py", description="FLOPs per image of a preset's model.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sample")
    config = PRESETS[parser.parse_args(argv).preset]
    parts = forward_flops_per_image(config)
    for name, value in parts.items():
        print(f"{name:18s} {value / 1e6:8.2f} MFLOP")
    forward = sum(parts.values())
    print(f"{'forward':18s} {forward / 1e6:8.2f} MFLOP per image")
    print(f"{'training step':18s} {train_flops_per_image(config) / 1e6:8.2f} MFLOP per image "
          f"({TRAIN_STEP_FACTOR}x forward)")
    return 0
