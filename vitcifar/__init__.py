"""ViT on CIFAR: everything below the commands at the repository's root.

A training run passes through the subpackages in this order, and each imports only those
before it (tests/test_layering.py checks every import, those inside functions too):

    errors      UsageError, RunStopped and the one error report of every command
    config      the typed settings, presets, the regularisation rule, config.json, flags
    backend     before and around the framework: GPU variables, devices, which Keras
    ops         numerical kernels the model and the augmentations are built from
    data        CIFAR archives, image files, the tf.data pipeline
    runs        the run folder, its checkpoint format, resuming
    training    compile, precision, distribution, the time budget, fit, how a run ends
    deploy      the inference graph, ONNX export and rewrite, the TensorFlow-free predictor
    analysis    figures of a run, FLOP counts
    commands    the bodies of the root commands (train_cifar10.py, evaluate.py, ...)

The model (vit_model.py) and the augmentations (data_augmentations.py) stay at the root,
as the product's design names them; the package imports them, they import only config and
backend modules, which never import them back. No module here imports a root command.
"""
