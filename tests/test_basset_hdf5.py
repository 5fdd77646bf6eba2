"""Basset HDF5: exact format, every accepted layout, and one-line errors for malformed files."""
import os

import h5py
import numpy as np
import pytest

from mtlsweep.data.basset_hdf5 import LAYOUTS, SPLITS, BassetReader, write_basset
from mtlsweep.data.errors import DataError
from mtlsweep.data.store import basset_to_store

TASKS = ["K562", "GM12878", "HepG2"]
L = 12


def _arrays(seed=0, sizes=(40, 9, 11)):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in zip(SPLITS, sizes):
        codes = rng.integers(0, 5, (n, L)).astype(np.uint8)
        labels = rng.integers(-1, 2, (n, len(TASKS))).astype(np.int8)
        out[split] = (codes, labels)
    return out


def _onehot(codes, layout="N41L", dtype=np.float16):
    lut = np.zeros((5, 4), dtype=dtype)
    lut[np.arange(4), np.arange(4)] = 1
    if np.dtype(dtype).kind == "f":
        lut[4] = 0.25
    x = lut[codes]
    if layout == "NL4":
        return x
    x = x.transpose(0, 2, 1)
    return x[:, :, None, :] if layout == "N41L" else x


def _raw_basset(path, **override):
    """A valid Basset file written with plain h5py; override a key with an array, or None to drop it."""
    arrays = _arrays()
    keys = {"target_labels": np.array([t.encode() for t in TASKS])}
    for split, (codes, labels) in arrays.items():
        keys[f"{split}_in"] = _onehot(codes)
        keys[f"{split}_out"] = labels
    keys["test_headers"] = np.array([f"chr1:{i}-{i + L}(+)".encode() for i in range(11)])
    keys.update(override)
    with h5py.File(path, "w") as f:
        for k, v in keys.items():
            if v is not None:
                f.create_dataset(k, data=v)
    return arrays


def test_basset_round_trip_is_exact(tmp_path):
    arrays = _arrays()
    headers = [f"chr{i % 3 + 1}:{100 * i}-{100 * i + L}(+)" for i in range(11)]
    path = tmp_path / "basset.h5"
    write_basset(path, TASKS, arrays, test_headers=headers)
    with h5py.File(path, "r") as f:
        assert sorted(f) == sorted(["target_labels", "test_headers"]
                                   + [f"{s}_{io}" for s in SPLITS for io in ("in", "out")])
        assert f["train_in"].shape == (40, 4, 1, L) and f["train_in"].dtype == np.float16
        assert f["train_out"].dtype == np.int8 and f["train_out"].shape == (40, 3)
        assert f["target_labels"].dtype.kind == "S"
        np.testing.assert_array_equal(f["valid_in"][()], _onehot(arrays["valid"][0]))
        n_rows = arrays["train"][0] == 4
        assert (f["train_in"][()][:, :, 0, :].transpose(0, 2, 1)[n_rows] == 0.25).all()
    with BassetReader(path) as r:
        assert (r.task_names, r.seq_len, r.n_tasks, r.layout, r.dtype) == (TASKS, L, 3, "N41L", np.float16)
        assert r.splits == SPLITS and r.track_names == []
        assert [r.n(s) for s in SPLITS] == [40, 9, 11]
        assert r.headers("test") == headers and r.headers("train") is None
        for split, (codes, labels) in arrays.items():
            c, lab, tracks = r.read_split(split)
            np.testing.assert_array_equal(c, codes)
            np.testing.assert_array_equal(lab, labels)
            assert c.dtype == np.uint8 and lab.dtype == np.int8 and tracks is None


