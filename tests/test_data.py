from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers.shared_data import CIFAR_DIR, CIFAR_PACKED, CIFAR_SUBSET
from tetra_lightning.data import (
    CIFAR10_CLASSES,
    CIFAR10Arrays,
    CIFAR10DataModule,
    DigitsDataModule,
    InMemoryBatchLoader,
    crop_flip,
    decode_jpeg_packed,
    find_cifar10,
    load_cifar10,
    load_cifar10_packed,
    normalize_images,
    random_crop_flip,
    sample_crop_flip,
)
from tetra_lightning.data import cifar10 as cifar10_module

SUBSET, PACKED = CIFAR_SUBSET, CIFAR_PACKED
needs_subset = pytest.mark.skipif(
    not SUBSET.is_file(), reason=f"shared CIFAR-10 subset not found at {SUBSET} (set TETRA_DATA_DIR)"
)
needs_packed = pytest.mark.skipif(
    not (SUBSET.is_file() and PACKED.is_file()),
    reason=f"shared CIFAR-10 packed file/subset not found in {CIFAR_DIR} (set TETRA_DATA_DIR)",
)


def _random_arrays(n_train: int = 40, n_test: int = 12, seed: int = 0) -> CIFAR10Arrays:
    g = torch.Generator().manual_seed(seed)
    return CIFAR10Arrays(
        x_train=torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
        y_train=torch.arange(n_train) % 10,
        x_test=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        y_test=torch.arange(n_test) % 10,
    )


# ------------------------------------------------------------------------------------------------ real CIFAR-10


@needs_subset
def test_subset_shapes_and_balanced_labels() -> None:
    data = load_cifar10(SUBSET)
    assert data.x_train.shape == (5000, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (1000, 3, 32, 32) and data.x_test.dtype == torch.uint8
    assert data.y_train.dtype == torch.int64
    assert data.y_train.bincount(minlength=10).tolist() == [500] * 10
    assert data.y_test.bincount(minlength=10).tolist() == [100] * 10
    assert data.class_names == CIFAR10_CLASSES
    # real photos, not noise: the mean pixel is near CIFAR-10's (0.47 * 255)
    assert 100 < data.x_train.float().mean().item() < 140


@needs_packed
def test_packed_decoding_matches_the_decoded_subset() -> None:
    with np.load(PACKED, allow_pickle=False) as archive:
        jpeg, offsets, labels = archive["test_jpeg"], archive["test_offsets"], archive["test_labels"]
        assert archive["train_offsets"].shape == (50001,)
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10
    # the subset's test rows are files 0000-0099 of each class; the packed rows are sorted the same way
    rows = np.concatenate([np.arange(c * 1000, c * 1000 + 100) for c in (0, 7)])
    decoded = np.concatenate([decode_jpeg_packed(jpeg, offsets[r : r + 101]) for r in (0, 7000)])
    subset = load_cifar10(SUBSET)
    expected = subset.x_test.permute(0, 2, 3, 1).numpy()[np.r_[0:100, 700:800]]
    assert decoded.shape == (200, 32, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)
    assert labels[rows].tolist() == [0] * 100 + [7] * 100


@needs_packed
def test_packed_loader_caches_decoded_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a small packed file in the same format, made of real JPEG bytes from the shared file
    with np.load(PACKED, allow_pickle=False) as archive:
        out = {"class_names": archive["class_names"]}
        for split, count in (("train", 30), ("test", 10)):
            offsets = archive[f"{split}_offsets"][: count + 1]
            out[f"{split}_jpeg"] = archive[f"{split}_jpeg"][: offsets[-1]]
            out[f"{split}_offsets"] = offsets
            out[f"{split}_labels"] = archive[f"{split}_labels"][:count]
    small = tmp_path / "small_packed.npz"
    np.savez(small, **out)
    cache = tmp_path / "cache"
    first = load_cifar10(small, cache_dir=cache)
    assert first.x_train.shape == (30, 3, 32, 32) and first.x_test.shape == (10, 3, 32, 32)
    assert len(list(cache.glob("cifar10_packed_*_x.npy"))) == 2

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second load must read the cache, not decode")

    monkeypatch.setattr(cifar10_module, "decode_jpeg_packed", no_decoding)
    second = load_cifar10_packed(small, cache_dir=cache)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)


