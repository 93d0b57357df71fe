"""Images in, batches out.

    cifar           CIFAR as uint8 arrays from keras.datasets or the official archives (a
                    safe unpickler), the validation split
    prediction_io   image files read and resized as the model sees them; predictions printed
                    (no TensorFlow: onnx_predict.py uses it too)
    image_folders   your own images: DIR/train/CLASS/ (and test/CLASS/) as CifarData's
                    arrays, read by prediction_io; what is skipped, warned about, refused
    sources         a run's data from its config: CIFAR or a folder (the one place)
    input_pipeline  tf.data: cached uint8, per-epoch shuffle, batch, augment, prefetch

May import: vitcifar.errors, vitcifar.config, vitcifar.backend, data_augmentations.
"""
