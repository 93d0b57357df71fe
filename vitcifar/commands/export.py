"""Export a run's best weights (those evaluate.py reports) for use outside the app.

    python export.py RUN_DIR [--format onnx|saved_model|tflite] [--output PATH] [--force]
    python export.py RUN_DIR --quantize int8 [--data-dir DIR] [--output PATH] [--force]

writes RUN_DIR/export/model.onnx (saved_model/, model.tflite), or with --quantize int8
RUN_DIR/export/model.int8.onnx and beside it model.int8.json: the test top-1 of the float32
and int8 models, measured by ONNX Runtime on the test split, and their file sizes. Input
`images` uint8 (batch, 32, 32, 3), outputs `logits` and `probabilities`: model_export says
what the graph holds and how each format is converted; deployed_model what the ONNX file's
metadata holds. onnx_predict.py runs the ONNX file without TensorFlow.

Before the file gets its name, export reads it back with its own runtime and compares its
logits with Keras's; a file is written under a .partial- name and renamed when complete, and
an existing export is replaced only with --force. Needs requirements-export.txt (the
DirectML stack: requirements-export-directml.txt).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from typing import Callable, List, Optional

import numpy as np

from vitcifar.backend import devices
from vitcifar.config.flags import Parser, add_saved_run_arguments, add_verbose_flag
from vitcifar.errors import RunStopped, UsageError, entry_point, first_line
from vitcifar.runs import checkpoint, run_dir

FORMATS = ("onnx", "saved_model", "tflite")
DEFAULT_NAMES = {"onnx": "model.onnx", "saved_model": "saved_model", "tflite": "model.tflite"}
INT8_NAME = "model.int8.onnx"
EXPORT_FOLDER = "export"
# The largest difference from Keras's logits an export may show when read back: float32
# conversions differ by rounding, about 1e-6 (tests hold them to 1e-4).
TOLERANCE = 1e-3
CHECK_IMAGES = 64


def requirements_file() -> str:
    return ("requirements-export.txt" if devices.keras_3_installed()
            else "requirements-export-directml.txt")


def check_packages(format_name: str, quantize: bool, run_path: str) -> None:
    """UsageError naming the requirements file when a package the export needs is missing,
    and refusing --quantize where ONNX Runtime's quantiser cannot import (TF 2.10's
    protobuf < 3.20 holds onnx at 1.12, and the quantiser needs onnx >= 1.13)."""
    if format_name != "onnx":
        return
    missing = [name for name in ("tf2onnx", "onnx", "onnxruntime")
               if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"exporting to ONNX needs {', '.join(missing)}, not installed: "
                         f"pip install -r {requirements_file()}")
    if quantize:
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError as error:
            if not devices.keras_3_installed():
                raise UsageError(
                    "--quantize int8 cannot run on the DirectML stack (ONNX Runtime's "
                    "quantiser needs onnx >= 1.13, which TensorFlow 2.10's protobuf < 3.20 "
                    "rules out); run it on the current stack, which reads this run too: "
                    f"python export.py {run_path} --quantize int8") from None
            raise UsageError(f"ONNX Runtime's quantiser does not import ({first_line(error)}): "
                             f"pip install -r {requirements_file()}") from None


def output_path(args, run) -> str:
    """--output, or the default name in RUN_DIR/export; UsageError if something is there
    (without --force) or is a file where a folder goes or the reverse."""
    default = INT8_NAME if args.quantize else DEFAULT_NAMES[args.format]
    path = args.output or os.path.join(run.path, EXPORT_FOLDER, default)
    folder_format = args.format == "saved_model"
    if os.path.isdir(path) and not folder_format:
        raise UsageError(f"--output {path} is a folder; give a file name (e.g. "
                         f"{os.path.join(path, default)})")
    if os.path.isfile(path) and folder_format:
        raise UsageError(f"--output {path} is a file; a SavedModel is a folder: give a new "
                         "folder name")
    if os.path.exists(path) and not args.force:
        raise UsageError(f"{path} exists; add --force to replace it, or give another --output")
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """write(temporary) makes the output (a file or a folder) under a .partial- name beside
    `path`, which then takes its place (a folder in `path`'s place is moved aside first).
    Any failure removes the partial output and leaves `path` as it was."""
    temporary = run_dir.partial_path(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _remove(temporary)                        # left by an export that was killed
        write(temporary)
        if os.path.isfile(temporary):
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
        if os.path.isdir(path):
            aside = temporary + ".old"
            _remove(aside)
            os.replace(path, aside)
            os.replace(temporary, path)
            _remove(aside)
        else:
            os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        raise RunStopped(f"could not write {path} ({error.strerror or error}); nothing was "
                         "replaced: free some disk space or check the folder is writable")
    except BaseException:
        _remove(temporary)
        raise


def write_bytes(data: bytes) -> Callable[[str], None]:
    def write(path):
        with open(path, "wb") as handle:
            handle.write(data)
    return write


def checked(path: str, format_name: str, images: np.ndarray, expected: np.ndarray) -> float:
    """The largest difference between the export's logits, read back by its runtime, and
    Keras's; RunStopped (nothing saved) above TOLERANCE."""
    from vitcifar.deploy import model_export
    difference = float(np.max(np.abs(model_export.exported_logits(path, format_name, images)
                                     - expected)))
    if not difference <= TOLERANCE:
        raise RunStopped(f"the exported model's logits differ from Keras's by {difference:.3g} "
                         f"(more than {TOLERANCE:g}), so it was not saved: a converter fault; "
                         "please report it with the versions in the run's results.json")
    return difference


def size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(path) for name in names)


def megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e5 else f"{count / 1e3:.0f} kB"