@needs_packed
def test_find_cifar10_prefers_the_packed_file_in_a_folder() -> None:
    assert find_cifar10(CIFAR_DIR) == PACKED


def test_missing_data_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No CIFAR-10 data at"):
        find_cifar10(tmp_path / "nowhere")
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(ValueError, match="neither the packed CIFAR-10 file"):
        load_cifar10(bad)


# ------------------------------------------------------------------------------------------------ augmentation


def test_crop_flip_flips_exactly_where_asked() -> None:
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flips = torch.tensor([True, False, True, False, False, True])
    out = crop_flip(x, torch.zeros(6, 2, dtype=torch.int64), flips, pad=0)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for i, flipped in enumerate(flips.tolist()):
        assert torch.equal(out[i], x[i].flip(-1) if flipped else x[i])


def test_crop_offsets_shift_with_zero_padding() -> None:
    x = torch.randint(1, 256, (2, 3, 32, 32), dtype=torch.uint8)
    no_flip = torch.zeros(2, dtype=torch.bool)
    assert torch.equal(crop_flip(x, torch.full((2, 2), 4), no_flip, pad=4), x)  # centre crop = identity
    shifted = crop_flip(x, torch.zeros(2, 2, dtype=torch.int64), no_flip, pad=4)
    assert torch.equal(shifted[..., 4:, 4:], x[..., :-4, :-4])
    assert int(shifted[..., :4, :].max()) == 0 and int(shifted[..., :, :4].max()) == 0
    both = crop_flip(x, torch.tensor([[8, 8], [8, 8]]), torch.tensor([True, False]), pad=4)
    # crop first (content moves up-left), then mirror
    assert torch.equal(both[0, :, :-4, 4:], x[0, :, 4:, 4:].flip(-1))
    assert torch.equal(both[1, :, :-4, :-4], x[1, :, 4:, 4:])


