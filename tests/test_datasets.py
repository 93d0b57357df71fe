"""datasets.py: each dataset's facts agree with one another."""
from vitcifar.config.datasets import DATASETS, IMAGE_SIZE, PIXELS


def test_every_dataset_names_each_of_its_classes_once():
    for dataset in DATASETS.values():
        assert len(dataset.class_names) == len(set(dataset.class_names)) == \
            dataset.num_classes
        assert dataset.archive.endswith(".tar.gz") and len(dataset.sha256) == 64
    assert PIXELS == IMAGE_SIZE * IMAGE_SIZE * 3 == 3072
