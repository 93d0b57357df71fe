"""The datasets the app trains on: CIFAR-10 and CIFAR-100, every fact about them in one place
(names, image size, classes and their names, the official archives' names, layout and
checksums), and "images", your own class folders (train_images.py), whose classes, image size
and test split a run's config records. No TensorFlow: flags are checked against these before
it starts.

Class names are listed in label order as the official archives' meta files list them:
keras.datasets returns labels without names, so that path uses these; archives read with
--data-dir use the names in their own meta file.
"""
from dataclasses import dataclass
from typing import Tuple

IMAGE_SIZE = 32                                  # CIFAR images are 32x32x3 uint8
PIXELS = IMAGE_SIZE * IMAGE_SIZE * 3             # bytes per image in the official batches
DOWNLOAD_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGES = "images"              # a folder of class folders (train_images.py, image_folders.py)
IMAGES_DISPLAY_NAME = "your images"
FOLDER_TEST_FRACTION = 0.2     # share of each class held out when a folder has no test/

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")

CIFAR100_CLASSES = (  # the 100 fine labels, alphabetical as in cifar-100-python/meta
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)



@dataclass(frozen=True)
class Dataset:
    display_name: str
    num_classes: int
    class_names: Tuple[str, ...]    # in label order
    archive: str                    # official file name
    folder: str                     # the folder inside the archive
    train_files: Tuple[str, ...]
    test_files: Tuple[str, ...]
    meta_file: str
    label_key: bytes                # CIFAR-100: the 100 fine labels, not the 20 coarse ones
    names_key: bytes
    sha256: str                     # of the official archive, as keras.datasets checks it


DATASETS = {
    "cifar10": Dataset(
        "CIFAR-10", 10, CIFAR10_CLASSES, "cifar-10-python.tar.gz", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
        b"labels", b"label_names",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
    "cifar100": Dataset(
        "CIFAR-100", 100, CIFAR100_CLASSES, "cifar-100-python.tar.gz", "cifar-100-python",
        ("train",), ("test",), "meta", b"fine_labels", b"fine_label_names",
        "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),
}
DATASET_NAMES = (*DATASETS, IMAGES)      # what TrainConfig.dataset may be
