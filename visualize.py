"""Draw the figures of a run into its folder: training curves, confusion matrix, test
predictions, attention maps, and an image cut into the model's patches.

    python visualize.py RUN_DIR [--data-dir DIR] [--patches IMAGE_INDEX]

The command is vitcifar/commands/visualize.py.
"""
import sys

from vitcifar.backend.devices import run_command
from vitcifar.commands.visualize import main

if __name__ == "__main__":
    sys.exit(run_command(main))