def test_top1(path: str, x_test: np.ndarray, y_test: np.ndarray) -> float:
    from vitcifar.deploy import deployed_model
    logits = deployed_model.open_model(path).run(x_test)[deployed_model.LOGITS]
    return float(np.mean(np.argmax(logits, axis=1) == y_test))


def quantized(model, values: dict, path: str, check, x_test, y_test, stored_top1) -> dict:
    """Writes the int8 model to `path` (atomically) and returns the report: test top-1 of
    the float32 and int8 models (ONNX Runtime, the whole test split) and their sizes.
    check(float_path, "onnx") compares the float32 model with Keras first."""
    from vitcifar.deploy import model_export
    with tempfile.TemporaryDirectory() as scratch:
        float_path = os.path.join(scratch, "model.onnx")
        write_bytes(model_export.to_onnx(model, values))(float_path)
        check(float_path, "onnx")
        float_top1 = test_top1(float_path, x_test, y_test)
        report = {"test_images": len(x_test), "test_top1_float32": float_top1,
                  "results_json_test_top1": stored_top1, "bytes_float32": size(float_path),
                  "quantization": "ONNX Runtime dynamic: MatMul weights int8 per channel, "
                                  "activations uint8 per batch"}

        def write(temporary):
            model_export.quantize_int8(float_path, temporary)
            report["test_top1_int8"] = test_top1(temporary, x_test, y_test)
            with open(temporary, "rb") as handle:
                tagged = model_export.set_metadata(handle.read(), {
                    **values, "precision": "int8",
                    "test_top1": f"{report['test_top1_int8']:.4f}"})
            write_bytes(tagged)(temporary)
            report["bytes_int8"] = size(temporary)
        replace_atomically(path, write)
    return report


def parse(argv: Optional[List[str]]):
    """export.py's flags, checked against each other."""
    parser = Parser(prog="export.py",
                    description="Export a run's best weights as ONNX, SavedModel or TFLite, "
                                "for use without the app (ONNX: without TensorFlow).")
    add_saved_run_arguments(parser)          # --data-dir: read with --quantize int8 only
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx (default; ONNX Runtime, its DirectML provider, Windows ML), "
                             "saved_model (TensorFlow Serving, tf.saved_model.load) or tflite")
    parser.add_argument("--output", help="where to write (default: RUN_DIR/export/"
                                         "model.onnx, saved_model, model.tflite, "
                                         "model.int8.onnx)")
    parser.add_argument("--quantize", choices=("int8",),
                        help="int8: ONNX Runtime's dynamic quantisation of the ONNX model; "
                             "measures test top-1 before and after on the test split")
    parser.add_argument("--force", action="store_true", help="replace an existing export")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.quantize and args.format != "onnx":
        raise UsageError(f"--quantize int8 quantises an ONNX model; drop --format "
                         f"{args.format}")
    if args.data_dir and not args.quantize:
        raise UsageError("--data-dir is read only with --quantize int8 (to measure test top-1)")
    return args


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    """Returns the exit code: 0, or 2 with one `error:` line for bad input."""
    args = parse(argv)
    run = run_dir.open_run(args.run_dir)
    path = output_path(args, run)
    check_packages(args.format, bool(args.quantize), args.run_dir)
    data = None
    if args.quantize:
        from vitcifar.data import sources
        data = sources.load(run.config, run.data_dir(args.data_dir))

    from vitcifar.deploy import model_export
    model = model_export.inference_model(run.config)
    checkpoint.load_best_weights(run, model)
    stored_top1 = (run.results() or {}).get("test_top1")
    values = model_export.metadata(run.config, run.label_names, stored_top1)
    described = (f"{run.config.display_name}, preset {values['preset']}, test top-1 "
                 + ("unknown" if stored_top1 is None else f"{stored_top1:.2%}"))

    side = run.config.image_size                              # S: the run's images are SxS
    images = np.random.default_rng(0).integers(0, 256, (CHECK_IMAGES, side, side, 3), np.uint8)
    expected = model(images, training=False).numpy()
    differences = []

    def check(candidate, format_name):
        differences.append(checked(candidate, format_name, images, expected))

    kind = {"onnx": f"ONNX (opset {model_export.OPSET})", "saved_model": "a SavedModel",
            "tflite": "TFLite"}[args.format]
    if args.quantize:
        report = quantized(model, values, path, check, data.x_test, data.y_test, stored_top1)
        report_path = os.path.splitext(path)[0] + ".json"
        run_dir.atomic_write_json(report_path, report)
        kind = "int8 " + kind
    else:
        def write(temporary):
            if args.format == "saved_model":
                model_export.write_saved_model(model, temporary, values)
            else:
                write_bytes(model_export.to_onnx(model, values) if args.format == "onnx"
                            else model_export.to_tflite(model))(temporary)
            check(temporary, args.format)
        replace_atomically(path, write)

    print(f"Exported {run.path} ({described}) as {kind} to {path}, {megabytes(size(path))}")
    print(f"read back{' (float32)' if args.quantize else ''}: its logits differ from Keras's "
          f"by at most {differences[0]:.1g} on {CHECK_IMAGES} random images")
    if args.quantize:
        change = 100 * (report["test_top1_int8"] - report["test_top1_float32"])
        print(f"test top-1 on {report['test_images']:,} test images (ONNX Runtime): float32 "
              f"{report['test_top1_float32']:.2%}, int8 {report['test_top1_int8']:.2%} "
              f"({change:+.2f} points); size: float32 {megabytes(report['bytes_float32'])}, "
              f"int8 {megabytes(report['bytes_int8'])}; report in {report_path}")
    return 0
