"""CIFAR-10 / CIFAR-100 as uint8 numpy arrays, from keras.datasets or the official archives.

With no data folder, the data come through keras.datasets (downloaded once, then cached in
~/.keras/datasets). With ``--data-dir``, from the official ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz`` (or their extracted folders) for machines without internet.

The official batches are Python pickles, and a pickle can run any code it names. They are
read with an unpickler that can build nothing but numpy arrays, lists, dicts and strings,
so a crafted archive is refused before anything in it runs.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from vitcifar.config.datasets import DATASETS, DOWNLOAD_PAGE, PIXELS, Dataset
from vitcifar.errors import UsageError, first_line

# The official archives unpack to about 180 MB; a renamed archive is not checksummed, so
# reading stops here rather than filling memory with a decompression bomb.
MAX_UNPACKED_BYTES = 512 * 1024 * 1024


class DataError(UsageError):
    """The data cannot be had or cannot be trusted; the message says what to do."""


@dataclass
class CifarData:
    x_train: np.ndarray     # (N, 32, 32, 3) uint8
    y_train: np.ndarray     # (N,) int64 class indices
    x_test: np.ndarray
    y_test: np.ndarray
    label_names: List[str]

    def summary(self) -> Optional[dict]:
        """What results.json records about the data besides the dataset's name: nothing for
        CIFAR (image_folders.ImageFolderData: the folder, its counts, the skipped files)."""
        return None


def load(dataset: str, data_dir: Optional[str] = None) -> CifarData:
    spec = DATASETS[dataset]
    if data_dir is None:
        return _load_through_keras(dataset)
    return _load_from_path(spec, data_dir)


def split_validation(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int):
    """A seeded random hold-out: returns (train_x, train_y), (val_x, val_y)."""
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, int(round(len(images) * fraction)))
    val, train = order[:n_val], order[n_val:]
    if len(train) == 0:
        raise DataError(f"--validation-fraction {fraction} leaves no training images; lower it")
    return (images[train], labels[train]), (images[val], labels[val])


# --- keras.datasets ---------------------------------------------------------------------------

def _load_through_keras(dataset: str) -> CifarData:
    import tensorflow as tf

    spec = DATASETS[dataset]
    module = getattr(tf.keras.datasets, dataset)
    kwargs = {"label_mode": "fine"} if dataset == "cifar100" else {}
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data(**kwargs)
    except Exception as error:  # keras raises a bare Exception for URL failures
        raise DataError(
            f"could not download {spec.display_name} through keras.datasets "
            f"({first_line(error)}); "
            f"without internet, fetch {spec.archive} from {DOWNLOAD_PAGE} elsewhere and pass "
            f"--data-dir FOLDER_WITH_IT") from None
    return CifarData(x_train, y_train.reshape(-1).astype(np.int64), x_test,
                     y_test.reshape(-1).astype(np.int64), list(DATASETS[dataset].class_names))


# --- the official archives and folders --------------------------------------------------------

def _load_from_path(spec: Dataset, data_dir: str) -> CifarData:
    if not os.path.exists(data_dir):
        raise DataError(f"--data-dir {data_dir} does not exist; pass the folder that holds "
                        f"{spec.archive} or {spec.folder}/")
    if os.path.isfile(data_dir):
        return _read_archive(spec, data_dir)
    archive = os.path.join(data_dir, spec.archive)
    if os.path.isfile(archive):
        return _read_archive(spec, archive)
    for folder in (os.path.join(data_dir, spec.folder), data_dir):
        if os.path.isfile(os.path.join(folder, spec.meta_file)):
            return _read_folder(spec, folder)
    for other in DATASETS.values():
        if other is not spec and (os.path.exists(os.path.join(data_dir, other.archive))
                                  or os.path.isdir(os.path.join(data_dir, other.folder))):
            raise _wrong_dataset(data_dir, other, spec)
    found = archives_in(data_dir)
    mine = [path for path, folder in found.items() if folder in (spec.folder, None)]
    if len(mine) == 1:
        return _read_archive(spec, mine[0])        # warns that it is not checksummed
    if len(mine) > 1:
        raise DataError(f"{data_dir} holds no {spec.archive} but several archives that may be "
                        f"{spec.display_name}: {', '.join(sorted(map(os.path.basename, mine)))}; "
                        f"pass the one to use as --data-dir {os.path.join(data_dir, 'NAME')}")
    others = [o for o in DATASETS.values() if o.folder in found.values()]
    if others:
        raise _wrong_dataset(data_dir, others[0], spec)
    raise DataError(f"no {spec.archive} or {spec.folder}/ in {data_dir}; download "
                    f"{spec.archive} from {DOWNLOAD_PAGE} into that folder, or pass the "
                    "archive file itself as --data-dir")


def archives_in(folder: str) -> Dict[str, Optional[str]]:
    """{path: CIFAR folder it unpacks to} of the gzip files directly in `folder` that are
    CIFAR archives under any name, judged by their first member (one tar block is
    decompressed). None: a gzip file too damaged to tell, kept so that reading it says
    what is wrong. Gzip files of other kinds (not a tar, another first folder) are left out."""
    folders = {spec.folder for spec in DATASETS.values()}
    found = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                if handle.read(2) != b"\x1f\x8b":
                    continue
            with gzip.open(path, "rb") as handle:
                header = handle.read(tarfile.BLOCKSIZE)
        except (OSError, EOFError, zlib.error):
            found[path] = None                    # gzip magic, but unreadable
            continue
        try:
            first = tarfile.TarInfo.frombuf(header, tarfile.ENCODING, "surrogateescape").name
        except tarfile.HeaderError:
            continue                              # a gzip file, not a tar archive
        top = first.replace("\\", "/").lstrip("./").split("/")[0]
        if top in folders:
            found[path] = top
    return found


def _read_folder(spec: Dataset, folder: str) -> CifarData:
    def read(name: str) -> bytes:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{folder} has no {name}: not a complete {spec.display_name} "
                            f"folder; extract {spec.archive} again")
        with open(path, "rb") as handle:
            return handle.read()
    return _assemble(spec, read, folder)


def _read_archive(spec: Dataset, path: str) -> CifarData:
    name = os.path.basename(path)
    if name == spec.archive:
        digest = _sha256(path)
        if digest != spec.sha256:
            raise DataError(f"{path} is not the official {spec.archive} (SHA-256 {digest[:12]}... "
                            f"differs; a broken or partial download?); download it again")
    elif name in {other.archive for other in DATASETS.values()}:
        raise _wrong_dataset(path, next(o for o in DATASETS.values() if o.archive == name), spec)
    else:
        print(f"warning: {name} is not named {spec.archive}, so its checksum is not checked")
    try:
        # Decompress all of it first: gzip checks its CRC and length only at the end, and
        # tarfile takes a garbled header for the end of the archive.
        with gzip.open(path, "rb") as handle:
            payload = handle.read(MAX_UNPACKED_BYTES + 1)
        if len(payload) > MAX_UNPACKED_BYTES:
            raise DataError(f"{path} unpacks to more than {MAX_UNPACKED_BYTES >> 20} MB: not "
                            f"a CIFAR archive; download {spec.archive} again")
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
            members = {}
            for member in tar.getmembers():
                parts = member.name.replace("\\", "/").split("/")
                if member.name.startswith(("/", "\\")) or ".." in parts or \
                        member.issym() or member.islnk():
                    raise DataError(f"{path} holds {member.name!r}, a path or link outside its "
                                    "folder; refusing a crafted archive")
                members[member.name] = member
            contents = {}
            for wanted in spec.train_files + spec.test_files + (spec.meta_file,):
                key = f"{spec.folder}/{wanted}"
                if key not in members or not members[key].isfile():
                    raise _missing_member_error(spec, path, key, members)
                contents[wanted] = tar.extractfile(members[key]).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:  # gzip's BadGzipFile too
        raise DataError(f"{path} is truncated or not a gzip tar archive ({error}); "
                        "download it again") from None
    return _assemble(spec, contents.__getitem__, path)


def _missing_member_error(spec, path, key, members) -> DataError:
    for other in DATASETS.values():
        if other is not spec and any(m.startswith(other.folder + "/") for m in members):
            return _wrong_dataset(path, other, spec)
    return DataError(f"{path} has no {key}: not a {spec.display_name} archive; download "
                     f"{spec.archive} again")


def _wrong_dataset(where: str, other: Dataset, spec: Dataset) -> DataError:
    """The one message for the other CIFAR found where `spec`'s data were looked for."""
    return DataError(f"{where} holds {other.display_name}, not {spec.display_name}; pass "
                     f"{spec.archive} (or its folder), or train on {other.display_name} "
                     f"with train_{other.display_name.lower().replace('-', '')}.py")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _assemble(spec: Dataset, read, where: str) -> CifarData:
    def batches(names):
        images, labels = [], []
        for name in names:
            x, y = _parse_batch(spec, name, _unpickle(read(name), name, where), where)
            images.append(x)
            labels.append(y)
        return np.concatenate(images), np.concatenate(labels)

    meta = _unpickle(read(spec.meta_file), spec.meta_file, where)
    names = meta.get(spec.names_key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != spec.num_classes:
        raise DataError(f"{spec.meta_file} in {where} does not list {spec.num_classes} class "
                        f"names: not {spec.display_name}")
    x_train, y_train = batches(spec.train_files)
    x_test, y_test = batches(spec.test_files)
    return CifarData(x_train, y_train, x_test, y_test, [_text(n) for n in names])


def _parse_batch(spec: Dataset, name: str, batch, where: str):
    bad = f"{name} in {where} is not a {spec.display_name} batch"
    if not isinstance(batch, dict) or b"data" not in batch or spec.label_key not in batch:
        raise DataError(f"{bad} (no {spec.label_key.decode()} / data); download it again")
    data, labels = batch[b"data"], batch[spec.label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS:
        shape = getattr(data, "shape", None)
        raise DataError(f"{bad} (data should be uint8 of shape (N, {PIXELS}), got "
                        f"{getattr(data, 'dtype', type(data).__name__)} {shape})")
    labels = np.asarray(labels)
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{bad} ({len(data)} images but labels of shape {labels.shape})")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(f"{bad} (labels outside 0..{spec.num_classes - 1})")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue); the model wants NHWC.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --- the restricted unpickler ------------------------------------------------------------------

def _numpy_reconstruct():
    try:  # numpy >= 2 keeps it in numpy._core; numpy.core remains as a shim
        from numpy._core.multiarray import _reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text, encoding="latin1"):
    # Python 3 writes an array's bytes in a protocol-2 pickle as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected _codecs.encode call")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]()
        raise pickle.UnpicklingError(f"{module}.{name}")


def _unpickle(payload: bytes, name: str, where: str):
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{name} in {where} is not plain CIFAR data (its pickle asks for "
                        f"{error}); refusing to load it") from None
    except Exception as error:  # truncated or garbled pickles raise all sorts
        raise DataError(f"{name} in {where} is corrupt ({type(error).__name__}); "
                        "download the data again") from None
