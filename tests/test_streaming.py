"""Streaming encode: codes written through a memory map, shards and their merge, cluster
ids from codes, and files that only fail once the stream decodes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from discretae import DiscretaeError, DiscreteAutoencoder
from discretae.cli.app import app
from discretae.commands import encode, merge
from discretae.commands.shards import parse_shard, shard_range, shard_sidecar
from discretae.core.arrays import NpyRowWriter
from discretae.data import readers


def write_pngs(root: Path, n: int) -> np.ndarray:
    """n 12x12 gray PNGs with varied content; returns them as (n, 12, 12) uint8."""
    rng = np.random.default_rng(0)
    images = (rng.random((n, 12, 12)) * 80).astype(np.uint8)
    for i in range(n):
        images[i, : 1 + i % 12, :] += 150  # a bar whose height varies
    root.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(root / f"im{i:03d}.png")
    return images


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("stream") / "pngs"
    return root, write_pngs(root, 29)


@pytest.fixture(scope="module", params=["vq", "binary"])
def model(request, tmp_path_factory, folder) -> tuple[Path, DiscreteAutoencoder]:
    """vq: codes are clusters; binary: clusters by k-means on codes."""
    _, images = folder
    est = DiscreteAutoencoder(
        model=request.param, n_codes=6, n_bits=6, epochs=2, batch_size=8, width=8, device="cpu"
    )
    est.fit(images)
    path = tmp_path_factory.mktemp("model") / f"{request.param}.safetensors"
    est.save(path)
    return path, DiscreteAutoencoder.load(path, device="cpu")


def test_streamed_codes_and_clusters_match_the_estimator(tmp_path, folder, model):
    root, images = folder
    path, est = model
    out = tmp_path / "codes.npy"
    # batches of 4 with a decoding worker: the rows arrive in many small writes
    result = encode(str(root), model=path, out=out, batch_size=4, workers=1, device="cpu")
    assert result["n_images"] == 29 and result["shard"] is None
    assert np.array_equal(np.load(out), est.transform(images).astype(np.load(out).dtype))
    ids = tmp_path / "ids.npy"
    encode(str(root), model=path, out=ids, clusters=True, batch_size=5, device="cpu")
    assert np.array_equal(np.load(ids), est.predict(images))
    assert np.array_equal(est.cluster_ids(est.transform(images)), est.predict(images))


def test_shards_merge_to_the_full_encode(tmp_path, folder, model):
    root, _ = folder
    path, _ = model
    full, names = tmp_path / "full.npy", tmp_path / "names.txt"
    encode(str(root), model=path, out=full, with_names=names, device="cpu")
    shards = []
    for i in (2, 0, 1):  # any order
        out = tmp_path / f"part-{i}.npy"
        r = encode(str(root), model=path, out=out, shard=f"{i}/3", device="cpu")
        start, stop = shard_range(i, 3, 29)
        assert r["shard"] == {"index": i, "count": 3, "start": start, "stop": stop}
        side = json.loads(shard_sidecar(out).read_text())
        assert (side["start"], side["stop"], side["total"]) == (start, stop, 29)
        assert side["names"] == [f"im{j:03d}.png" for j in range(start, stop)]
        shards.append(out)
    merged, merged_names = tmp_path / "merged.npy", tmp_path / "merged.txt"
    r = merge(shards, out=merged, with_names=merged_names)
    assert r["n_images"] == 29
    a, b = np.load(full), np.load(merged)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    assert merged_names.read_text() == names.read_text()


def test_merge_refuses_gaps_overlaps_and_foreign_shards(tmp_path, folder, model):
    root, _ = folder
    path, _ = model
    part = {}
    for spec in ("0/2", "1/2", "0/3", "1/3", "2/3"):
        out = tmp_path / f"s{spec.replace('/', 'of')}.npy"
        encode(str(root), model=path, out=out, shard=spec, device="cpu")
        part[spec] = out
    # shards of different splits are fine when they tile the rows: 0/2 is rows 0-13
    with pytest.raises(DiscretaeError, match="rows 14-28 of 29 are missing"):
        merge([part["0/2"]], out=tmp_path / "m.npy")
    with pytest.raises(DiscretaeError, match="rows 9-18 of 29 are missing"):
        merge([part["0/3"], part["2/3"]], out=tmp_path / "m.npy")
    with pytest.raises(DiscretaeError, match="overlaps"):
        merge([part["0/2"], part["1/3"], part["1/2"]], out=tmp_path / "m.npy")
    with pytest.raises(DiscretaeError, match="overlaps"):
        merge([part["0/2"], part["1/2"], part["1/2"]], out=tmp_path / "m.npy")
    clusters = tmp_path / "c.npy"
    encode(str(root), model=path, out=clusters, shard="1/2", clusters=True, device="cpu")
    if np.load(clusters).shape != np.load(part["1/2"]).shape:  # binary codes (N, B)
        with pytest.raises(DiscretaeError, match="differ in"):
            merge([part["0/2"], clusters], out=tmp_path / "m.npy")
    with pytest.raises(DiscretaeError, match="does not exist"):
        merge([tmp_path / "nowhere.npy"], out=tmp_path / "m.npy")
    np.save(tmp_path / "plain.npy", np.zeros(3, np.uint8))
    with pytest.raises(DiscretaeError, match="has no sidecar"):
        merge([tmp_path / "plain.npy"], out=tmp_path / "m.npy")
    np.save(part["1/2"], np.load(part["1/2"])[:-1])  # a shard file that lost a row
    with pytest.raises(DiscretaeError, match="its sidecar says"):
        merge([part["0/2"], part["1/2"]], out=tmp_path / "m.npy")
    assert not (tmp_path / "m.npy").exists()


def test_merge_refuses_shards_of_another_model(tmp_path, folder):
    root, images = folder
    paths = []
    for seed in (0, 1):
        est = DiscreteAutoencoder(model="vq", n_codes=4, epochs=1, width=8, random_state=seed)
        paths.append(tmp_path / f"m{seed}.safetensors")
        est.fit(images).save(paths[-1])
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    encode(str(root), model=paths[0], out=a, shard="0/2", device="cpu")
    encode(str(root), model=paths[1], out=b, shard="1/2", device="cpu")
    with pytest.raises(DiscretaeError, match="differ in the model file"):
        merge([a, b], out=tmp_path / "m.npy")


def test_more_shards_than_images(tmp_path, folder, model):
    root, _ = folder
    path, _ = model
    small = tmp_path / "small"
    write_pngs(small, 3)
    outs = []
    for i in range(5):
        outs.append(tmp_path / f"p{i}.npy")
        encode(str(small), model=path, out=outs[-1], shard=(i, 5), device="cpu")
    assert [len(np.load(p)) for p in outs] == [0, 1, 0, 1, 1]
    full = tmp_path / "full.npy"
    encode(str(small), model=path, out=full, device="cpu")
    merge(outs, out=tmp_path / "m.npy")
    assert np.array_equal(np.load(tmp_path / "m.npy"), np.load(full))


def test_files_failing_in_the_stream_are_dropped_and_rows_line_up(tmp_path, folder, monkeypatch):
    root, images = folder
    data = tmp_path / "pngs"
    write_pngs(data, 29)
    raw = (data / "im007.png").read_bytes()
    (data / "im007.png").write_bytes(raw[: len(raw) // 2])  # header intact, pixels cut
    monkeypatch.setattr(readers, "FULL_CHECK_BYTES", 0)  # header-only scan, as in big folders
    est = DiscreteAutoencoder(model="vq", n_codes=4, epochs=1, width=8, device="cpu").fit(images)
    est.save(tmp_path / "m.safetensors")
    warnings = []
    out, names = tmp_path / "codes.npy", tmp_path / "names.txt"
    r = encode(
        str(data), model=tmp_path / "m.safetensors", out=out, with_names=names,
        batch_size=8, device="cpu", warn=warnings.append,
    )  # fmt: skip
    keep = [i for i in range(29) if i != 7]
    assert r["n_images"] == 28 and r["skipped"] == 1
    assert np.array_equal(np.load(out), est.transform(images[keep]).astype(np.uint8))
    assert names.read_text().split() == [f"im{i:03d}.png" for i in keep]
    assert any("im007.png" in w for w in warnings)


def test_row_writer_bounds_and_shrinks(tmp_path):
    path = tmp_path / "w.npy"
    w = NpyRowWriter(path, np.uint16, (10, 2, 3))
    rows = np.arange(60, dtype=np.uint16).reshape(10, 2, 3)
    w.write(rows[:4])
    w.write(rows[4:7])
    with pytest.raises(DiscretaeError, match="12 rows for a file of 10"):
        w.write(np.zeros((5, 2, 3), np.uint16))
    w.finish()
    got = np.load(path)
    assert got.dtype == np.uint16 and np.array_equal(got, rows[:7])
    NpyRowWriter(tmp_path / "e.npy", np.uint8, (0, 4)).finish()
    assert np.load(tmp_path / "e.npy").shape == (0, 4)


@pytest.mark.parametrize("bad", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shard_spec(bad):
    with pytest.raises(DiscretaeError, match="should be i/n"):
        parse_shard(bad)


def test_cli_shard_and_merge(tmp_path, folder, model):
    root, _ = folder
    path, _ = model
    runner = CliRunner()
    outs = [tmp_path / f"c{i}.npy" for i in range(2)]
    for i, out in enumerate(outs):
        r = runner.invoke(
            app, ["encode", str(root), "-m", str(path), "--shard", f"{i}/2", "-o", str(out), "-q"]
        )
        assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["merge", *map(str, outs), "--out", str(tmp_path / "m.npy"), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["n_images"] == 29
    r = runner.invoke(app, ["merge", str(outs[1]), "--out", str(tmp_path / "x.npy")])
    assert r.exit_code == 1 and r.stderr.startswith("error: rows 0-13 of 29 are missing")
    assert not (tmp_path / "x.npy").exists()
    r = runner.invoke(app, ["encode", str(root), "-m", str(path), "--shard", "2/2"])
    assert r.exit_code == 1 and "should be i/n" in r.stderr
