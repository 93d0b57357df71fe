"""Train a Vision Transformer on your own images: a folder of class folders.

    python train_images.py DIR                    # DIR/train/CLASS/*.jpg (and DIR/test/CLASS/)
    python train_images.py DIR --image-size 64 --preset tiny
    python train_images.py DIR --init-from runs/cifar10-...   # start from a trained run
    python train_images.py --help                 # every flag

Class names are DIR/train's folder names, sorted; without DIR/test, --test-fraction of each
class is held out (seeded). The work is in vitcifar/ (vitcifar.commands.train, the same
start-up as train_cifar10.py; vitcifar.runs.folder_run reads the folder first); this file
only names the dataset.
"""
import sys

from vitcifar.commands.train import main

if __name__ == "__main__":
    sys.exit(main("images"))