def test_random_crop_flip_is_seeded_and_flips_only_when_asked() -> None:
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    assert not torch.equal(a, random_crop_flip(x, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(random_crop_flip(x, pad=0, flip=False), x)
    _, flips = sample_crop_flip(256, flip=False)
    assert not flips.any()
    _, flips = sample_crop_flip(10_000, generator=torch.Generator().manual_seed(0))
    assert 0.47 < flips.float().mean().item() < 0.53
    # with pad=0 every output image is the input or its mirror
    flipped = random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(5))
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 256


def test_normalize_images_values_and_layout() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize_images(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0), channels_last=True)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, -2.0, -0.5])
    assert out[1, :, 0, 0].tolist() == pytest.approx([1.0, 2.0, 0.5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_on_cuda_matches_cpu() -> None:
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    offsets, flips = sample_crop_flip(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(crop_flip(x.cuda(), offsets, flips).cpu(), crop_flip(x, offsets, flips))


# ------------------------------------------------------------------------------------------------ loaders


def test_in_memory_loader_epochs_and_shards() -> None:
    x = torch.arange(10)
    loader = InMemoryBatchLoader(x, x, batch_size=3, shuffle=True, seed=0)
    assert len(loader) == 4
    epoch0 = torch.cat([b[0] for b in loader])
    epoch1 = torch.cat([b[0] for b in loader])
    assert sorted(epoch0.tolist()) == list(range(10)) and not torch.equal(epoch0, epoch1)
    again = torch.cat([b[0] for b in InMemoryBatchLoader(x, x, batch_size=3, shuffle=True, seed=0)])
    assert torch.equal(epoch0, again)
    shards = [torch.cat([b[0] for b in InMemoryBatchLoader(x, x, 2, shuffle=True, rank=r, world_size=2)])
              for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5 and not set(shards[0].tolist()) & set(shards[1].tolist())
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        InMemoryBatchLoader(x, x, batch_size=0)
    with pytest.raises(ValueError, match="same number of samples"):
        InMemoryBatchLoader(x, x[:3], batch_size=2)


def test_cifar_datamodule_batches() -> None:
    arrays = _random_arrays()
    dm = CIFAR10DataModule(arrays, batch_size=16, eval_batch_size=5, seed=0)
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = list(train)
    assert len(train) == len(batches) == 2  # 40 // 16, last incomplete batch dropped
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)  # CPU default: NCHW
    forced = CIFAR10DataModule(arrays, batch_size=16, channels_last=True)
    forced.setup("fit")
    assert next(iter(forced.train_dataloader()))[0].is_contiguous(memory_format=torch.channels_last)
    val = list(dm.val_dataloader())
    assert [len(b[1]) for b in val] == [5, 5, 2]
    # evaluation batches are the test images, normalised, in order
    expected = normalize_images(arrays.x_test[:5], dm.mean, dm.std)
    assert torch.allclose(val[0][0], expected) and torch.equal(val[0][1], arrays.y_test[:5])
    # same seed, same augmented batches
    dm2 = CIFAR10DataModule(arrays, batch_size=16, seed=0)
    assert torch.equal(next(iter(dm2.train_dataloader()))[0], x)
    no_aug = CIFAR10DataModule(arrays, batch_size=40, augment=False, channels_last=False)
    xb, yb = next(iter(no_aug.train_dataloader()))
    order = [int(torch.nonzero((normalize_images(arrays.x_train, dm.mean, dm.std) == img).flatten(1).all(1))[0])
             for img in xb]
    assert sorted(order) == list(range(40)) and torch.equal(yb, arrays.y_train[order])


def test_cifar_datamodule_val_split_and_errors() -> None:
    dm = CIFAR10DataModule(_random_arrays(), batch_size=8, val_size=10)
    dm.setup("fit")
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 10
    assert len(dm.train_dataloader()) == 30 // 8
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        CIFAR10DataModule(_random_arrays(), batch_size=0)
    with pytest.raises(ValueError, match="`pad` must be an int >= 0"):
        CIFAR10DataModule(_random_arrays(), pad=-1)
    with pytest.raises(ValueError, match="either `data` or `cifar_root`"):
        CIFAR10DataModule("a.npz", cifar_root="b")
    with pytest.raises(ValueError, match="`val_size` must be smaller"):
        CIFAR10DataModule(_random_arrays(), val_size=40).setup("fit")


@needs_subset
def test_cifar_datamodule_on_the_real_subset() -> None:
    dm = CIFAR10DataModule(SUBSET, batch_size=500)
    dm.setup("fit")
    loader = dm.train_dataloader()
    labels = torch.cat([y for _, y in loader])
    assert len(loader) == 10 and labels.bincount(minlength=10).tolist() == [500] * 10
    x, _ = next(iter(dm.test_dataloader()))
    # normalised real images have roughly zero mean and unit spread
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2


# ------------------------------------------------------------------------------------------------ digits


def test_digits_datamodule_yields_batches() -> None:
    dm = DigitsDataModule(batch_size=100, val_fraction=0.2, seed=0)
    dm.setup("fit")
    assert dm.num_train + dm.num_val == 1797 and dm.num_val == 359
    train = list(dm.train_dataloader())
    assert len(train) == 15 and train[0][0].shape == (100, 1, 8, 8) and train[-1][0].shape == (38, 1, 8, 8)
    assert torch.cat([y for _, y in train]).bincount(minlength=10).min() > 100
    x_all = torch.cat([x for x, _ in train])
    assert abs(x_all.mean().item()) < 1e-4 and x_all.std().item() == pytest.approx(1.0, abs=1e-3)
    flat = DigitsDataModule(batch_size=10, flatten=True)
    assert next(iter(flat.val_dataloader()))[0].shape == (10, 64) and flat.dims == (64,)
    with pytest.raises(ValueError, match="`val_fraction` must be in"):
        DigitsDataModule(val_fraction=1.5)


class _LinearClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.correct = 0
        self.seen = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.correct += int((self.net(x).argmax(1) == y).sum())
        self.seen += len(y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_digits_train_with_a_real_trainer() -> None:
    torch.manual_seed(0)
    model = _LinearClassifier()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    accuracy = model.correct / model.seen
    assert model.seen == 3 * 359 and accuracy > 0.85
