"""FLOPs per image of a preset's model, counted from its layer shapes (no TensorFlow).

    python flops.py [--preset NAME]

The command is vitcifar/commands/flops.py.
"""
import sys

from vitcifar.commands.flops import main

if __name__ == "__main__":
    sys.exit(main())
