"""CIFAR-10 from local files, and a LightningDataModule that keeps the whole dataset on the training device.

Three sources are read, none needs network access:

- the packed JPEG file ``cifar10_jpeg_packed.npz`` (all 60000 images; keys ``train_jpeg``, ``train_offsets``,
  ``train_labels``, ``test_*``, ``class_names``): decoded once, then cached as ``.npy`` so later loads only read
  the decoded arrays;
- the decoded subset ``cifar10_subset_uint8.npz`` (keys ``x_train``, ``y_train``, ``x_test``, ``y_test``,
  ``class_names``: 5000 train / 1000 test images, balanced);
- torchvision's official ``cifar-10-batches-py`` folder (``torchvision.datasets.CIFAR10(root, download=False)``).

Every loader returns :class:`CIFAR10Arrays`: uint8 image tensors of shape ``(N, 3, 32, 32)`` and int64 labels.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from tetra_lightning.data.augment import normalize_images, random_crop_flip
from tetra_lightning.data.loader import InMemoryBatchLoader

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10Arrays",
    "CIFAR10DataModule",
    "decode_jpeg_packed",
    "default_cache_dir",
    "find_cifar10",
    "load_cifar10",
    "load_cifar10_packed",
    "load_cifar10_subset",
    "load_cifar10_torchvision",
]

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

PACKED_FILE = "cifar10_jpeg_packed.npz"
SUBSET_FILE = "cifar10_subset_uint8.npz"


@dataclass(frozen=True)
class CIFAR10Arrays:
    """CIFAR-10 images and labels in memory.

    Images are uint8 ``(N, 3, 32, 32)`` tensors; they are views of ``(N, 32, 32, 3)`` arrays, i.e. stored in
    ``torch.channels_last`` memory format (``.contiguous()`` gives the NCHW layout). Labels are int64 ``(N,)``.

    Attributes:
        x_train: training images.
        y_train: training labels in ``[0, 10)``.
        x_test: test images.
        y_test: test labels.
        class_names: the 10 class names, index = label.
        source: where the arrays came from (a path or ``"torchvision:<root>"``).
    """

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("x_train", "x_test"):
            images = getattr(self, name)
            if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"`{name}` must be a uint8 (N, 3, H, W) tensor, got {images.dtype} "
                                 f"{tuple(images.shape)}.")
        for x_name, y_name in (("x_train", "y_train"), ("x_test", "y_test")):
            if getattr(self, x_name).shape[0] != getattr(self, y_name).shape[0]:
                raise ValueError(f"`{x_name}` and `{y_name}` differ in length.")


def default_cache_dir() -> Path:
    """Where decoded arrays are cached: ``$TETRA_CACHE_DIR`` or ``~/.cache/tetra_lightning``.

    Returns:
        The directory (not created here).
    """
    env = os.environ.get("TETRA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tetra_lightning"


def find_cifar10(path: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a CIFAR-10 location: a file, or a folder holding the packed file, the subset or torchvision's data.

    Args:
        path: a ``.npz`` file, a folder, or ``None`` for ``$TETRA_DATA_DIR/cifar10``.

    Returns:
        The file or folder to pass to :func:`load_cifar10`.

    Raises:
        FileNotFoundError: if nothing usable is found; the message lists what was tried.
    """
    if path is None:
        env = os.environ.get("TETRA_DATA_DIR")
        if not env:
            raise FileNotFoundError(
                "No CIFAR-10 location given and $TETRA_DATA_DIR is not set. Pass the path of "
                f"`{PACKED_FILE}`, `{SUBSET_FILE}` or a folder with torchvision's `cifar-10-batches-py`."
            )
        path = Path(env) / "cifar10"
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "cifar-10-batches-py", path / PACKED_FILE):
            if candidate.exists():
                return path if candidate.name == "cifar-10-batches-py" else candidate
        if path.name == "cifar-10-batches-py":
            return path.parent
    raise FileNotFoundError(
        f"No CIFAR-10 data at {str(path)!r}: expected a `.npz` file, a folder containing `{PACKED_FILE}`, or a "
        "torchvision root containing `cifar-10-batches-py` (download it with "
        "`torchvision.datasets.CIFAR10(root, download=True)`)."
    )


