"""A stand-in for vit_model.build_model, for the plumbing tests of a backend the model does not
run on yet: a linear classifier with the VisionTransformer's attributes that a run uses
(pooling, patch size and stride, attention_weights), weight paths under "vit/".

    python tests/stand_in_model.py SCRIPT ARGS...

runs SCRIPT (train_cifar10.py, evaluate.py, ...) as `python SCRIPT ARGS` would, with the
stand-in in place of vit_model.build_model.
"""
import importlib.util
import os
import runpy
import sys
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_model(config):
    from vitcifar.backend.keras_compat import keras
    from vitcifar.config.datasets import IMAGE_SIZE
    from vitcifar.config.settings import patch_grid_side

    class StandIn(keras.Model):
        def __init__(self):
            super().__init__(name="vit")
            self.pooling, self.patch_size = config.pooling, config.patch_size
            self.patch_stride = config.patch_stride
            self.flatten = keras.layers.Flatten(name="flatten")
            self.head = keras.layers.Dense(config.num_classes, name="head")

        def call(self, images, training=False):
            x = keras.ops.cast(images, self.compute_dtype) / 255.0      # (B, 32, 32, 3)
            return keras.ops.cast(self.head(self.flatten(x)), "float32")  # (B, classes)

        def attention_weights(self, images):
            """One layer of uniform weights (B, 1, T, T)."""
            tokens = patch_grid_side(IMAGE_SIZE, self.patch_size, self.patch_stride) ** 2 + \
                (self.pooling == "class_token")
            return [np.full((len(images), 1, tokens, tokens), 1.0 / tokens, np.float32)]

    model = StandIn()
    model(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
    return model


class _VitModel(types.ModuleType):
    """vit_model with build_model replaced; anything else is the real module's, imported
    when first asked for (not before: the command chooses the backend first)."""
    build_model = staticmethod(build_model)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        spec = importlib.util.spec_from_file_location("vit_model_real",
                                                      os.path.join(ROOT, "vit_model.py"))
        real = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(real)
        return getattr(real, name)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.modules["vit_model"] = _VitModel("vit_model")
    script = os.path.join(ROOT, sys.argv[1])
    sys.argv = [script, *sys.argv[2:]]
    runpy.run_path(script, run_name="__main__")
