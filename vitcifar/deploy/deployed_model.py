"""A model exported to ONNX by export.py, run by ONNX Runtime: no TensorFlow needed.

The file is self-describing: its metadata_props (METADATA_KEYS) hold the class names in
label order and what a caller may want to know about the run it came from; its one input,
`images`, takes uint8 (batch, S, S, 3) images as decoded (the model scales them; S is the
run's image size, 32 for CIFAR, read from the input's shape: image_size); its
outputs are `logits` and `probabilities`, float32 (batch, classes).

`--provider directml` runs it on any DirectX 12 GPU through ONNX Runtime's DirectML
execution provider, which the `onnxruntime-directml` package has (Windows) and the plain
`onnxruntime` package has not.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from vitcifar.errors import UsageError, first_line

INPUT = "images"
LOGITS, PROBABILITIES = "logits", "probabilities"
# The metadata_props model_export writes: name -> what it holds.
METADATA_KEYS = {
    "class_names": "JSON list of the class names in label order",
    "dataset": "cifar10, cifar100, or images (a train_images.py run)",
    "preset": "the preset whose model the run has (its config.json records settings, not "
              "a preset name), or custom",
    "model": "JSON of the model's settings (patch size, depth, width, ...)",
    "test_top1": "this file's top-1 accuracy on the test split: results.json's figure for "
                 "a float32 export, measured by export.py for an int8 one",
    "precision": "float32, or int8 (dynamic quantisation of the MatMul weights)",
    "app_version": "git commit of the app that exported it (+dirty for local changes)",
    "exported_with": "TensorFlow, Keras and converter versions",
}
PROVIDERS = {"cpu": "CPUExecutionProvider", "directml": "DmlExecutionProvider"}
DEPLOY_REQUIREMENTS = "requirements-deploy.txt"


@dataclass
class DeployedModel:
    path: str
    session: object                 # onnxruntime.InferenceSession
    metadata: Dict[str, str]

    @property
    def class_names(self) -> List[str]:
        return json.loads(self.metadata["class_names"])

    @property
    def image_size(self) -> int:
        """S of the (batch, S, S, 3) input: the images' side in pixels."""
        return int(self.session.get_inputs()[0].shape[1])

    def run(self, images: np.ndarray, batch_size: int = 256) -> Dict[str, np.ndarray]:
        """{logits, probabilities} of (N, S, S, 3) uint8 images, `batch_size` at a time."""
        parts = [self.session.run([LOGITS, PROBABILITIES], {INPUT: images[i:i + batch_size]})
                 for i in range(0, len(images), batch_size)]
        return {LOGITS: np.concatenate([p[0] for p in parts]),
                PROBABILITIES: np.concatenate([p[1] for p in parts])}


def import_onnxruntime():
    """onnxruntime, or UsageError naming the requirements file."""
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(f"ONNX Runtime is not installed: pip install -r {DEPLOY_REQUIREMENTS} "
                         "(on Windows, for a DirectML GPU: pip install onnxruntime-directml "
                         "instead of onnxruntime)") from None
    return onnxruntime


def open_model(path: str, provider: str = "cpu", device_id: int = 0,
               threads: int = 0) -> DeployedModel:
    """An ONNX Runtime session of an exported model on `provider` ("cpu" or "directml";
    `device_id` is the DirectX adapter index), `threads` intra-op threads (0: ONNX Runtime
    decides). UsageError for a missing file, a missing provider, a file that is not ONNX
    or not a model of this app."""
    if not os.path.isfile(path):
        raise UsageError(f"no ONNX file {path}; make one with: python export.py RUN_DIR")
    ort = import_onnxruntime()
    name = PROVIDERS[provider]
    if name not in ort.get_available_providers():
        raise UsageError(
            f"this ONNX Runtime ({ort.__version__}) has no {provider} execution provider "
            f"(it has {', '.join(ort.get_available_providers())}); for a DirectML GPU on "
            "Windows: pip uninstall onnxruntime, then pip install onnxruntime-directml")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    provider_options = [{"device_id": device_id}] if provider == "directml" else [{}]
    if provider == "directml":          # the DirectML provider runs one request at a time
        options.enable_mem_pattern = False
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(path, options, providers=[name],
                                       provider_options=provider_options)
    except Exception as error:          # ONNX Runtime raises its own Fail/InvalidGraph types
        raise UsageError(f"{path} is not an ONNX model ONNX Runtime can load "
                         f"({first_line(error)})") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    inputs = {i.name: i.type for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if "class_names" not in metadata or inputs != {INPUT: "tensor(uint8)"} or \
            not {LOGITS, PROBABILITIES} <= outputs:
        raise UsageError(f"{path} is not a model exported by this app's export.py (no class "
                         "names in its metadata, or not one uint8 input named images)")
    return DeployedModel(path, session, metadata)
