"""The Keras the app runs on, and its serialisation registration: the one place that knows
which Keras runs (Keras 3 on TensorFlow >= 2.16, Keras 2.10 on the DirectML stack,
tf-keras under TF_USE_LEGACY_KERAS=1, Keras 3 on PyTorch under KERAS_BACKEND=torch) and
where they differ in what the app calls.

`keras` is tf.keras on TensorFlow, and the keras package itself when Keras 3 runs another
backend: there importing this module imports no TensorFlow. On TensorFlow it does;
devices.versions() reads keras_version() lazily, so that flags are checked before
TensorFlow starts.
"""
import os


def _the_keras():
    """tf.keras (Keras 3, TF 2.10's Keras 2.10, or tf-keras under TF_USE_LEGACY_KERAS=1), or
    the keras package when it is Keras 3 on a backend other than TensorFlow."""
    if os.environ.get("TF_USE_LEGACY_KERAS", "") not in ("1", "true", "True"):
        import keras as package           # on TF 2.10 Keras 2.10, which imports TensorFlow
        if (int(package.__version__.split(".")[0]) >= 3
                and package.backend.backend() != "tensorflow"):
            return package
    import tensorflow as tf
    return tf.keras


keras = _the_keras()


def keras_version() -> str:
    """The version of the Keras that `keras` is: Keras 3's, TF 2.10's bundled Keras, or
    tf-keras's under TF_USE_LEGACY_KERAS=1, where tf.keras has no __version__."""
    version = getattr(keras, "__version__", None)
    if version is None:                          # tf.keras is tf_keras.api._v2.keras
        import tf_keras
        version = tf_keras.__version__
    return version


def keras_major() -> int:
    return int(keras_version().split(".")[0])


def to_numpy(value):
    """A variable's or tensor's value as a numpy array, from any device: Keras 3's
    convert_to_numpy on torch; on TensorFlow through a tensor (Keras 2's variables of a
    tf.distribute strategy, MirroredVariable, have no numpy conversion of their own)."""
    import numpy as np
    if BACKEND != "tensorflow":
        return keras.ops.convert_to_numpy(value)
    import tensorflow as tf
    return np.asarray(tf.convert_to_tensor(value))


# Keras 3 has the .keras format, keras.ops, keras.optimizers.AdamW and variable.path; Keras
# 2.10 has SavedModel folders, optimizers.experimental.AdamW and names ending in ":0".
KERAS_3 = keras_major() >= 3
# "tensorflow" (every Keras 2, and Keras 3 by default) or Keras 3's other backend ("torch").
BACKEND = keras.backend.backend()
# The app's layers and schedules, registered under "vit>" so that a saved model reloads
# them by name (keras.models.load_model) without custom_objects.
register = keras.utils.register_keras_serializable(package="vit")
