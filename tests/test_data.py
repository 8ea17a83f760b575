"""load_dataset on real files written here: image folders, .npy, IDX, labels, named sets."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from discretae.core.errors import DiscretaeError
from discretae.data import readers
from discretae.data.datasets import load_dataset


def gray(value: int, size=(6, 5)) -> Image.Image:
    """An L image of one value; size is Pillow's (W, H)."""
    return Image.new("L", size, value)


def write_idx(path, arr: np.ndarray, gz: bool = False, code: int = 0x08) -> None:
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(">u1").tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)


def load(spec, **kw):
    """load_dataset with warnings collected into a list instead of emitted."""
    seen: list[str] = []
    ds = load_dataset(spec, warn=seen.append, **kw)
    return ds, seen


# ---------------------------------------------------------------- folders
def test_subfolders_give_sorted_labels(tmp_path):
    for cls, value in [("zebra", 200), ("ant", 50)]:
        (tmp_path / cls / "deep").mkdir(parents=True)
        gray(value).save(tmp_path / cls / "a.png")
        gray(value).save(tmp_path / cls / "deep" / "b.png")
    ds, seen = load(tmp_path)
    assert seen == []
    assert ds.label_names == ["ant", "zebra"]
    assert ds.names == ["ant/a.png", "ant/deep/b.png", "zebra/a.png", "zebra/deep/b.png"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.shape == (1, 5, 6) and len(ds) == 4
    x, y = ds[2]
    assert y == 1 and x.dtype == torch.float32
    assert torch.allclose(x, torch.full((1, 5, 6), 200 / 255))


def test_root_images_beside_subfolders_are_unlabeled(tmp_path):
    (tmp_path / "a").mkdir()
    gray(1).save(tmp_path / "a" / "x.png")
    gray(2).save(tmp_path / "loose.png")
    ds, seen = load(tmp_path)
    assert ds.labels.tolist() == [0, -1] and ds.label_names == ["a"]
    assert len(seen) == 1 and "label -1" in seen[0]


def test_flat_folder_has_no_labels(tmp_path):
    gray(10).save(tmp_path / "a.png")
    ds, _ = load(tmp_path)
    assert ds.labels is None and ds[0][1] == -1


def test_mixed_sizes_resize_to_most_common_or_given(tmp_path):
    for i in range(3):
        gray(100, (12, 10)).save(tmp_path / f"s{i}.png")
    gray(100, (30, 30)).save(tmp_path / "z.png")
    ds, _ = load(tmp_path)
    assert ds.shape == (1, 10, 12)
    arr = ds.to_array()
    assert arr.shape == (4, 1, 10, 12)
    assert np.allclose(arr, 100 / 255, atol=1e-5)  # a flat image stays flat when resized
    ds2, _ = load(tmp_path, image_size=(7, 9), channels=3)
    assert ds2.to_array().shape == (4, 3, 7, 9)


def test_modes_are_converted(tmp_path):
    size = (4, 3)
    Image.new("RGB", size, (255, 0, 0)).save(tmp_path / "rgb.png")
    Image.new("RGBA", size, (0, 255, 0, 10)).save(tmp_path / "rgba.png")
    pal = Image.new("P", size, 0)
    pal.putpalette([0, 0, 255] + [0] * 765)
    pal.save(tmp_path / "p.png")
    gray(128, size).save(tmp_path / "l.png")
    Image.fromarray(np.full((3, 4), 65535, np.uint16)).save(tmp_path / "i16.png")
    ds, _ = load(tmp_path)
    assert ds.shape == (3, 3, 4)  # any color image makes the folder RGB
    got = {n: ds[i][0][:, 0, 0].tolist() for i, n in enumerate(ds.names)}
    assert got["rgb.png"] == [1.0, 0.0, 0.0]
    assert got["rgba.png"] == [0.0, 1.0, 0.0]  # alpha dropped
    assert got["p.png"] == [0.0, 0.0, 1.0]
    assert np.allclose(got["l.png"], 128 / 255)
    assert got["i16.png"] == [1.0, 1.0, 1.0]
    gray_ds, _ = load(tmp_path, channels=1)
    red = gray_ds[gray_ds.names.index("rgb.png")][0]
    assert abs(float(red[0, 0, 0]) - 0.299) < 0.01  # luma of pure red


def test_gray_only_folder_is_one_channel_and_16_bit_scales(tmp_path):
    gray(255).save(tmp_path / "a.png")
    Image.fromarray(np.full((5, 6), 32768, np.uint16)).save(tmp_path / "b.png")
    ds, _ = load(tmp_path)
    assert ds.shape == (1, 5, 6)
    assert abs(float(ds[1][0].mean()) - 32768 / 65535) < 1e-6


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(a).save(tmp_path / "r.jpg", exif=exif, quality=95)
    ds, _ = load(tmp_path)
    assert ds.shape == (3, 80, 40)  # portrait after rotation
    x = ds[0][0]
    assert float(x[:, :35].mean()) > 0.95 and float(x[:, 45:].mean()) < 0.05  # stored left -> top


def test_gif_first_frame_and_other_formats(tmp_path):
    frames = [gray(255, (8, 8)).convert("P"), gray(0, (8, 8)).convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    gray(60, (8, 8)).save(tmp_path / "b.bmp")
    gray(60, (8, 8)).save(tmp_path / "t.tif")
    gray(60, (8, 8)).save(tmp_path / "w.webp", lossless=True)
    ds, _ = load(tmp_path, channels=1)
    assert ds.names == ["anim.gif", "b.bmp", "t.tif", "w.webp"]
    arr = ds.to_array()
    assert np.allclose(arr[0], 1.0) and np.allclose(arr[1:], 60 / 255)


def bad_folder(tmp_path):
    for i in range(3):
        gray(40 * i, (16, 16)).save(tmp_path / f"good{i}.png")
    (tmp_path / "text.png").write_text("not an image at all")
    whole = (tmp_path / "good0.png").read_bytes()
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])  # truncated pixel data
    (tmp_path / "zero.png").write_bytes(b"")
    return whole


