"""Train a Vision Transformer from scratch on CIFAR-10.

    python train_cifar10.py                       # the seed sample's preset, downloads CIFAR-10
    python train_cifar10.py --data-dir DIR        # offline, from the official archive in DIR
    python train_cifar10.py --help                # every flag

The work is in vitcifar/ (vitcifar.commands.train); this file only names the dataset.
"""
import sys

from vitcifar.commands.train import main

if __name__ == "__main__":
    sys.exit(main("cifar10"))
