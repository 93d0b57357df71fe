"""Train a Vision Transformer from scratch on CIFAR-100.

    python train_cifar100.py                       # the seed sample's preset, downloads CIFAR-100
    python train_cifar100.py --data-dir DIR        # offline, from the official archive in DIR
    python train_cifar100.py --help                # every flag

The work is in vitcifar/ (vitcifar.commands.train); this file only names the dataset.
"""
import sys

from vitcifar.commands.train import main

if __name__ == "__main__":
    sys.exit(main("cifar100"))
