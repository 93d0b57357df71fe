"""A stand-in for vit_model.build_model: a linear classifier with the VisionTransformer's
attributes that a run uses (pooling, patch size and stride, attention_weights), weight paths
under "vit/". tests/test_torch_directml_ops.py traces the app's optimizers, schedules, losses
and metrics with it, apart from the model's own ops.
"""
import numpy as np


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