@pytest.mark.parametrize("dtype", [np.float16, np.bool_, np.uint8])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_and_dtype_reads_back(tmp_path, layout, dtype):
    arrays = _arrays(seed=1)
    path = tmp_path / "b.h5"
    write_basset(path, TASKS, arrays, layout=layout, dtype=dtype)
    with h5py.File(path, "r") as f:
        assert f["train_in"].shape == {"N41L": (40, 4, 1, L), "N4L": (40, 4, L), "NL4": (40, L, 4)}[layout]
        assert f["train_in"].dtype == dtype
    with BassetReader(path) as r:
        assert r.layout == layout and r.dtype == dtype
        for split, (codes, labels) in arrays.items():
            chunks = list(r.iter_chunks(split, chunk=4))
            np.testing.assert_array_equal(np.concatenate([c for c, _, _ in chunks]), codes)
            np.testing.assert_array_equal(np.concatenate([lab for _, lab, _ in chunks]), labels)


def test_files_written_by_hand_in_each_layout_are_read(tmp_path):
    codes = _arrays()["train"][0]
    for layout in LAYOUTS:
        path = tmp_path / f"{layout}.h5"
        _raw_basset(path, train_in=_onehot(codes, layout, np.float32).astype(np.float32),
                    valid_in=_onehot(_arrays()["valid"][0], layout, np.float32),
                    test_in=_onehot(_arrays()["test"][0], layout, np.float32))
        with BassetReader(path) as r:
            assert r.layout == layout
            np.testing.assert_array_equal(r.read_split("train")[0], codes)


def test_length_four_is_resolved_from_content(tmp_path):
    codes = np.zeros((6, 4), dtype=np.uint8)  # poly-A: one-hot only along the channel axis
    labels = np.zeros((6, 1), dtype=np.int8)
    path = tmp_path / "l4.h5"
    write_basset(path, ["t"], {"train": (codes, labels)}, layout="NL4")
    with BassetReader(path) as r:
        assert r.layout == "NL4"
    write_basset(path, ["t"], {"train": (codes, labels)}, layout="N4L", overwrite=True)
    with BassetReader(path) as r:
        assert r.layout == "N4L"
        np.testing.assert_array_equal(r.read_split("train")[0], codes)


@pytest.mark.parametrize("kind", ["fixed", "vlen_bytes", "vlen_str"])
def test_target_label_string_kinds(tmp_path, kind):
    path = tmp_path / "b.h5"
    if kind == "fixed":
        names = np.array([t.encode() for t in TASKS], dtype="S8")
    elif kind == "vlen_bytes":
        names = np.array([t.encode() for t in TASKS], dtype=h5py.string_dtype("ascii"))
    else:
        names = np.array(TASKS, dtype=h5py.string_dtype("utf-8"))
    _raw_basset(path, target_labels=names)
    with BassetReader(path) as r:
        assert r.task_names == TASKS


def test_unknown_and_mapped_labels(tmp_path):
    arrays = _arrays()
    n = {s: len(a[0]) for s, a in arrays.items()}
    float_out = {f"{s}_out": np.where(a[1] < 0, np.nan, a[1]).astype(np.float32) for s, a in arrays.items()}
    _raw_basset(tmp_path / "nan.h5", **float_out)
    with BassetReader(tmp_path / "nan.h5") as r:
        for s in SPLITS:
            np.testing.assert_array_equal(r.read_split(s)[1], arrays[s][1])

    uab = {f"{s}_out": np.array([b"A", b"U", b"B"])[a[1] + 1] for s, a in arrays.items()}
    _raw_basset(tmp_path / "uab.h5", **uab)
    with BassetReader(tmp_path / "uab.h5") as r:
        for s in SPLITS:
            np.testing.assert_array_equal(r.read_split(s)[1], arrays[s][1])

    words = {f"{s}_out": np.array(["?", "neg", "pos"], dtype=object)[a[1] + 1].astype(h5py.string_dtype())
             for s, a in arrays.items()}
    _raw_basset(tmp_path / "words.h5", **words)
    with BassetReader(tmp_path / "words.h5", label_map={"neg": 0, "pos": 1, "?": -1}) as r:
        np.testing.assert_array_equal(r.read_split("valid")[1], arrays["valid"][1])

    coded = {f"{s}_out": np.where(a[1] < 0, 2, a[1]).astype(np.uint8) for s, a in arrays.items()}
    _raw_basset(tmp_path / "coded.h5", **coded)
    with BassetReader(tmp_path / "coded.h5", label_map={0: 0, 1: 1, 2: -1}) as r:
        np.testing.assert_array_equal(r.read_split("test")[1], arrays["test"][1])
    with pytest.raises(DataError, match="train_out"):
        with BassetReader(tmp_path / "coded.h5") as r:  # 2 is not a label without the map
            r.read_split("train")
    with pytest.raises(DataError, match="label_map"):
        BassetReader(tmp_path / "coded.h5", label_map={"x": 5})
    assert n["train"] == 40


