"""Classify image files with a model exported by export.py, on ONNX Runtime: no TensorFlow.

    python onnx_predict.py MODEL.onnx IMAGE_OR_FOLDER... [--provider cpu|directml]
                           [--device-id N] [--top-k K] [--json]

prints what predict.py prints for the run the model came from (the same image handling,
prediction_io; the same lines). Needs only requirements-deploy.txt (numpy, Pillow,
onnxruntime); on Windows, `onnxruntime-directml` instead of `onnxruntime` adds
`--provider directml`, any DirectX 12 GPU, `--device-id` choosing the adapter.
"""
from __future__ import annotations

from typing import List, Optional

from vitcifar.config.flags import Parser
from vitcifar.data import prediction_io
from vitcifar.deploy import deployed_model
from vitcifar.errors import UsageError, entry_point


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """Returns the exit code: 0, or 2 with one `error:` line for bad input."""
    parser = Parser(prog="onnx_predict.py",
                    description="Print the most probable classes of image files, as a model "
                                "exported by export.py sees them, with ONNX Runtime.")
    parser.add_argument("model", metavar="MODEL.onnx", help="a file export.py wrote")
    prediction_io.add_arguments(parser)
    parser.add_argument("--provider", choices=sorted(deployed_model.PROVIDERS), default="cpu",
                        help="ONNX Runtime execution provider (default cpu; directml needs "
                             "the onnxruntime-directml package, on Windows)")
    parser.add_argument("--device-id", type=int, default=0,
                        help="with --provider directml: the DirectX adapter index (default 0)")
    args = parser.parse_args(argv)
    prediction_io.check_top_k(args.top_k)
    if args.device_id < 0:
        raise UsageError(f"--device-id must be 0 or more, got {args.device_id}")
    model = deployed_model.open_model(args.model, args.provider, args.device_id)
    paths = prediction_io.image_paths(args.images)
    images = prediction_io.read_images(paths, model.image_size)       # the export's input size
    probabilities = model.run(images)[deployed_model.PROBABILITIES]
    print(prediction_io.report(paths, probabilities, model.class_names, args.top_k, args.json))
    return 0
