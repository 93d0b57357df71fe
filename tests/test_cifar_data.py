"""The loader on archives and folders with the official layout, and on bad ones."""
import gzip
import os
import pickle

import numpy as np
import pytest

import archives
from vitcifar.config import datasets
from vitcifar.data import cifar
from vitcifar.data.cifar import DataError


def check_matches(data, arrays, names):
    np.testing.assert_array_equal(data.x_train, arrays["train"][0])
    np.testing.assert_array_equal(data.y_train, arrays["train"][1])
    np.testing.assert_array_equal(data.x_test, arrays["test"][0])
    np.testing.assert_array_equal(data.y_test, arrays["test"][1])
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (32, 32, 3)
    assert data.label_names == list(names)


def test_cifar10_archive_gives_back_the_images_and_labels_written(cifar10_tar, cifar10_files):
    data = cifar.load("cifar10", cifar10_tar)
    check_matches(data, cifar10_files[1], datasets.CIFAR10_CLASSES)
    assert len(data.x_train) == 5 * 40 and len(data.x_test) == 40


@pytest.mark.parametrize("as_parent", [True, False])
def test_extracted_folders_are_read_too(tmp_path, cifar100_files, as_parent):
    root = archives.write_folder(str(tmp_path), cifar100_files[0])
    data_dir = root if as_parent else os.path.join(root, "cifar-100-python")
    data = cifar.load("cifar100", data_dir)
    check_matches(data, cifar100_files[1], datasets.CIFAR100_CLASSES)   # fine labels, not coarse
    assert data.y_train.max() >= 20


def test_pixels_are_decoded_from_channel_major_rows(tmp_path):
    files, arrays = archives.archive_files("cifar10", per_batch=2)
    image = arrays["train"][0][0]
    data = cifar.load("cifar10", archives.write_folder(str(tmp_path), files))
    # the pixel at row 3, column 5 of channel 1 is byte 1*1024 + 3*32 + 5 of the stored row
    stored = pickle.loads(files["cifar-10-batches-py/data_batch_1"], encoding="bytes")[b"data"][0]
    assert data.x_train[0, 3, 5, 1] == stored[1024 + 3 * 32 + 5] == image[3, 5, 1]


def test_validation_split_is_seeded_and_disjoint():
    x = np.arange(100)[:, None].repeat(3, 1)
    y = np.arange(100)
    (tx, ty), (vx, vy) = cifar.split_validation(x, y, 0.2, seed=3)
    (tx2, _), (vx2, _) = cifar.split_validation(x, y, 0.2, seed=3)
    (_, _), (vx3, _) = cifar.split_validation(x, y, 0.2, seed=4)
    assert len(vy) == 20 and len(ty) == 80
    assert set(ty).isdisjoint(vy) and set(ty) | set(vy) == set(range(100))
    np.testing.assert_array_equal(vx, vx2)
    assert not np.array_equal(vx, vx3)
    np.testing.assert_array_equal(vx[:, 0], vy)             # labels stay with images


class Exploit:
    """A pickle payload that would create a marker file if it were ever run (through
    os.system, or `call`, e.g. eval)."""
    def __init__(self, marker, call=os.system):
        self.marker, self.call = marker, call

    def __reduce__(self):
        return (self.call, (f"touch {self.marker}",))


def tampered(files, name, payload):
    return {**files, f"cifar-10-batches-py/{name}": payload}


def test_a_crafted_pickle_is_refused_without_running(tmp_path, cifar10_files):
    marker = tmp_path / "pwned"
    batch = {b"data": Exploit(marker), b"labels": [0]}
    path = archives.write_tar(str(tmp_path / "evil.tar.gz"),
                              tampered(cifar10_files[0], "data_batch_2",
                                       pickle.dumps(batch, protocol=2)))
    with pytest.raises(DataError, match=r"data_batch_2 .* not plain CIFAR data .*system"):
        cifar.load("cifar10", path)
    assert not marker.exists()
    # the payload really would run under a plain unpickler: the test can fail
    pickle.loads(pickle.dumps(batch, protocol=2))
    assert marker.exists()


def test_wrong_dataset_archive_is_named(tmp_path, cifar100_files):
    path = archives.write_tar(str(tmp_path / "mine.tar.gz"), cifar100_files[0])
    with pytest.raises(DataError, match="holds CIFAR-100, not CIFAR-10; pass cifar-10-python.tar.gz .or its folder., or train on CIFAR-100 with train_cifar100.py"):
        cifar.load("cifar10", path)
    archives.write_folder(str(tmp_path / "dir"), cifar100_files[0])
    with pytest.raises(DataError, match="holds CIFAR-100, not CIFAR-10"):
        cifar.load("cifar10", str(tmp_path / "dir"))


