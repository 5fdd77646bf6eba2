"""The compact store: conversion, save/load, task subsets, batches, device expansion, info."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from mtlsweep.data.basset_hdf5 import SPLITS, write_basset
from mtlsweep.data.errors import DataError
from mtlsweep.data.info import describe, format_info
from mtlsweep.data.onehot import codes_to_onehot
from mtlsweep.data.store import (SplitArrays, Store, _expand, basset_to_store, batches, open_dataset,
                        to_device)

TASKS = ["K562", "GM12878", "HepG2", "A549"]
L = 16


def _splits(seed=0, sizes=(50, 13, 17), n_tracks=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(SPLITS, sizes):
        out[split] = SplitArrays(
            codes=rng.integers(0, 5, (n, L)).astype(np.uint8),
            labels=rng.integers(-1, 2, (n, len(TASKS))).astype(np.int8),
            tracks=rng.normal(size=(n, n_tracks, L)).astype(np.float16) if n_tracks else None,
            headers=[f"{split}_{i}" for i in range(n)] if split == "test" else None)
    return out


def _store(**kw):
    n_tracks = kw.pop("n_tracks", 0)
    names = [f"track{i}" for i in range(n_tracks)]
    return Store.from_arrays(TASKS, _splits(n_tracks=n_tracks, **kw), track_names=names)


def _assert_same(a: Store, b: Store):
    assert (a.task_names, a.track_names, a.seq_len, a.fingerprint) == \
        (b.task_names, b.track_names, b.seq_len, b.fingerprint)
    assert list(a.splits) == list(b.splits)
    for s in a.splits:
        x, y = a.splits[s], b.splits[s]
        np.testing.assert_array_equal(x.codes, y.codes)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert (x.tracks is None) == (y.tracks is None)
        if x.tracks is not None:
            np.testing.assert_array_equal(x.tracks, y.tracks)
        assert x.headers == y.headers


def _write_basset(path, splits, **kw):
    write_basset(path, TASKS, {s: (sp.codes, sp.labels) for s, sp in splits.items()},
                 test_headers=splits["test"].headers, **kw)


def test_save_load_round_trip_and_byte_identical(tmp_path):
    store = _store(n_tracks=2)
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    store.save(a)
    store.save(b)
    assert a.read_bytes() == b.read_bytes()
    loaded = Store.load(a)
    _assert_same(store, loaded)
    assert loaded.splits["train"].codes.dtype == np.uint8 and loaded.splits["train"].labels.dtype == np.int8
    assert loaded.splits["train"].tracks.dtype == np.float16
    loaded.save(c)
    assert c.read_bytes() == a.read_bytes()
    with h5py.File(a, "r") as f:
        assert f.attrs["format_version"] == 1 and len(f.attrs["fingerprint"]) == 64


def test_save_refuses_overwrite(tmp_path):
    path = tmp_path / "s.h5"
    _store().save(path)
    before = path.read_bytes()
    with pytest.raises(DataError, match="already exists"):
        _store(seed=1).save(path)
    assert path.read_bytes() == before
    _store(seed=1).save(path, overwrite=True)
    assert path.read_bytes() != before
    assert os.listdir(tmp_path) == ["s.h5"]
    with pytest.raises(DataError, match="does not exist"):
        _store().save(tmp_path / "no_such_dir" / "s.h5")


def test_fingerprint_follows_content():
    assert _store().fingerprint == _store().fingerprint
    assert _store().fingerprint != _store(seed=1).fingerprint
    assert len(_store().fingerprint) == 64
    for field in ("codes", "labels", "tracks"):
        splits = _splits(n_tracks=1)
        arr = getattr(splits["valid"], field)
        arr[0, 0] = arr[0, 0] + 1 if field != "labels" else -arr[0, 0] - (arr[0, 0] == 0)
        assert Store.from_arrays(TASKS, splits, track_names=["t"]).fingerprint != \
            Store.from_arrays(TASKS, _splits(n_tracks=1), track_names=["t"]).fingerprint


def test_basset_to_store_streams_to_the_same_bytes(tmp_path):
    splits = _splits()
    src = tmp_path / "basset.h5"
    _write_basset(src, splits)
    info_small = basset_to_store(src, tmp_path / "small.h5", chunk=3)
    info_whole = basset_to_store(src, tmp_path / "whole.h5")
    assert (tmp_path / "small.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()
    assert info_small.fingerprint == info_whole.fingerprint
    assert info_small.sizes == {"train": 50, "valid": 13, "test": 17} and info_small.n_tasks == 4
    in_memory = open_dataset(src)
    _assert_same(in_memory, Store.load(tmp_path / "small.h5"))
    _assert_same(in_memory, Store.from_arrays(TASKS, splits))
    in_memory.save(tmp_path / "mem.h5")
    assert (tmp_path / "mem.h5").read_bytes() == (tmp_path / "whole.h5").read_bytes()
    with pytest.raises(DataError, match="already exists"):
        basset_to_store(src, tmp_path / "small.h5")


def test_every_layout_gives_the_same_store(tmp_path):
    splits = _splits()
    prints = set()
    for layout in ("N41L", "N4L", "NL4"):
        for dtype in (np.float16, np.bool_):
            src = tmp_path / f"{layout}_{np.dtype(dtype).name}.h5"
            _write_basset(src, splits, layout=layout, dtype=dtype)
            prints.add(basset_to_store(src, tmp_path / f"store_{src.name}", chunk=7).fingerprint)
    assert len(prints) == 1


def test_tracks_go_from_basset_to_batches(tmp_path):
    splits = _splits(n_tracks=1)
    src = tmp_path / "b.h5"
    write_basset(src, TASKS, {s: (sp.codes, sp.labels) for s, sp in splits.items()},
                 tracks={s: sp.tracks for s, sp in splits.items()}, track_names=["DNase"])
    basset_to_store(src, tmp_path / "s.h5", chunk=5)
    store = Store.load(tmp_path / "s.h5")
    assert store.track_names == ["DNase"]
    x, _, _ = to_device(store.splits["valid"], np.array([3, 1]), "cpu")
    assert x.shape == (2, 5, L)
    np.testing.assert_array_equal(x[:, 4].numpy(), splits["valid"].tracks[[3, 1], 0].astype(np.float32))


def test_store_load_refuses_basset_and_foreign_files(tmp_path):
    src = tmp_path / "basset.h5"
    _write_basset(src, _splits())
    with pytest.raises(DataError, match="convert it first with `mtlsweep data convert"):
        Store.load(src)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match="format"):
        Store.load(other)
    with pytest.raises(DataError, match="neither an mtlsweep store"):
        open_dataset(other)
    text = tmp_path / "peaks.bed"
    text.write_text("chr1\t1\t2\n")
    with pytest.raises(DataError, match="not a readable HDF5"):
        open_dataset(text)


def test_unknown_labels_survive_basset_to_batches(tmp_path):
    rng = np.random.default_rng(4)
    labels = {s: rng.integers(-1, 2, (n, 4)).astype(np.int8) for s, n in zip(SPLITS, (30, 6, 7))}
    codes = {s: rng.integers(0, 5, (len(lab), L)).astype(np.uint8) for s, lab in labels.items()}
    onehot = {s: np.eye(5, 4, dtype=np.float16)[c].transpose(0, 2, 1)[:, :, None, :] for s, c in codes.items()}
    for x in onehot.values():
        x[x.sum(1, keepdims=True).repeat(4, 1) == 0] = 0.25
    variants = {
        "int8": (lambda lab: lab, None),
        "nan": (lambda lab: np.where(lab < 0, np.nan, lab).astype(np.float32), None),
        "uab": (lambda lab: np.array([b"A", b"U", b"B"])[lab + 1], None),
        "custom": (lambda lab: np.array([b"amb", b"no", b"yes"])[lab + 1], {"no": 0, "yes": 1, "amb": -1}),
    }
    for name, (encode, label_map) in variants.items():
        src = tmp_path / f"{name}.h5"
        with h5py.File(src, "w") as f:
            f["target_labels"] = np.array([t.encode() for t in TASKS])
            for s in SPLITS:
                f[f"{s}_in"] = onehot[s]
                f[f"{s}_out"] = encode(labels[s])
        dst = tmp_path / f"{name}_store.h5"
        basset_to_store(src, dst, chunk=4, label_map=label_map)
        store = Store.load(dst)
        for s in SPLITS:
            np.testing.assert_array_equal(store.splits[s].codes, codes[s])
            np.testing.assert_array_equal(store.splits[s].labels, labels[s])
        sp = store.splits["train"]
        idx = np.concatenate(list(batches(sp, 8, shuffle=True, rng=np.random.default_rng(0))))
        _, y, mask = to_device(sp, idx, "cpu")
        np.testing.assert_array_equal(mask.numpy(), labels["train"][idx] >= 0)
        np.testing.assert_array_equal(y.numpy(), np.maximum(labels["train"][idx], 0))


def test_select_tasks():
    store = _store()
    sub = store.select_tasks(["HepG2", 0])
    assert sub.task_names == ["HepG2", "K562"] and sub.n_tasks == 2
    np.testing.assert_array_equal(sub.splits["train"].labels, store.splits["train"].labels[:, [2, 0]])
    assert sub.splits["train"].codes is store.splits["train"].codes
    assert sub.fingerprint == store.fingerprint
    assert store.select_tasks(None) is store
    assert store.select_tasks("A549").task_names == ["A549"]
    for bad, match in [(["Liver"], "unknown task 'Liver'"), ([4], "out of range; allowed: 0..3"),
                       ([-1], "out of range"), (["K562", 0], "twice"), ([], "empty"),
                       ([True], "task True")]:
        with pytest.raises(DataError, match=match):
            store.select_tasks(bad)


def test_prevalence_and_unknown_fraction():
    labels = np.array([[1, -1, 0], [0, -1, 1], [1, -1, 1], [-1, -1, 1]], dtype=np.int8)
    store = Store.from_arrays(["a", "b", "c"], {"train": SplitArrays(np.zeros((4, 3), np.uint8), labels)})
    np.testing.assert_allclose(store.prevalence("train"), [2 / 3, np.nan, 3 / 4])
    np.testing.assert_allclose(store.unknown_fraction("train"), [0.25, 1.0, 0.0])
    assert store.n("train") == 4
    with pytest.raises(DataError, match="no split 'valid'"):
        store.n("valid")


def test_batches_are_reproducible_and_cover_the_epoch():
    sp = _store().splits["train"]  # 50 rows
    run = lambda seed: [b.tolist() for b in batches(sp, 16, shuffle=True, rng=np.random.default_rng(seed))]
    assert run(7) == run(7)
    assert run(7) != run(8)
    got = run(7)
    assert [len(b) for b in got] == [16, 16, 16, 2]
    assert sorted(sum(got, [])) == list(range(50))
    kept = list(batches(sp, 16, shuffle=True, rng=np.random.default_rng(7), drop_last=True))
    assert [len(b) for b in kept] == [16, 16, 16]
    plain = list(batches(sp, 20, shuffle=False))
    assert np.concatenate(plain).tolist() == list(range(50))
    with pytest.raises(DataError, match="batch_size"):
        batches(sp, 0, shuffle=False)


def test_to_device_expands_one_hot():
    store = _store(n_tracks=2)
    sp = store.splits["valid"]
    idx = np.array([5, 0, 12])
    x, y, mask = to_device(sp, idx, torch.device("cpu"))
    assert x.shape == (3, 6, L) and x.dtype == torch.float32
    assert y.shape == mask.shape == (3, 4) and mask.dtype == torch.bool
    codes = sp.codes[idx]
    onehot = x[:, :4].numpy()
    assert (codes == 4).any()  # N bases are exercised
    for b in range(3):
        for p in range(L):
            c = codes[b, p]
            want = np.full(4, 0.25) if c == 4 else np.eye(4)[c]
            np.testing.assert_array_equal(onehot[b, :, p], want)
    np.testing.assert_array_equal(x[:, 4:].numpy(), sp.tracks[idx].astype(np.float32))
    np.testing.assert_array_equal(mask.numpy(), sp.labels[idx] >= 0)
    np.testing.assert_array_equal(y.numpy(), np.maximum(sp.labels[idx], 0))
    for dtype in (torch.float16, torch.bfloat16):  # numpy path and torch path
        xd, yd, md = to_device(sp, idx, "cpu", dtype=dtype)
        assert xd.shape == (3, 6, L) and xd.dtype == yd.dtype == dtype and xd.is_contiguous()
        assert torch.equal(xd[:, :4], codes_to_onehot(torch.from_numpy(codes), dtype))
        assert torch.equal(xd[:, 4:], torch.from_numpy(sp.tracks[idx]).to(dtype))
        assert torch.equal(md, mask)


def test_device_expansion_matches_codes_to_onehot():
    codes = torch.from_numpy(np.random.default_rng(2).integers(0, 5, (64, 300)).astype(np.uint8))
    assert torch.equal(_expand(codes, torch.float32), codes_to_onehot(codes, torch.float32))
    big = Store.from_arrays(["t"], {"train": SplitArrays(codes.numpy(), np.zeros((64, 1), np.int8))})
    x, _, _ = to_device(big.splits["train"], np.arange(64)[::-1].copy(), "cpu")
    assert x.is_contiguous() and torch.equal(x, codes_to_onehot(codes.flip(0)))


def test_store_pickles():
    store = _store(n_tracks=1)
    _assert_same(pickle.loads(pickle.dumps(store, protocol=5)), store)


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s["train"].codes.__setitem__((0, 0), 7), "code 7"),
    (lambda s: s["valid"].labels.__setitem__((1, 1), 3), "label 3"),
    (lambda s: s.__setitem__("valid", SplitArrays(s["valid"].codes[:, :3], s["valid"].labels)), "length"),
    (lambda s: s.__setitem__("test", SplitArrays(s["test"].codes, s["test"].labels, None, ["x"])), "headers"),
    (lambda s: s.__setitem__("train", SplitArrays(s["train"].codes[:0], s["train"].labels[:0])), "empty"),
    (lambda s: s.__setitem__("extra", s["train"]), "split 'extra'"),
])
def test_from_arrays_rejects_bad_arrays(mutate, match):
    splits = _splits()
    mutate(splits)
    with pytest.raises(DataError, match=match):
        Store.from_arrays(TASKS, splits)


def test_describe_basset_and_store(tmp_path):
    splits = _splits()
    src = tmp_path / "b.h5"
    _write_basset(src, splits, layout="NL4", dtype=np.uint8)
    basset_to_store(src, tmp_path / "s.h5")
    b, s = describe(src), describe(tmp_path / "s.h5")
    assert (b["kind"], b["layout"], b["input_dtype"]) == ("basset", "NL4", "uint8")
    assert (s["kind"], s["layout"], s["format_version"]) == ("store", "store", 1)
    store = Store.load(tmp_path / "s.h5")
    for info in (b, s):
        assert (info["seq_len"], info["n_tasks"], info["task_names"]) == (L, 4, TASKS)
        for split in SPLITS:
            assert info["splits"][split]["n"] == store.n(split)
            np.testing.assert_allclose(info["splits"][split]["prevalence"], store.prevalence(split))
            np.testing.assert_allclose(info["splits"][split]["unknown_fraction"],
                                       store.unknown_fraction(split))
        assert info["splits"]["test"]["headers"] and not info["splits"]["train"]["headers"]
        text = format_info(info)
        assert "GM12878" in text and "test" in text and "50" in text
    assert s["fingerprint"] == store.fingerprint
    assert "layout NL4" in format_info(b) and "store v1" in format_info(s)


def test_format_info_summarises_many_tasks(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"cell{i:03d}" for i in range(60)]
    labels = (rng.random((40, 60)) < 0.1).astype(np.int8)
    Store.from_arrays(names, {"train": SplitArrays(np.zeros((40, 8), np.uint8), labels)}).save(tmp_path / "s.h5")
    text = format_info(describe(tmp_path / "s.h5"))
    assert "median" in text and "cell009" in text and "cell010" not in text and "50 more tasks" in text
