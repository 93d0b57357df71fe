#!/usr/bin/env python3
"""Inference speed of a model on this CPU: Keras (a tf.function of the serving graph, and
model.predict) against ONNX Runtime on the file export.py writes, float32 and int8.

    python -m benchmarks.inference_throughput                       # every preset
    python -m benchmarks.inference_throughput --presets sample fast --batch1-runs 300

Per preset, with random weights (speed does not depend on them): the model as export.py
builds it (model_export.inference_model: float32, uint8 input scaled in the graph), its ONNX
file (model_export.to_onnx) and the int8 file (model_export.quantize_int8; current stack only).
Printed per runtime: batch-1 latency, median and 99th percentile over --batch1-runs calls
after --warmup untimed ones (model.predict: at most 50 calls, it is slow per call), and
batch-256 images/s, the median of --big-runs calls. ONNX Runtime and TensorFlow use their
default thread pools (every core). Then the ratios the deployment targets are stated in.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from vitcifar.config.datasets import CIFAR10_CLASSES, IMAGE_SIZE
from vitcifar.config.presets import PRESETS


def timings(call, runs: int, warmup: int) -> list:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure(call_for, batch1_runs, big_runs, warmup, big_batch, rng):
    one = rng.integers(0, 256, (1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    big = rng.integers(0, 256, (big_batch, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    small = np.array(timings(lambda: call_for(one), batch1_runs, warmup)) * 1e3
    large = timings(lambda: call_for(big), big_runs, 1)
    return {"median_ms": float(np.median(small)), "p99_ms": float(np.percentile(small, 99)),
            "images_per_s": big_batch / statistics.median(large)}


def preset_figures(name, args, scratch):
    from vitcifar.deploy import model_export
    from vitcifar.deploy.deployed_model import LOGITS, open_model
    rng = np.random.default_rng(0)
    config = PRESETS[name]
    model = model_export.inference_model(config)
    serve = model_export.serving_function(model)
    figures = {
        "Keras tf.function": measure(lambda x: serve(x)[LOGITS].numpy(), args.batch1_runs,
                                     args.big_runs, args.warmup, args.big_batch, rng),
        "Keras model.predict": measure(
            lambda x: model.predict(x, batch_size=len(x), verbose=0),
            min(args.batch1_runs, 50), args.big_runs, args.warmup, args.big_batch, rng)}
    values = model_export.metadata(config, CIFAR10_CLASSES, None)
    float_path = os.path.join(scratch, f"{name}.onnx")
    with open(float_path, "wb") as handle:
        handle.write(model_export.to_onnx(model, values))
    paths = {"ONNX Runtime float32": float_path}
    try:
        int8_path = os.path.join(scratch, f"{name}.int8.onnx")
        model_export.quantize_int8(float_path, int8_path)
        with open(int8_path, "rb") as handle:        # the quantiser drops metadata_props
            tagged = model_export.set_metadata(handle.read(), values)
        with open(int8_path, "wb") as handle:
            handle.write(tagged)
        paths["ONNX Runtime int8"] = int8_path
    except ImportError as error:
        print(f"  (int8 skipped: {error}; the current stack quantises)")
    for label, path in paths.items():
        session = open_model(path).session
        figures[label] = measure(lambda x: session.run([LOGITS], {"images": x})[0],
                                 args.batch1_runs, args.big_runs, args.warmup, args.big_batch,
                                 rng)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="inference_throughput.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=sorted(PRESETS),
                        default=sorted(PRESETS))
    parser.add_argument("--batch1-runs", type=int, default=200)
    parser.add_argument("--big-batch", type=int, default=256)
    parser.add_argument("--big-runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    if min(args.batch1_runs, args.big_batch, args.big_runs) < 1 or args.warmup < 0:
        print("error: --batch1-runs, --big-batch and --big-runs must be 1 or more, --warmup 0 "
              "or more", file=sys.stderr)
        return 2
    import onnxruntime
    import tensorflow as tf
    print(f"TensorFlow {tf.__version__}, ONNX Runtime {onnxruntime.__version__}, "
          f"{os.cpu_count()} CPUs; batch 1: {args.batch1_runs} calls, batch {args.big_batch}: "
          f"median of {args.big_runs}")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.presets:
            print(f"{name}:")
            figures = preset_figures(name, args, scratch)
            for label, f in figures.items():
                print(f"  {label:22s} batch 1 median {f['median_ms']:7.2f} ms, p99 "
                      f"{f['p99_ms']:7.2f} ms; batch {args.big_batch} "
                      f"{f['images_per_s']:9,.0f} images/s")
            keras = [figures["Keras tf.function"], figures["Keras model.predict"]]
            best_ms = min(f["median_ms"] for f in keras)
            best_rate = max(f["images_per_s"] for f in keras)
            ort = figures["ONNX Runtime float32"]
            line = (f"  ratios: ORT float32 batch-1 latency / Keras best "
                    f"{ort['median_ms'] / best_ms:.2f} (target <= 0.5); batch "
                    f"{args.big_batch} images/s ORT float32 / Keras best "
                    f"{ort['images_per_s'] / best_rate:.2f} (target >= 1)")
            if "ONNX Runtime int8" in figures:
                line += (f"; int8 / float32 ORT "
                         f"{figures['ONNX Runtime int8']['images_per_s'] / ort['images_per_s']:.2f}"
                         " (target >= 1.5)")
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
