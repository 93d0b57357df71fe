"""Classify image files with a trained run.

    python predict.py RUN_DIR IMAGE_OR_FOLDER... [--top-k K] [--json]

The command is vitcifar/commands/predict.py.
"""
import sys

from vitcifar.backend.devices import run_command
from vitcifar.commands.predict import main

if __name__ == "__main__":
    sys.exit(run_command(main))