def test_tracks_round_trip(tmp_path):
    arrays = _arrays()
    rng = np.random.default_rng(3)
    tracks = {s: rng.normal(size=(len(a[0]), 2, L)).astype(np.float32) for s, a in arrays.items()}
    path = tmp_path / "tracks.h5"
    write_basset(path, TASKS, arrays, tracks=tracks, track_names=["DNase", "H3K27ac"])
    with h5py.File(path, "r") as f:
        assert f["train_tracks"].shape == (40, 2, L)
    with BassetReader(path) as r:
        assert r.track_names == ["DNase", "H3K27ac"]
        _, _, tr = r.read_split("valid")
        assert tr.dtype == np.float16
        np.testing.assert_array_equal(tr, tracks["valid"].astype(np.float16))


def test_writer_refuses_overwrite_and_is_byte_identical(tmp_path):
    arrays = _arrays()
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_basset(a, TASKS, arrays)
    write_basset(b, TASKS, arrays)
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(DataError, match="already exists"):
        write_basset(a, TASKS, arrays)
    write_basset(a, TASKS, _arrays(seed=5), overwrite=True)
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.parametrize("bad, key", [
    (lambda a: {"train": (a["train"][0] + 2, a["train"][1])}, "train_in"),        # code 5
    (lambda a: {"train": (a["train"][0], a["train"][1] * 2)}, "train_out"),       # label 2
    (lambda a: {"train": a["train"], "valid": (a["valid"][0][:, :5], a["valid"][1])}, "valid_in"),
    (lambda a: {"holdout": a["train"]}, "holdout"),
])
def test_writer_rejects_bad_arrays_and_writes_nothing(tmp_path, bad, key):
    arrays = _arrays()
    arrays["train"] = (np.minimum(arrays["train"][0], 3), np.maximum(arrays["train"][1], 0))
    path = tmp_path / "out.h5"
    with pytest.raises(DataError, match=key):
        write_basset(path, TASKS, bad(arrays))
    assert os.listdir(tmp_path) == []


def _bad_rows(split="train", row=290):
    """A train_in beyond the open-time sample with one position that is not one-hot."""
    codes = np.random.default_rng(9).integers(0, 4, (300, L)).astype(np.uint8)
    x = _onehot(codes)
    x[row, 2, 0, 5] = 1.0  # now two channels are 1 at position 5
    return {f"{split}_in": x, f"{split}_out": np.zeros((300, 3), np.int8)}


def _mixed_layouts():
    a = _arrays()
    return {"valid_in": _onehot(a["valid"][0], "NL4"), "train_in": _onehot(a["train"][0], "N4L"),
            "test_in": _onehot(a["test"][0], "N4L")}


