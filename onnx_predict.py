"""Classify image files with a model exported by export.py, on ONNX Runtime: no TensorFlow.

    python onnx_predict.py MODEL.onnx IMAGE_OR_FOLDER... [--provider cpu|directml]
                           [--device-id N] [--top-k K] [--json]

The command is vitcifar/commands/onnx_predict.py.
"""
import sys

from vitcifar.commands.onnx_predict import main

if __name__ == "__main__":
    sys.exit(main())
