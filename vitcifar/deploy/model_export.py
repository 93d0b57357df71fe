"""A trained model in deployment formats: ONNX (for ONNX Runtime, its DirectML execution
provider and Windows ML), SavedModel and TFLite; and int8 quantisation of the ONNX file.

Every format has one input, `images`: uint8 (batch, 32, 32, 3) with the batch dynamic,
scaled by the model's own first op as in training; and two outputs, float32 (batch,
classes): `logits`, and `probabilities` (their softmax). The graph is the model in
inference mode (no dropout; augmentation is never part of the model), built in float32
whatever precision trained it, its patches taken by one Gather (PatchExtractor
gather=True), which every converter takes with a dynamic batch.

One converter per format, the same on both stacks:
  onnx         tf2onnx from a tf.function with an input signature, opset 17, standard ops
               only (the ONNX_OPS the DirectML execution provider runs; tests/test_export.py
               holds the graphs to them). Keras 3's model.export(format="onnx") is tf2onnx
               too, but Keras 2.10 (the DirectML stack) has no export at all. The converted
               graph is then rewritten by onnx_fusion into ops ONNX Runtime runs fused (one
               MatMul per Dense, LayerNormalization, a GELU its optimiser recognises).
  saved_model  tf.saved_model.save of a tf.Module holding the model, its serving function
               (signature serving_default) and the metadata as an asset (metadata.json).
  tflite       the TFLite converter from a SavedModel of the serving function with its
               variables frozen, TFLite's builtin ops only (vit_model's GELU is written in
               the form the converter fuses into TFLite's GELU op; TFLite has no Erf).
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Dict

import numpy as np
import tensorflow as tf

from vit_model import build_model
from vitcifar.backend import keras_compat
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import TrainConfig
from vitcifar.deploy import deployed_model, onnx_fusion
from vitcifar.deploy.deployed_model import INPUT, LOGITS, PROBABILITIES

keras = tf.keras
OPSET = 17                  # LayerNormalization's opset; DirectML and Windows ML run it
# The settings that make the model (the rest only change how it trains).
MODEL_SETTINGS = ("image_size", "patch_size", "patch_stride", "num_layers", "embedding_dim",
                  "num_heads", "mlp_hidden_dim", "head_units", "pooling")
ROOT = os.path.dirname(os.path.abspath(__file__))


def inference_model(config: TrainConfig):
    """The model of `config`, float32, patches by Gather; weights as initialised."""
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(config)
    model.patches.gather = True          # the same values; no weights change
    return model


def serving_function(model) -> tf.types.experimental.GenericFunction:
    """images uint8 (None, S, S, 3) -> {logits, probabilities}, traced once (S: the
    model's image_size)."""
    size = model.image_size
    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name=INPUT)])
    def serve(images):
        logits = model(images, training=False)
        return {LOGITS: logits, PROBABILITIES: tf.nn.softmax(logits)}
    return serve


def preset_of(config: TrainConfig) -> str:
    """The name of the preset whose MODEL_SETTINGS the config has, else "custom"."""
    for name, preset in PRESETS.items():
        if all(getattr(preset, key) == getattr(config, key) for key in MODEL_SETTINGS):
            return name
    return "custom"


def app_version() -> str:
    """git describe of the app's checkout (+dirty), or "unknown" outside one."""
    try:
        result = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def metadata(config: TrainConfig, class_names, test_top1) -> Dict[str, str]:
    """deployed_model.METADATA_KEYS for a float32 export of a model of `config`."""
    values = {
        "class_names": json.dumps(list(class_names)),
        "dataset": config.dataset,
        "preset": preset_of(config),
        "model": json.dumps({key: getattr(config, key) for key in MODEL_SETTINGS}),
        "test_top1": "unknown" if test_top1 is None else f"{test_top1:.4f}",
        "precision": "float32",
        "app_version": app_version(),
        "exported_with": f"TensorFlow {tf.__version__}, Keras {keras_compat.keras_version()}",
    }
    assert set(values) == set(deployed_model.METADATA_KEYS)
    return values


