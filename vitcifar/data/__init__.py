"""Images in, batches out.

    cifar           CIFAR as uint8 arrays from keras.datasets or the official archives (a
                    safe unpickler), the validation split
    prediction_io   image files read and resized as the model sees them; predictions printed
                    (no TensorFlow: onnx_predict.py uses it too)
    input_pipeline  tf.data: cached uint8, per-epoch shuffle, batch, augment, prefetch

May import: vitcifar.errors, vitcifar.config, vitcifar.backend, data_augmentations.
"""
