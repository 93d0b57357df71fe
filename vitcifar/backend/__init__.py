"""What comes before and around the framework: the GPU variables set before TensorFlow is
imported, the device a run trains on, which Keras runs, and the kernels a device has.

    devices       GPU variables, a quiet TensorFlow start-up, device detection, XLA choice
    keras_compat  which Keras runs (KERAS_3) and the serialisation registration
    op_coverage   the ops of a model's train and test steps against a device's kernels

May import: vitcifar.errors, vitcifar.config.
"""