def set_metadata(model_bytes: bytes, values: Dict[str, str]) -> bytes:
    """The ONNX model with its metadata_props replaced by `values`."""
    import onnx
    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, values)
    return proto.SerializeToString()


def to_onnx(model, values: Dict[str, str], fuse: bool = True) -> bytes:
    """The ONNX file of `model` (inference_model), with metadata_props `values`. `fuse`
    rewrites tf2onnx's graph by onnx_fusion (the same values, fewer and fusable ops);
    fuse=False keeps tf2onnx's own graph, the plain path the tests compare it with."""
    import onnx
    import tf2onnx
    serve = serving_function(model)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature,
                                             opset=OPSET)
    if fuse:                      # one MatMul per Dense, LayerNormalization, ORT's GELU form
        proto = onnx_fusion.fuse(proto)
    values = {**values, "exported_with": f"{values['exported_with']}, "
                                         f"tf2onnx {tf2onnx.__version__}"}
    used = {node.domain for node in proto.graph.node}
    kept = [o for o in proto.opset_import if o.domain in used | {""}]   # tf2onnx adds ai.onnx.ml
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    onnx.helper.set_model_props(proto, values)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def write_saved_model(model, folder: str, values: Dict[str, str]) -> None:
    """A SavedModel of `model` in `folder`: signature serving_default, and the metadata in
    assets/metadata.json; loads with tf.saved_model.load alone (no app code)."""
    module = tf.Module()
    module.weights = list(model.weights)     # the variables alone: no Keras layer functions
    module.serve = serving_function(model)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "metadata.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(values, handle, indent=1)
        module.metadata = tf.saved_model.Asset(path)
        tf.saved_model.save(module, folder, signatures={
            "serving_default": module.serve.get_concrete_function()})


def to_tflite(model) -> bytes:
    """The TFLite flatbuffer of `model`, TFLite builtin ops only, signature serving_default.
    Converted from a SavedModel of the serving function with its variables made constants:
    TF 2.21's converter keeps a Keras 3 model's variables as resource variables, which its
    own interpreter then reads as NaN."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    serve = serving_function(model).get_concrete_function()
    frozen = convert_variables_to_constants_v2(serve)

    @tf.function(input_signature=serving_function(model).input_signature)
    def frozen_serve(images):                 # the output names the freezing dropped
        return tf.nest.pack_sequence_as(serve.structured_outputs, frozen(images))

    with tempfile.TemporaryDirectory() as scratch:
        # its custom gradients captured constants: a SavedModel cannot keep them, and an
        # inference graph needs none
        tf.saved_model.save(tf.Module(), scratch, signatures={"serving_default": frozen_serve},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def quantize_int8(float_path: str, int8_path: str) -> None:
    """ONNX Runtime's dynamic quantisation: the weights of every MatMul with a constant
    second input (every Dense) stored as int8 per output channel, activations quantised to
    uint8 per batch as they come; the attention's activation-by-activation products stay
    float32. Weights keep 7 bits (reduce_range): on x86 CPUs without VNNI (AVX2, AVX-512
    without VNNI) ONNX Runtime's uint8 x int8 kernel adds pairs of products in 16 bits
    (VPMADDUBSW), which saturate with 8-bit weights; measured on a 2-core AVX2 EPYC, the
    8-bit model's logits correlated 0.98 with Keras's, the 7-bit model's above 0.99."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(float_path, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=True, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})


def exported_logits(path: str, format_name: str, images: np.ndarray) -> np.ndarray:
    """What an exported file computes for (N, 32, 32, 3) uint8 images, read back by its own
    runtime: ONNX Runtime, tf.saved_model.load, or TFLite's interpreter."""
    if format_name == "onnx":
        return deployed_model.open_model(path).run(images)[LOGITS]
    if format_name == "saved_model":
        serve = tf.saved_model.load(path).signatures["serving_default"]
        return serve(**{INPUT: tf.constant(images)})[LOGITS].numpy()
    import warnings
    with warnings.catch_warnings():         # TF 2.21: "use the LiteRT interpreter instead"
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serving_default")
    return runner(**{INPUT: images})[LOGITS]