def test_bad_files_are_skipped_with_one_warning(tmp_path):
    bad_folder(tmp_path)
    ds, seen = load(tmp_path)
    assert ds.names == ["good0.png", "good1.png", "good2.png"]
    assert sorted(ds.skipped) == ["big.png", "text.png", "zero.png"]
    assert len(seen) == 1 and "skipped 3 unreadable" in seen[0]
    for name in ("text.png", "zero.png", "big.png"):
        assert name in seen[0]
    assert ds.to_array().shape == (3, 1, 16, 16)


def test_a_link_to_nowhere_is_unreadable_not_corrupt(tmp_path):
    gray(40, (16, 16)).save(tmp_path / "good.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "moved-away.png")
    ds, seen = load(tmp_path)
    assert ds.names == ["good.png"] and ds.skipped == ["gone.png"]
    assert "gone.png (cannot read: No such file or directory)" in seen[0]
    # the reading path (files not probed first) words it the same way
    with pytest.raises(OSError) as e:
        readers.read_image(tmp_path / "gone.png", (16, 16), 1)
    assert readers.bad_file_reason(e.value) == "cannot read: No such file or directory"
    sub = tmp_path / "sub"
    sub.mkdir()
    bad_folder(sub)
    with pytest.raises(OSError) as e:
        readers.read_image(sub / "big.png", (16, 16), 1)
    assert readers.bad_file_reason(e.value).startswith("truncated or corrupt")


def test_strict_raises_naming_the_file(tmp_path):
    bad_folder(tmp_path)
    with pytest.raises(DiscretaeError, match="big.png"):
        load_dataset(tmp_path, strict=True)


def test_streaming_skips_files_that_fail_late(tmp_path, monkeypatch):
    bad_folder(tmp_path)
    monkeypatch.setattr(readers, "FULL_CHECK_BYTES", 0)  # header checks only, as for big folders
    ds, seen = load(tmp_path)
    assert "big.png" in ds.names and len(seen) == 1  # the truncated file passes the header check
    xs = [x for x, _ in ds.batches(batch_size=2, num_workers=2)]
    assert sum(len(x) for x in xs) == 3
    assert len(seen) == 2 and "big.png" in seen[1] and "skipped 1" in seen[1]
    assert ds.names == ["good0.png", "good1.png", "good2.png"] and "big.png" in ds.skipped


def test_strict_streaming_raises_on_a_late_failure(tmp_path, monkeypatch):
    bad_folder(tmp_path)
    (tmp_path / "text.png").unlink()
    (tmp_path / "zero.png").unlink()
    monkeypatch.setattr(readers, "FULL_CHECK_BYTES", 0)
    ds = load_dataset(tmp_path, strict=True)  # the header of big.png is fine
    with pytest.raises(DiscretaeError, match="big.png"):
        list(ds.batches(num_workers=0))


def test_batches_with_workers_match_to_array(tmp_path):
    rng = np.random.default_rng(1)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(7):
            img = rng.integers(0, 255, (9, 11, 3), np.uint8)
            Image.fromarray(img).save(tmp_path / cls / f"{i}.png")
    ds, _ = load(tmp_path)
    full = ds.to_array()
    parts = list(ds.batches(batch_size=4, num_workers=2))
    assert [len(x) for x, _ in parts] == [4, 4, 4, 2]
    assert np.array_equal(torch.cat([x for x, _ in parts]).numpy(), full)
    assert torch.cat([y for _, y in parts]).tolist() == ds.labels.tolist()
    assert np.array_equal(full[3], ds[3][0].numpy())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is empty"),
        (
            lambda p: (p / "t").mkdir() or (p / "t" / "a.txt").write_text("x") and p / "t",
            "no images",
        ),
    ],
)
def test_missing_empty_and_imageless_folders(tmp_path, make, message):
    with pytest.raises(DiscretaeError, match=message):
        load_dataset(make(tmp_path))