_A = _arrays()
MALFORMED = {
    "missing target_labels": ({"target_labels": None}, "target_labels"),
    "split without _out": ({"valid_out": None}, "valid_out"),
    "target_labels count != T": ({"target_labels": np.array([b"a", b"b"])}, "target_labels"),
    "duplicate task names": ({"target_labels": np.array([b"a", b"b", b"a"])}, "target_labels"),
    "headers count != N": ({"test_headers": np.array([b"h"] * 5)}, "test_headers"),
    "empty split": ({"valid_in": np.zeros((0, 4, 1, L), np.float16),
                     "valid_out": np.zeros((0, 3), np.int8)}, "valid_in"),
    "wrong ndim": ({"train_in": _onehot(_A["train"][0]).reshape(40, -1)}, "train_in"),
    "5 channels": ({"train_in": np.zeros((40, 5, L), np.float16)}, "train_in"),
    "non-numeric inputs": ({"train_in": np.full((40, 4, 1, L), b"A")}, "train_in"),
    "not one-hot, found while streaming": (_bad_rows(), "train_in"),
    "value 0.5 in one-hot": ({"test_in": _onehot(_A["test"][0]) * 2}, "test_in"),
    "label 2": ({"train_out": np.full((40, 3), 2, np.int8)}, "train_out"),
    "label string not in map": ({"valid_out": np.full((9, 3), b"X")}, "valid_out"),
    "splits with different L": ({"valid_in": _onehot(_A["valid"][0][:, :L - 1])}, "valid_in"),
    "splits with different T": ({"valid_out": np.zeros((9, 4), np.int8)}, "valid_out"),
    "in/out rows differ": ({"test_out": np.zeros((10, 3), np.int8)}, "test_out"),
    "layouts differ between splits": (_mixed_layouts(), "valid_in"),
    "N x 4 x 4 ambiguous": ({s + "_in": np.tile(np.eye(4, dtype=np.float16), (n, 1, 1))
                             for s, n in zip(SPLITS, (40, 9, 11))}, "train_in"),
    "tracks without track_names": ({"train_tracks": np.zeros((40, 1, L), np.float32),
                                    "valid_tracks": np.zeros((9, 1, L), np.float32),
                                    "test_tracks": np.zeros((11, 1, L), np.float32)}, "track_names"),
    "tracks in one split only": ({"train_tracks": np.zeros((40, 1, L), np.float32),
                                  "track_names": np.array([b"DNase"])}, "valid_tracks"),
    "no split at all": ({f"{s}_{io}": None for s in SPLITS for io in ("in", "out")}
                        | {"test_headers": None}, "train_in"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_gives_one_line_error_and_writes_nothing(tmp_path, case):
    override, key = MALFORMED[case]
    src = tmp_path / "bad.h5"
    _raw_basset(src, **override)
    out = tmp_path / "out" / "store.h5"
    out.parent.mkdir()
    with pytest.raises(DataError) as e:
        basset_to_store(src, out, chunk=64)
    msg = str(e.value)
    assert key in msg and str(src) in msg and "\n" not in msg
    assert os.listdir(out.parent) == []


def test_bad_input_does_not_touch_an_existing_output(tmp_path):
    src, out = tmp_path / "bad.h5", tmp_path / "store.h5"
    _raw_basset(src, **_bad_rows())
    out.write_bytes(b"previous content")
    with pytest.raises(DataError, match="row 290"):
        basset_to_store(src, out, chunk=50, overwrite=True)
    assert out.read_bytes() == b"previous content"
    assert sorted(os.listdir(tmp_path)) == ["bad.h5", "store.h5"]


def test_content_is_checked_chunk_by_chunk(tmp_path):
    src = tmp_path / "bad.h5"
    _raw_basset(src, **_bad_rows())
    with BassetReader(src) as r:  # the bad row is past the open-time sample
        it = r.iter_chunks("train", chunk=100)
        assert len(next(it)[0]) == 100 and len(next(it)[0]) == 100
        with pytest.raises(DataError, match=r"train_in.*row 290, position 5"):
            next(it)


def test_not_hdf5_and_missing_file(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("chr1\t100\t700\n")
    with pytest.raises(DataError, match="not a readable HDF5 file"):
        BassetReader(junk)
    with pytest.raises(DataError, match="no such file"):
        BassetReader(tmp_path / "missing.h5")
