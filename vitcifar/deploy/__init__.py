"""A trained run leaves the app.

    model_export    the inference graph (uint8 in, logits and probabilities out), each
                    format's converter, int8 quantisation
    onnx_fusion     tf2onnx's graph rewritten into forms ONNX Runtime runs fused
    deployed_model  opening an exported ONNX file: providers, metadata (no TensorFlow)

May import: vitcifar.errors, vitcifar.config, vitcifar.backend, vit_model. deployed_model
imports no TensorFlow and nothing that does.
"""
