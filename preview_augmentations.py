"""See what an augmentation setting does before training with it.

    python preview_augmentations.py out.png [--data-dir DIR] [--dataset cifar100]
                                    [--rows 8] [--versions 7] [any training flag]

The command is vitcifar/commands/preview_augmentations.py.
"""
import sys

from vitcifar.commands.preview_augmentations import main

if __name__ == "__main__":
    sys.exit(main())
