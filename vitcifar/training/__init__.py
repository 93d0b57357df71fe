"""Training a run from start to finish.

    trainer        one run: split, settle the settings, build, resume or plan, fit, finish
    compiled       the optimizer, schedule, loss and metrics compiled in; test figures
    optimization   Adam/AdamW, the warmup-cosine schedule, loss and metrics
    precision      the number format (float32, mixed float16, mixed bfloat16) and why
    distribution   the tf.distribute strategy: replicas, workers, the chief, TF_CONFIG
    workers        the multi-worker side: the chief's start shared, lost workers
    fit_loop       around model.fit: the Bookkeeper callback, TensorBoard, Ctrl-C, timing
    ending         results.json, figures, the messages of a stopped run

May import: every subpackage above it (errors, config, backend, data, runs), vitcifar.analysis
for the figures, vit_model and data_augmentations.
"""
