"""Re-evaluate a run's saved model on the test set.

    python evaluate.py RUN_DIR [--data-dir DIR] [--batch-size N]

The command is vitcifar/commands/evaluate.py.
"""
import sys

from vitcifar.backend.devices import run_command
from vitcifar.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(run_command(main))