def load_cifar10(
    path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
) -> CIFAR10Arrays:
    """Load CIFAR-10 from the packed JPEG file, the decoded subset, or torchvision's files, whichever ``path`` is.

    Args:
        path: ``cifar10_jpeg_packed.npz``, ``cifar10_subset_uint8.npz``, a folder holding one of them, or a
            torchvision root with ``cifar-10-batches-py``; ``None`` looks in ``$TETRA_DATA_DIR/cifar10``.
        cache_dir: cache folder for decoded JPEGs (default :func:`default_cache_dir`).
        num_threads: decoding threads for the packed file (default: CPU count, at most 16).

    Returns:
        The arrays.

    Raises:
        FileNotFoundError: if ``path`` holds no CIFAR-10 data.
        ValueError: if a ``.npz`` file has neither the packed nor the subset keys.

    Example:
        >>> import os
        >>> data = load_cifar10(os.environ["TETRA_DATA_DIR"] + "/cifar10/cifar10_subset_uint8.npz")  # doctest: +SKIP
        >>> data.x_train.shape, data.y_train.bincount().tolist()  # doctest: +SKIP
        (torch.Size([5000, 3, 32, 32]), [500, 500, 500, 500, 500, 500, 500, 500, 500, 500])
    """
    resolved = find_cifar10(path)
    if resolved.is_dir():
        return load_cifar10_torchvision(resolved)
    with np.load(resolved, allow_pickle=False) as archive:
        keys = set(archive.files)
    if {"train_jpeg", "train_offsets"} <= keys:
        return load_cifar10_packed(resolved, cache_dir=cache_dir, num_threads=num_threads)
    if {"x_train", "y_train", "x_test", "y_test"} <= keys:
        return load_cifar10_subset(resolved)
    raise ValueError(
        f"{str(resolved)!r} is neither the packed CIFAR-10 file (keys train_jpeg/train_offsets/...) nor the "
        f"decoded subset (keys x_train/y_train/...); it has keys {sorted(keys)}."
    )


def load_cifar10_subset(path: str | os.PathLike[str]) -> CIFAR10Arrays:
    """Load the decoded subset ``cifar10_subset_uint8.npz`` (5000 train / 1000 test, balanced).

    Args:
        path: the ``.npz`` file.

    Returns:
        The arrays.
    """
    with np.load(Path(path), allow_pickle=False) as archive:
        names = tuple(str(n) for n in archive["class_names"]) if "class_names" in archive.files else CIFAR10_CLASSES
        return CIFAR10Arrays(
            x_train=_nhwc_to_tensor(archive["x_train"]),
            y_train=torch.from_numpy(archive["y_train"].astype(np.int64)),
            x_test=_nhwc_to_tensor(archive["x_test"]),
            y_test=torch.from_numpy(archive["y_test"].astype(np.int64)),
            class_names=names,
            source=str(path),
        )


