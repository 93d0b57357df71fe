"""Export a run's best weights (those evaluate.py reports) for use outside the app.

    python export.py RUN_DIR [--format onnx|saved_model|tflite] [--output PATH] [--force]
    python export.py RUN_DIR --quantize int8 [--data-dir DIR] [--output PATH] [--force]

The command is vitcifar/commands/export.py.
"""
import sys

from vitcifar.backend.devices import run_command
from vitcifar.commands.export import main

if __name__ == "__main__":
    sys.exit(run_command(main, backend_flag=False))   # the export is a TensorFlow graph
