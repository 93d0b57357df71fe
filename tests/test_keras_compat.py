"""keras_compat.py: which Keras tf.keras is."""
from vitcifar.backend import keras_compat


def test_the_keras_version_is_that_of_the_package_tf_keras_comes_from():
    """keras 3.x, TF 2.10's keras 2.10, or tf-keras under TF_USE_LEGACY_KERAS=1 (whose
    tf.keras has no __version__; the multi-worker tests run there and check the banner)."""
    import importlib.metadata

    import tensorflow as tf
    package = {"keras": "keras", "tf_keras": "tf-keras"}[tf.keras.__name__.split(".")[0]]
    assert keras_compat.keras_version() == importlib.metadata.version(package)
    assert keras_compat.keras_major() == int(importlib.metadata.version(package).split(".")[0])