def load_cifar10_packed(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
    use_cache: bool = True,
) -> CIFAR10Arrays:
    """Load the packed JPEG file ``cifar10_jpeg_packed.npz``, decoding it once and caching the result.

    The decoded ``(N, 32, 32, 3)`` uint8 arrays are written as ``.npy`` files to ``cache_dir`` under a name that
    hashes the packed file's size and offsets, so a second load reads ~180 MB of arrays instead of decoding
    60000 JPEGs. A cache folder that cannot be written is skipped with a warning.

    Args:
        path: the ``.npz`` file.
        cache_dir: cache folder (default :func:`default_cache_dir`).
        num_threads: decoding threads (default: CPU count, at most 16).
        use_cache: read and write the cache.

    Returns:
        The arrays.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as archive:
        names = tuple(str(n) for n in archive["class_names"])
        labels = {split: archive[f"{split}_labels"].astype(np.int64) for split in ("train", "test")}
        offsets = {split: archive[f"{split}_offsets"] for split in ("train", "test")}
        digest = hashlib.sha1(str(path.stat().st_size).encode())
        for split in ("train", "test"):
            digest.update(offsets[split].tobytes())
        key = digest.hexdigest()[:16]
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        images: dict[str, np.ndarray] = {}
        for split in ("train", "test"):
            cached = cache / f"cifar10_packed_{key}_{split}_x.npy"
            if use_cache and cached.is_file():
                images[split] = np.load(cached)
                continue
            images[split] = decode_jpeg_packed(archive[f"{split}_jpeg"], offsets[split], num_threads=num_threads)
            if use_cache:
                _save_npy_atomic(cached, images[split])
    return CIFAR10Arrays(
        x_train=_nhwc_to_tensor(images["train"]),
        y_train=torch.from_numpy(labels["train"]),
        x_test=_nhwc_to_tensor(images["test"]),
        y_test=torch.from_numpy(labels["test"]),
        class_names=names,
        source=str(path),
    )


def decode_jpeg_packed(data: np.ndarray, offsets: np.ndarray, num_threads: int | None = None) -> np.ndarray:
    """Decode concatenated JPEG bytes (image ``i`` is ``data[offsets[i]:offsets[i + 1]]``) to RGB uint8.

    Uses ``torchvision.io.decode_jpeg`` in chunks on a thread pool (the decoder releases the GIL); falls back to
    Pillow if torchvision's decoder is unavailable. All images must have the same size.

    Args:
        data: 1-D uint8 array of JPEG bytes.
        offsets: int array of ``N + 1`` offsets.
        num_threads: threads (default: CPU count, at most 16).

    Returns:
        ``(N, H, W, 3)`` uint8 array.
    """
    count = len(offsets) - 1
    threads = max(1, min(16, num_threads or os.cpu_count() or 1))
    bounds = np.linspace(0, count, min(count, threads * 4) + 1, dtype=np.int64)
    chunks = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]
    buffer = torch.from_numpy(np.ascontiguousarray(data))

    try:
        from torchvision.io import ImageReadMode, decode_jpeg

        def decode(chunk: tuple[int, int]) -> np.ndarray:
            pieces = [buffer[offsets[i] : offsets[i + 1]] for i in range(*chunk)]
            decoded = decode_jpeg(pieces, mode=ImageReadMode.RGB)
            return torch.stack(decoded).permute(0, 2, 3, 1).numpy()

    except (ImportError, RuntimeError):  # pragma: no cover - torchvision without its image extension
        import io

        from PIL import Image

        def decode(chunk: tuple[int, int]) -> np.ndarray:
            return np.stack([
                np.asarray(Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))
                for i in range(*chunk)
            ])

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return np.concatenate(list(pool.map(decode, chunks)))


def load_cifar10_torchvision(root: str | os.PathLike[str]) -> CIFAR10Arrays:
    """Load torchvision's official CIFAR-10 files (``root/cifar-10-batches-py``) without downloading.

    Args:
        root: the folder that contains ``cifar-10-batches-py``.

    Returns:
        The arrays.

    Raises:
        FileNotFoundError: if the files are missing or fail torchvision's integrity check.
    """
    from torchvision.datasets import CIFAR10

    splits = {}
    for train in (True, False):
        try:
            dataset = CIFAR10(str(root), train=train, download=False)
        except RuntimeError as err:  # torchvision raises RuntimeError("Dataset not found or corrupted ...")
            raise FileNotFoundError(
                f"torchvision could not read CIFAR-10 under {str(root)!r} ({err}). Download it once with "
                "`torchvision.datasets.CIFAR10(root, download=True)` or pass the packed `.npz` file."
            ) from err
        splits[train] = (_nhwc_to_tensor(dataset.data), torch.as_tensor(dataset.targets, dtype=torch.int64))
        names = tuple(dataset.classes)
    return CIFAR10Arrays(
        x_train=splits[True][0], y_train=splits[True][1], x_test=splits[False][0], y_test=splits[False][1],
        class_names=names, source=f"torchvision:{root}",
    )


class CIFAR10DataModule(LightningDataModule):
    """CIFAR-10 held in memory on the training device, augmented batch-wise with tensor ops.

    The uint8 images are moved to the device once (150 MB for the full training set); each training batch is a
    gather, a random crop (zero padding ``pad``) and horizontal flip done in one indexing op, then normalisation
    to float. There are no worker processes and no per-image transforms, so the loader costs a few kernel
    launches per step on CPU and CUDA alike. Validation uses ``val_size`` held-out training images, or the test
    set when ``val_size=0``.

    Args:
        data: a path accepted by :func:`load_cifar10` (packed file, subset, folder) or preloaded
            :class:`CIFAR10Arrays`; ``None`` with ``cifar_root=None`` reads ``$TETRA_DATA_DIR/cifar10``.
        cifar_root: torchvision root with ``cifar-10-batches-py`` (alternative to ``data``).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``2 * batch_size``).
        augment: random crop + flip on training batches.
        pad: crop padding.
        flip: random horizontal flips.
        mean: per-channel normalisation mean (``[0, 1]`` units).
        std: per-channel normalisation std.
        channels_last: yield batches in ``torch.channels_last`` memory format; ``None`` (default): only when the
            batches live on a CUDA device (on the CPU, torch 2.14's channels_last backward of small strided 1x1
            convs, as in narrow or factorized ResNets, can crash).
        val_size: training images held out for validation (0: validate on the test set).
        drop_last: drop the last incomplete training batch.
        seed: seed of shuffling, augmentation and the held-out split.
        device: device for the data when no Trainer is attached (default: the Trainer's root device, else CPU).
        cache_dir: cache folder for decoded JPEGs.

    Raises:
        ValueError: for bad sizes or both ``data`` and ``cifar_root``.

    Example:
        >>> import torch
        >>> arrays = CIFAR10Arrays(  # random stand-in data, same shapes as CIFAR-10
        ...     torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (64,)),
        ...     torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (16,)))
        >>> dm = CIFAR10DataModule(arrays, batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, x.dtype, y.shape, len(dm.train_dataloader())
        (torch.Size([32, 3, 32, 32]), torch.float32, torch.Size([32]), 2)
    """

    num_classes = 10
    dims = (3, 32, 32)

    def __init__(
        self,
        data: str | os.PathLike[str] | CIFAR10Arrays | None = None,
        cifar_root: str | os.PathLike[str] | None = None,
        batch_size: int = 512,
        eval_batch_size: int | None = None,
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        channels_last: bool | None = None,
        val_size: int = 0,
        drop_last: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if data is not None and cifar_root is not None:
            raise ValueError("Pass either `data` or `cifar_root`, not both.")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}. Pass e.g. `batch_size=512`.")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size <= 0):
            raise ValueError(f"`eval_batch_size` must be a positive int or None, got {eval_batch_size!r}.")
        if not isinstance(pad, int) or pad < 0:
            raise ValueError(f"`pad` must be an int >= 0, got {pad!r}. Pass e.g. `pad=4`.")
        if not isinstance(val_size, int) or val_size < 0:
            raise ValueError(f"`val_size` must be an int >= 0, got {val_size!r}. Pass 0 to validate on the test set.")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"`mean` and `std` must have 3 values (RGB), got {list(mean)} and {list(std)}.")
        self.data = data
        self.cifar_root = cifar_root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.channels_last = channels_last
        self.val_size = val_size
        self.drop_last = drop_last
        self.seed = seed
        self.device = torch.device(device) if device is not None else None
        self.cache_dir = cache_dir
        self.arrays: CIFAR10Arrays | None = None
        self._splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._device_splits: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}
        self._train_loader: InMemoryBatchLoader | None = None

    # ------------------------------------------------------------------------------------------ Lightning hooks

    def setup(self, stage: str | None = None) -> None:
        """Load the arrays and split off the validation images (once; later calls do nothing)."""
        if self._splits:
            return
        if self.arrays is None:
            if isinstance(self.data, CIFAR10Arrays):
                self.arrays = self.data
            elif self.cifar_root is not None:
                self.arrays = load_cifar10_torchvision(self.cifar_root)
            else:
                self.arrays = load_cifar10(self.data, cache_dir=self.cache_dir)
        arrays = self.arrays
        if self.val_size >= arrays.x_train.shape[0]:
            raise ValueError(
                f"`val_size` must be smaller than the {arrays.x_train.shape[0]} training images, got {self.val_size}."
            )
        x_train, y_train = arrays.x_train, arrays.y_train
        if self.val_size:
            order = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(self.seed))
            held_out, kept = order[: self.val_size], order[self.val_size :]
            self._splits = {"train": (x_train[kept], y_train[kept]), "val": (x_train[held_out], y_train[held_out])}
        else:
            self._splits = {"train": (x_train, y_train), "val": (arrays.x_test, arrays.y_test)}
        self._splits["test"] = (arrays.x_test, arrays.y_test)
        self._device_splits = {}

    def train_dataloader(self) -> InMemoryBatchLoader:
        """Shuffled, augmented training batches, rebuilt only when the device changes."""
        x, y = self._on_device("train")
        loader = self._train_loader
        if loader is None or loader.x is not x:
            rank, world_size = self._rank_and_world()
            loader = InMemoryBatchLoader(
                x, y, self.batch_size, shuffle=True, drop_last=self.drop_last, transform=self._train_transform,
                seed=self.seed, rank=rank, world_size=world_size,
            )
            self._train_loader = loader
        # keep Lightning's epoch counter and ours together when resuming from a checkpoint
        if self._trainer_or_none() is not None:
            loader.epoch = self.trainer.current_epoch
        return loader

    def val_dataloader(self) -> InMemoryBatchLoader:
        """Validation batches (held-out training images, or the test set), normalised, in order."""
        return self._eval_loader("val")

    def test_dataloader(self) -> InMemoryBatchLoader:
        """Test-set batches, normalised, in order."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> InMemoryBatchLoader:
        """Test-set batches (as :meth:`test_dataloader`)."""
        return self._eval_loader("test")

    # ------------------------------------------------------------------------------------------ internals

    def _train_transform(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if self.augment:
            images = random_crop_flip(images, pad=self.pad, flip=self.flip, generator=generator)
        return self.normalize_batch(images, generator)

    def normalize_batch(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 batch -> normalised float batch (the evaluation transform; `generator` is unused)."""
        channels_last = self.channels_last if self.channels_last is not None else images.device.type == "cuda"
        return normalize_images(images, self.mean, self.std, channels_last=channels_last)

    def _eval_loader(self, split: str) -> InMemoryBatchLoader:
        x, y = self._on_device(split)
        rank, world_size = self._rank_and_world()
        return InMemoryBatchLoader(
            x, y, self.eval_batch_size, transform=self.normalize_batch, rank=rank, world_size=world_size
        )

    def _trainer_or_none(self) -> Any:
        return getattr(self, "trainer", None)

    def _target_device(self) -> torch.device:
        trainer = self._trainer_or_none()
        if trainer is not None:
            return trainer.strategy.root_device
        return self.device or torch.device("cpu")

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _on_device(self, split: str) -> tuple[Tensor, Tensor]:
        if not self._splits:
            self.setup()
        device = self._target_device()
        key = (split, str(device))
        if key not in self._device_splits:
            x, y = self._splits[split]
            # keep one copy per split and device; test and val share it when they are the same tensors
            for (other_split, other_device), cached in self._device_splits.items():
                if other_device == str(device) and self._splits[other_split][0] is x:
                    self._device_splits[key] = cached
                    break
            else:
                self._device_splits[key] = (x.to(device), y.to(device))
        return self._device_splits[key]


def _nhwc_to_tensor(images: np.ndarray) -> Tensor:
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).permute(0, 3, 1, 2)


def _save_npy_atomic(target: Path, array: np.ndarray) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".npy.tmp", delete=False) as handle:
            np.save(handle, array)
        os.chmod(handle.name, 0o644)  # NamedTemporaryFile creates 0600; the cache is plain data
        os.replace(handle.name, target)
    except OSError as err:
        warnings.warn(f"Could not cache decoded CIFAR-10 at {str(target)!r} ({err}); it will be decoded again.",
                      stacklevel=3)