def test_unknown_name():
    with pytest.raises(DiscretaeError, match="not a file, a folder or a dataset name"):
        load_dataset("cifar-100")


# ---------------------------------------------------------------- .npy
@pytest.mark.parametrize(
    "arr, shape",
    [
        (np.full((2, 4, 5), 255, np.uint8), (1, 4, 5)),
        (np.full((2, 4, 5, 3), 255, np.uint8), (3, 4, 5)),
        (np.ones((2, 3, 4, 5), np.float32), (3, 4, 5)),
        (np.full((2, 1, 4, 5), 255.0, np.float64), (1, 4, 5)),
        (np.full((2, 4, 5, 4), 255, np.uint8), (4, 4, 5)),
        (np.ones((2, 4, 5), bool), (1, 4, 5)),
        (np.full((2, 4, 5), 65535, np.uint16), (1, 4, 5)),
        (np.full((2, 4, 5), 255, np.int32), (1, 4, 5)),
        (np.ones((2, 7), np.float32), (7,)),
    ],
)
def test_npy_layouts_and_dtypes(tmp_path, arr, shape):
    np.save(tmp_path / "x.npy", arr)
    ds, _ = load(tmp_path / "x.npy")
    assert ds.shape == shape and ds.flat == (len(shape) == 1)
    out = ds.to_array()
    assert out.shape == (2, *shape) and out.dtype == np.float32
    assert np.allclose(out, 1.0)


def test_npy_values_keep_their_layout(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (3, 4, 5, 3), np.uint8)
    np.save(tmp_path / "x.npy", nhwc)
    ds, _ = load(tmp_path / "x.npy")
    assert np.allclose(ds.to_array(), nhwc.transpose(0, 3, 1, 2) / 255.0)
    gray_ds, _ = load(tmp_path / "x.npy", channels=1, image_size=(8, 10))
    assert gray_ds.to_array().shape == (3, 1, 8, 10)


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.zeros((2, 3, 4, 5, 6), np.uint8), r"shape \(2, 3, 4, 5, 6\)"),
        (np.zeros(5, np.uint8), r"shape \(5,\)"),
        (np.zeros((2, 5, 6, 7), np.uint8), "no channel axis"),
        (np.zeros((2, 4, 4), np.complex64), "dtype complex64"),
        (np.full((2, 4, 4), -1.0), r"values in \[-1, -1\]"),
        (np.full((2, 4, 4), 300.0), r"values in \[300, 300\]"),
        (np.full((2, 4, 4), np.nan), "NaN"),
        (np.zeros((0, 4, 4), np.uint8), "holds no data"),
    ],
)
def test_npy_bad_shape_dtype_values(tmp_path, arr, message):
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(DiscretaeError, match=message):
        load_dataset(tmp_path / "x.npy")


