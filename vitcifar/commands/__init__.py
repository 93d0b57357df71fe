"""The bodies of the root commands: each module has the `main(argv)` of one command.

    train                  train_cifar10.py, train_cifar100.py, train_images.py (whose
                           folder runs.folder_run reads first): the start-up order
    evaluate, predict, export, onnx_predict, visualize, preview_augmentations, flops

May import anything in vitcifar; no command module imports another, and nothing else in the
package imports them.
"""
