"""Classify image files with a trained run.

    python predict.py RUN_DIR IMAGE_OR_FOLDER... [--top-k K] [--json]

prints one line per image, the K most probable classes first:

    photos/cat.jpg: cat 0.71, dog 0.12, deer 0.06, frog 0.04, bird 0.03

Images are PNG, JPEG, GIF or BMP files of any size, or folders of them, read and resized to
the run's image size (32x32 for CIFAR runs) as prediction_io says (the same way as onnx_predict.py, which runs an exported model
without TensorFlow). The class names come from the run directory; the dataset is not needed.
"""
from __future__ import annotations

from typing import List, Optional

from vitcifar.config.flags import Parser, add_backend_flag, add_verbose_flag
from vitcifar.data import prediction_io
from vitcifar.errors import entry_point
from vitcifar.runs import checkpoint, run_dir


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """Returns the exit code: 0, or 2 with one `error:` line for bad input."""
    parser = Parser(prog="predict.py",
                    description="Print the most probable classes of image files, as a trained "
                                "run's model sees them.")
    parser.add_argument("run_dir", help="a run directory written by train_cifar10.py, "
                                        "train_cifar100.py or train_images.py")
    prediction_io.add_arguments(parser)
    add_verbose_flag(parser)
    add_backend_flag(parser)
    args = parser.parse_args(argv)
    prediction_io.check_top_k(args.top_k)
    run = run_dir.open_run(args.run_dir)
    paths = prediction_io.image_paths(args.images)
    images = prediction_io.read_images(paths, run.config.image_size)
    from vit_model import build_model
    model = build_model(run.config)
    checkpoint.load_best_weights(run, model)
    probabilities = prediction_io.softmax(model.predict(images, verbose=0))
    print(prediction_io.report(paths, probabilities, run.label_names, args.top_k, args.json))
    return 0