def test_npy_object_array_is_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[1], "a"], dtype=object), allow_pickle=True)
    with pytest.raises(DiscretaeError, match="dtype object"):
        load_dataset(tmp_path / "x.npy")


# ---------------------------------------------------------------- labels
def test_labels_npy_for_arrays(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((100, 4, 4), np.uint8))
    np.save(tmp_path / "y.npy", np.arange(100) % 3)
    ds, _ = load(tmp_path / "x.npy", labels=tmp_path / "y.npy")
    assert ds.labels.tolist() == (np.arange(100) % 3).tolist()
    ys = [y for _, y in ds.batches(30, shuffle=True, seed=3)]
    assert [len(y) for y in ys] == [30, 30, 30, 10]
    assert sorted(torch.cat(ys).tolist()) == sorted((np.arange(100) % 3).tolist())
    np.save(tmp_path / "short.npy", np.arange(99))
    with pytest.raises(DiscretaeError, match="has 99 rows but the data has 100 images"):
        load_dataset(tmp_path / "x.npy", labels=tmp_path / "short.npy")
    (tmp_path / "l.csv").write_text("a.png,1\n")
    with pytest.raises(DiscretaeError, match="needs a folder"):
        load_dataset(tmp_path / "x.npy", labels=tmp_path / "l.csv")


def test_labels_csv_for_folders(tmp_path):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    gray(1).save(tmp_path / "img" / "sub" / "a.png")
    gray(2).save(tmp_path / "img" / "b.png")
    gray(3).save(tmp_path / "img" / "c.png")
    (tmp_path / "l.csv").write_text("filename,label\nsub/a.png,dog\nb.png,cat\nnothere.png,cat\n")
    ds, seen = load(tmp_path / "img", labels=tmp_path / "l.csv")
    assert ds.names == ["b.png", "c.png", "sub/a.png"]
    assert ds.label_names == ["cat", "dog"] and ds.labels.tolist() == [0, -1, 1]
    assert len(seen) == 1 and "1 image(s) have no row" in seen[0] and "1 row(s)" in seen[0]
    (tmp_path / "n.csv").write_text("a.png,7\nb.png,3\nc.png,3\n")  # unique basename matches
    ds, _ = load(tmp_path / "img", labels=tmp_path / "n.csv")
    assert ds.labels.tolist() == [3, 3, 7] and ds.label_names is None
    (tmp_path / "none.csv").write_text("x.png,1\ny.png,2\n")
    with pytest.raises(DiscretaeError, match="none of its"):
        load_dataset(tmp_path / "img", labels=tmp_path / "none.csv")


def test_labels_npy_for_a_folder_count_bad_files_too(tmp_path):
    bad_folder(tmp_path)  # six image files, three unreadable: big, good0-2, text, zero
    np.save(tmp_path.parent / "y.npy", np.arange(6))
    ds, _ = load(tmp_path, labels=tmp_path.parent / "y.npy")
    assert ds.names == ["good0.png", "good1.png", "good2.png"] and ds.labels.tolist() == [1, 2, 3]
    np.save(tmp_path.parent / "y3.npy", np.arange(3))
    with pytest.raises(DiscretaeError, match="has 3 rows but the data has 6 images"):
        load_dataset(tmp_path, labels=tmp_path.parent / "y3.npy", warn=lambda m: None)


def test_bad_arguments():
    with pytest.raises(DiscretaeError, match="image_size"):
        load_dataset("digits", image_size=(0, 3))
    with pytest.raises(DiscretaeError, match="channels=2"):
        load_dataset("digits", channels=2)
    with pytest.raises(DiscretaeError, match="batch_size"):
        next(load_dataset("digits").batches(0))
    with pytest.raises(DiscretaeError, match="labels file"):
        load_dataset("digits", labels="nope.npy")


