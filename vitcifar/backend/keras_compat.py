"""The Keras that tf.keras is, and the app's serialisation registration: the one place that
knows which Keras runs (Keras 3 on TensorFlow >= 2.16, Keras 2.10 on the DirectML stack,
tf-keras under TF_USE_LEGACY_KERAS=1) and where the two differ in what the app calls.

Importing it imports TensorFlow; devices.versions() reads keras_version() lazily, so that
flags are checked before TensorFlow starts.
"""
import tensorflow as tf

keras = tf.keras


def keras_version() -> str:
    """The version of the Keras that tf.keras is: Keras 3's, TF 2.10's bundled Keras, or
    tf-keras's under TF_USE_LEGACY_KERAS=1, where tf.keras has no __version__."""
    version = getattr(keras, "__version__", None)
    if version is None:                          # tf.keras is tf_keras.api._v2.keras
        import tf_keras
        version = tf_keras.__version__
    return version


def keras_major() -> int:
    return int(keras_version().split(".")[0])


# Keras 3 has the .keras format, keras.optimizers.AdamW and variable.path; Keras 2.10 has
# SavedModel folders, optimizers.experimental.AdamW and names ending in ":0".
KERAS_3 = keras_major() >= 3
# The app's layers and schedules, registered under "vit>" so that a saved model reloads
# them by name (keras.models.load_model) without custom_objects.
register = keras.utils.register_keras_serializable(package="vit")