def test_truncated_archive(tmp_path, cifar10_tar):
    payload = open(cifar10_tar, "rb").read()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="truncated or not a gzip tar"):
        cifar.load("cifar10", str(path))


def test_official_name_with_other_contents_fails_the_checksum(tmp_path, cifar10_tar):
    os.makedirs(tmp_path / "d")
    (tmp_path / "d" / "cifar-10-python.tar.gz").write_bytes(open(cifar10_tar, "rb").read())
    with pytest.raises(DataError, match="not the official cifar-10-python.tar.gz"):
        cifar.load("cifar10", str(tmp_path / "d"))


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels of shape"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside 0..9"),
    ({b"labels": [0]}, "no labels / data"),
])
def test_malformed_batches(tmp_path, cifar10_files, batch, message):
    path = archives.write_tar(str(tmp_path / "bad.tar.gz"),
                              tampered(cifar10_files[0], "test_batch",
                                       pickle.dumps(batch, protocol=2)))
    with pytest.raises(DataError, match=message):
        cifar.load("cifar10", path)


def test_paths_outside_the_folder_are_refused(tmp_path, cifar10_files):
    path = str(tmp_path / "escape.tar.gz")
    archives.write_tar(path, {**cifar10_files[0], "../../etc/evil": b"x"})
    with pytest.raises(DataError, match="outside its folder"):
        cifar.load("cifar10", path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        cifar.load("cifar10", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no cifar-10-python.tar.gz or cifar-10-batches-py/"):
        cifar.load("cifar10", str(tmp_path))


def test_a_folder_with_one_cifar_archive_under_another_name_uses_it(tmp_path, cifar10_files,
                                                                   cifar100_files, capsys):
    folder = tmp_path / "downloads"
    folder.mkdir()
    archives.write_tar(str(folder / "cifar10 (1).tgz"), cifar10_files[0])
    archives.write_tar(str(folder / "c100.tar.gz"), cifar100_files[0])      # the other one
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as handle:  # gzip, no tar
        handle.write(b"\x00\x00\x08\x03" + bytes(600))
    (folder / "notes.txt").write_text("x")
    data = cifar.load("cifar10", str(folder))
    check_matches(data, cifar10_files[1], datasets.CIFAR10_CLASSES)
    assert "warning: cifar10 (1).tgz is not named cifar-10-python.tar.gz, so its checksum " \
        "is not checked" in capsys.readouterr().out
    assert len(cifar.load("cifar100", str(folder)).x_test) == len(cifar100_files[1]["test"][0])


def test_several_candidate_archives_are_listed_in_one_line(tmp_path, cifar10_files):
    archives.write_tar(str(tmp_path / "a.tar.gz"), cifar10_files[0])
    archives.write_tar(str(tmp_path / "b.tgz"), cifar10_files[0])
    (tmp_path / "c.tar.gz").write_bytes(b"\x1f\x8b\x08 broken")      # gzip, too broken to tell
    with pytest.raises(DataError, match=r"holds no cifar-10-python.tar.gz but several archives "
                                        r"that may be CIFAR-10: a.tar.gz, b.tgz, c.tar.gz; pass "
                                        r"the one to use as --data-dir .*NAME$"):
        cifar.load("cifar10", str(tmp_path))


def test_a_folder_with_only_the_other_cifar_under_another_name_says_so(tmp_path,
                                                                      cifar100_files):
    archives.write_tar(str(tmp_path / "mine.tgz"), cifar100_files[0])
    with pytest.raises(DataError, match="holds CIFAR-100, not CIFAR-10"):
        cifar.load("cifar10", str(tmp_path))
    (tmp_path / "mine.tgz").unlink()
    with pytest.raises(DataError, match="or pass the archive file itself as --data-dir"):
        cifar.load("cifar10", str(tmp_path))


def test_offline_without_cached_data_names_data_dir(monkeypatch):
    import tensorflow as tf

    def offline(**kwargs):
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/~kriz/"
                        "cifar-10-python.tar.gz: None -- [Errno -3] name resolution")
    monkeypatch.setattr(tf.keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10 .* --data-dir"):
        cifar.load("cifar10")


def test_keras_datasets_path_returns_flat_labels_and_names(monkeypatch):
    import tensorflow as tf
    x = np.zeros((4, 32, 32, 3), np.uint8)
    y = np.array([[1], [2], [3], [4]])
    monkeypatch.setattr(tf.keras.datasets.cifar100, "load_data",
                        lambda label_mode: ((x, y), (x, y)) if label_mode == "fine" else None)
    data = cifar.load("cifar100")
    assert data.y_train.shape == (4,) and data.label_names[:2] == ["apple", "aquarium_fish"]


def test_an_archive_that_unpacks_too_large_is_refused(monkeypatch, cifar10_tar):
    monkeypatch.setattr(cifar, "MAX_UNPACKED_BYTES", 4096)
    with pytest.raises(DataError, match="unpacks to more than 0 MB: not a CIFAR archive"):
        cifar.load("cifar10", cifar10_tar)
def with_exploit_in_test_batch(files, marker):
    """The test batch (read last) would run code: a loader that stops at the first fault,
    or that executes nothing, never creates the marker."""
    evil = {b"data": Exploit(marker), b"labels": [0]}
    return {**files, "cifar-10-batches-py/test_batch": __import__("pickle").dumps(evil, 2)}


def write_raw_tar(path, entries):
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in entries:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def malformed(kind, tmp_path, files, marker):
    import pickle
    import tarfile
    files = with_exploit_in_test_batch(files, marker)
    if kind == "truncated gzip":
        full = open(archives.write_tar(str(tmp_path / "full.tar.gz"), files), "rb").read()
        (tmp_path / "a.tar.gz").write_bytes(full[: len(full) // 3])
    elif kind == "corrupt gzip":
        full = bytearray(open(archives.write_tar(str(tmp_path / "f.tar.gz"), files), "rb").read())
        full[200:260] = b"\x00" * 60
        (tmp_path / "a.tar.gz").write_bytes(bytes(full))
    elif kind == "not a tar":
        import gzip
        (tmp_path / "a.tar.gz").write_bytes(gzip.compress(b"just some text " * 100))
    elif kind in ("path outside", "absolute path", "symlink"):
        entries = []
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            entries.append((info, payload))
        bad = tarfile.TarInfo({"path outside": "cifar-10-batches-py/../../escape",
                               "absolute path": "/tmp/escape",
                               "symlink": "cifar-10-batches-py/link"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            entries.insert(0, (bad, None))
        else:
            bad.size = 1
            entries.insert(0, (bad, b"x"))
        write_raw_tar(str(tmp_path / "a.tar.gz"), entries)
    elif kind == "other CIFAR":
        files100, _ = archives.archive_files("cifar100", per_batch=4)
        archives.write_tar(str(tmp_path / "a.tar.gz"), files100)
    else:
        batch = {"pickle imports eval": {b"data": Exploit(marker, eval), b"labels": [0]},
                 "wrong shape": {b"data": np.zeros((2, 32, 32), np.uint8), b"labels": [0, 1]},
                 "wrong dtype": {b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]},
                 "labels out of range": {b"data": np.zeros((2, 3072), np.uint8),
                                         b"labels": [0, -1]}}[kind]
        files = {**files, "cifar-10-batches-py/data_batch_1": pickle.dumps(batch, protocol=2)}
        archives.write_tar(str(tmp_path / "a.tar.gz"), files)
    return str(tmp_path / "a.tar.gz")


@pytest.mark.parametrize("kind, message", [
    ("truncated gzip", "truncated or not a gzip tar"),
    ("corrupt gzip", "truncated or not a gzip tar"),
    ("not a tar", "truncated or not a gzip tar"),
    ("path outside", "outside its folder"),
    ("absolute path", "outside its folder"),
    ("symlink", "outside its folder"),
    ("other CIFAR", "holds CIFAR-100, not CIFAR-10; pass cifar-10-python.tar.gz .or its folder., or train on CIFAR-100 with train_cifar100.py"),
    ("pickle imports eval", r"not plain CIFAR data .*(__builtin__|builtins)\.eval"),
    ("wrong shape", r"data should be uint8 of shape \(N, 3072\)"),
    ("wrong dtype", "data should be uint8"),
    ("labels out of range", "labels outside 0..9"),
])
def test_malformed_archive_is_refused_and_runs_nothing(tmp_path, cifar10_files, kind, message):
    from vitcifar.data import cifar
    marker = tmp_path / "marker"
    with pytest.raises(cifar.DataError, match=message):
        cifar.load("cifar10", malformed(kind, tmp_path, cifar10_files[0], marker))
    assert not marker.exists()


@pytest.mark.slow
def test_the_cli_reports_a_crafted_archive_in_one_line(tmp_path, cifar10_files):
    from helpers import run_app
    marker = tmp_path / "marker"
    path = malformed("pickle imports eval", tmp_path, cifar10_files[0], marker)
    result = run_app("train_cifar10.py", "--data-dir", path, "--output-dir", tmp_path / "o")
    assert result.returncode == 2
    assert [l for l in result.stderr.splitlines() if l.startswith("error:")] == [
        l for l in result.stderr.splitlines() if "not plain CIFAR data" in l]
    assert not marker.exists() and "Traceback" not in result.stderr