# ---------------------------------------------------------------- IDX
def mnist_like(folder, prefix, n, gz, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 5, 4), np.uint8)
    lab = rng.integers(0, 10, n).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", imgs, gz)
    if labels:
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", lab, gz)
    return imgs, lab


@pytest.mark.parametrize("gz", [False, True])
def test_idx_file_with_labels_beside(tmp_path, gz):
    imgs, lab = mnist_like(tmp_path, "train", 6, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    ds, _ = load(tmp_path / name)
    assert ds.shape == (1, 5, 4) and ds.labels.tolist() == lab.tolist()
    assert np.allclose(ds.to_array()[:, 0], imgs / 255.0)


def test_idx_file_without_labels(tmp_path):
    mnist_like(tmp_path, "t10k", 3, gz=True, labels=False)
    ds, _ = load(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert ds.labels is None and len(ds) == 3


def test_idx_folder_and_splits(tmp_path):
    train, _ = mnist_like(tmp_path, "train", 6, gz=True, seed=1)
    test, _ = mnist_like(tmp_path, "t10k", 3, gz=False, seed=2)
    ds, _ = load(tmp_path)
    assert len(ds) == 9
    assert np.allclose(ds.to_array()[:6, 0], train / 255.0)  # train comes first
    assert len(load(f"{tmp_path}:train")[0]) == 6
    assert np.allclose(load(f"{tmp_path}:test")[0].to_array()[:, 0], test / 255.0)


def test_idx_truncated_and_bad_magic(tmp_path):
    mnist_like(tmp_path, "train", 6, gz=False, labels=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(DiscretaeError, match="truncated"):
        load_dataset(p)
    q = tmp_path / "gz-images-idx3-ubyte.gz"
    write_idx(q, np.zeros((4, 3, 3), np.uint8), gz=True)
    q.write_bytes(q.read_bytes()[:-10])  # cut inside the gzip stream
    with pytest.raises(DiscretaeError, match="cannot read as IDX"):
        load_dataset(q)
    r = tmp_path / "bad-images-idx3-ubyte"
    r.write_bytes(b"\x08\x03\x00\x00" + bytes(40))
    with pytest.raises(DiscretaeError, match="bad magic"):
        load_dataset(r)


def test_idx_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 3, 3), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DiscretaeError, match="has 4 images"):
        load_dataset(tmp_path / "train-images-idx3-ubyte")


# ---------------------------------------------------------------- named sets
def test_digits():
    ds = load_dataset("digits")
    arr = ds.to_array()
    assert arr.shape == (1797, 1, 8, 8) and arr.min() == 0.0 and arr.max() == 1.0
    assert ds.label_names == [str(i) for i in range(10)]
    assert np.bincount(ds.labels).tolist()[:2] == [178, 182]


def test_fashion_mnist_env_folder(tmp_path, monkeypatch):
    mnist_like(tmp_path, "train", 4, gz=True)
    mnist_like(tmp_path, "t10k", 2, gz=True)
    monkeypatch.setenv(readers.FASHION_MNIST_ENV, str(tmp_path))
    assert len(load_dataset("fashion-mnist")) == 6
    assert len(load_dataset("fashion-mnist:test")) == 2
    monkeypatch.setenv(readers.FASHION_MNIST_ENV, str(tmp_path / "nope"))
    with pytest.raises(DiscretaeError, match="is not a folder"):
        load_dataset("fashion-mnist")


def test_fashion_mnist_debian(monkeypatch):
    monkeypatch.delenv(readers.FASHION_MNIST_ENV, raising=False)
    try:
        readers.fashion_mnist_folder()
    except DiscretaeError:
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 70000 and ds.shape == (1, 28, 28) and len(ds.label_names) == 10
    assert np.bincount(ds.labels).tolist() == [7000] * 10
    assert len(load_dataset("fashion-mnist:train")) == 60000
    test = load_dataset("fashion-mnist:test")
    assert len(test) == 10000
    x, y = next(test.batches(10000))
    assert x.shape == (10000, 1, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) == 1.0
