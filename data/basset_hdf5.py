"""Basset HDF5 files: the format Basset's `seq_hdf5.py` writes, read strictly and written exactly.

Keys: `target_labels` (task names, bytes), `{train,valid,test}_in` (one-hot, N x 4 x 1 x L
float16, channels A,C,G,T, an N base is 0.25 in all four), `{split}_out` (int8 N x T),
`test_headers`. Also read: N x 4 x L and N x L x 4 layouts; bool/uint8/float one-hot (an all-zero
column is an N base too, since bool/uint8 cannot hold 0.25); float/bool/int/string targets;
optional `{split}_tracks` (N x C x L float) with `track_names`. The layout is decided from the
shapes, confirmed from the content at open time and every chunk is checked while streaming:
nothing is guessed silently.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Iterator

import h5py
import numpy as np

from mtlsweep.data.errors import DataError

SPLITS = ("train", "valid", "test")
LAYOUTS = ("N41L", "N4L", "NL4")
INPUT_DTYPES = (np.float16, np.bool_, np.uint8)
DEFAULT_LABEL_MAP = {"U": 0, "A": -1, "B": 1}
DEFAULT_CHUNK = 65536

_SHAPES_ALLOWED = "N x 4 x 1 x L (Basset), N x 4 x L or N x L x 4"
_LABELS_ALLOWED = "0, 1, -1 (unknown) or NaN (unknown, float targets)"
# Input rows are read from HDF5 in blocks of about this many bytes, whatever the yield chunk,
# so that the temporaries of the one-hot check stay small.
_READ_BLOCK_BYTES = 32 << 20
_SAMPLE_ROWS = 256

# Per-value class of a one-hot entry: 0 = zero, 1 = one, 2 = 0.25, 3 = anything else.
_F16_CLASS = np.full(1 << 16, 3, dtype=np.uint8)
for _v, _c in ((0.0, 0), (-0.0, 0), (1.0, 1), (0.25, 2)):
    _F16_CLASS[np.array(_v, dtype=np.float16).view(np.uint16)] = _c
_U8_CLASS = np.full(256, 3, dtype=np.uint8)
_U8_CLASS[0], _U8_CLASS[1] = 0, 1
# A column's four classes packed into one byte (A in the high bits) -> code 0-3, 4 = N, 255 = bad.
_KEY_TO_CODE = np.full(256, 255, dtype=np.uint8)
for _ch in range(4):
    _KEY_TO_CODE[1 << (2 * (3 - _ch))] = _ch
_KEY_TO_CODE[0] = 4
_KEY_TO_CODE[0b10101010] = 4


# ----------------------------------------------------------------------------- shared checks


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_writable(path, overwrite: bool) -> str:
    """The output path, or a DataError if it exists (without overwrite) or its folder does not."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; give a file path for the output")
    if os.path.exists(path) and not overwrite:
        raise DataError(f"{path}: already exists; pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DataError(f"{path}: folder {parent} does not exist")
    return path


@contextlib.contextmanager
def atomic_h5_file(path, overwrite: bool = False) -> Iterator[h5py.File]:
    """An HDF5 file that appears at `path` only when the block succeeds.

    A temp file in the same folder is renamed over `path` (os.replace is atomic on one
    filesystem); on any exception it is deleted and `path` is left as it was.
    libver="earliest" fixes the on-disk format so that equal content gives equal bytes.
    """
    path = check_writable(path, overwrite)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise DataError(f"{path}: cannot create a file in {parent} ({e.strerror})") from None
    os.close(fd)
    try:
        with h5py.File(tmp, "w", libver="earliest") as f:
            yield f
        if os.path.exists(path) and not overwrite:
            raise DataError(f"{path}: appeared while writing; pass --force to replace it")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def create_dataset(group: h5py.Group, name: str, shape, dtype) -> h5py.Dataset:
    """A contiguous dataset allocated at creation, so the file layout never depends on write order."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=shape, dtype=dtype, track_times=False, dcpl=dcpl)


def write_strings(group: h5py.Group, name: str, values: list[str]) -> None:
    """Fixed-length bytes, as numpy string arrays were stored by Basset."""
    enc = [v.encode("utf-8") for v in values]
    width = max([len(e) for e in enc] + [1])
    group.create_dataset(name, data=np.array(enc, dtype=f"S{width}"), track_times=False)


def check_names(names, what: str, where: str) -> list[str]:
    names = [n.decode("utf-8") if isinstance(n, bytes) else n for n in list(names)]
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise DataError(f"{where}: {what} holds {n!r}; allowed: non-empty strings")
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"{where}: {what} holds {n!r} twice; names must be unique")
        seen.add(n)
    return names


def check_codes(codes, where: str) -> np.ndarray:
    """uint8 N x L with values 0-4 (0-3 = A,C,G,T, 4 = N)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(f"{where}: codes have shape {_fmt_shape(codes.shape)}; allowed: N x L")
    if codes.dtype.kind not in "ui":
        raise DataError(f"{where}: codes have dtype {codes.dtype}; allowed: uint8 codes 0-4")
    if codes.size and (codes.min() < 0 or codes.max() > 4):
        bad = np.argwhere((codes < 0) | (codes > 4))[0]
        raise DataError(f"{where}: code {codes[tuple(bad)]} at row {bad[0]}, position {bad[1]}; "
                        "allowed: 0-3 (A,C,G,T) and 4 (N)")
    return codes.astype(np.uint8, copy=False)


def check_labels(labels, n: int, n_tasks: int | None, where: str) -> np.ndarray:
    """int8 N x T with values -1 (unknown), 0, 1."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n or (n_tasks is not None and labels.shape[1] != n_tasks):
        want = f"{n} x {n_tasks if n_tasks is not None else 'T'}"
        raise DataError(f"{where}: labels have shape {_fmt_shape(labels.shape)}; allowed: {want}")
    if labels.dtype.kind not in "uib":
        raise DataError(f"{where}: labels have dtype {labels.dtype}; allowed: int8 -1/0/1")
    if labels.size and labels.dtype.kind != "b" and (labels.min() < -1 or labels.max() > 1):
        bad = np.argwhere((labels < -1) | (labels > 1))[0]
        raise DataError(f"{where}: label {labels[tuple(bad)]} at row {bad[0]}, task {bad[1]}; "
                        "allowed: 0, 1, -1 (unknown)")
    return labels.astype(np.int8, copy=False)


def check_tracks(tracks, n: int, seq_len: int, n_tracks: int | None, where: str) -> np.ndarray:
    """float16 N x C x L, finite."""
    tracks = np.asarray(tracks)
    if (tracks.ndim != 3 or tracks.shape[0] != n or tracks.shape[2] != seq_len
            or (n_tracks is not None and tracks.shape[1] != n_tracks)):
        want = f"{n} x {n_tracks if n_tracks is not None else 'C'} x {seq_len}"
        raise DataError(f"{where}: tracks have shape {_fmt_shape(tracks.shape)}; allowed: {want}")
    if tracks.dtype.kind not in "fiub":
        raise DataError(f"{where}: tracks have dtype {tracks.dtype}; allowed: float")
    out = tracks.astype(np.float16, copy=False)
    if out.size and not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out))[0]
        raise DataError(f"{where}: track value {tracks[tuple(bad)]} at row {bad[0]}, track {bad[1]}, "
                        f"position {bad[2]}; allowed: finite values within float16 range (|x| <= 65504)")
    return out


# ----------------------------------------------------------------------------- one-hot <-> codes


def _classify(block: np.ndarray) -> np.ndarray:
    kind = block.dtype.kind
    if block.dtype == np.float16:
        return _F16_CLASS[block.view(np.uint16)]
    if block.dtype == np.bool_:
        return block.view(np.uint8)
    if block.dtype == np.uint8:
        return _U8_CLASS[block]
    cls = np.full(block.shape, 3, dtype=np.uint8)
    cls[block == 0] = 0
    cls[block == 1] = 1
    if kind == "f":
        cls[block == 0.25] = 2
    return cls


def onehot_to_codes(block: np.ndarray, layout: str) -> np.ndarray:
    """Codes N x L from a one-hot block; 255 marks a column that is not one-hot."""
    cls = _classify(block)
    if layout == "N41L":
        cls = cls[:, :, 0, :]
    if layout == "NL4":
        c = [cls[:, :, i] for i in range(4)]
    else:
        c = [cls[:, i, :] for i in range(4)]
    key = (c[0] << 6) | (c[1] << 4) | (c[2] << 2) | c[3]
    return _KEY_TO_CODE[key]


def codes_to_layout(codes: np.ndarray, layout: str, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    lut = np.zeros((5, 4), dtype=dtype)
    lut[np.arange(4), np.arange(4)] = 1
    if dtype.kind == "f":
        lut[4] = 0.25  # bool/uint8 cannot hold 0.25, so there N stays all zero
    x = lut[codes]  # N x L x 4
    if layout == "NL4":
        return x
    x = x.transpose(0, 2, 1)
    return x[:, :, None, :] if layout == "N41L" else x


# ----------------------------------------------------------------------------- writer


def _split_parts(value, split: str):
    if hasattr(value, "codes") and hasattr(value, "labels"):
        return value.codes, value.labels
    try:
        codes, labels = value
    except (TypeError, ValueError):
        raise DataError(f"splits[{split!r}]: allowed: a (codes, labels) pair") from None
    return codes, labels


def write_basset(path, target_labels: list[str], splits: dict, test_headers: list[str] | None = None,
                 layout: str = "N41L", dtype=np.float16, tracks: dict | None = None,
                 track_names: list[str] | None = None, overwrite: bool = False,
                 chunk: int = 8192, track_info: list[dict] | None = None) -> None:
    """Write a Basset HDF5 file (N41L float16 is exactly Basset's format).

    `splits` maps split names to (codes uint8 N x L, labels int8 N x T, -1 = unknown).
    Everything is checked before anything is written; the file appears atomically.
    """
    where = os.fspath(path)
    if layout not in LAYOUTS:
        raise DataError(f"{where}: layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    dtype = np.dtype(dtype)
    if dtype not in [np.dtype(d) for d in INPUT_DTYPES]:
        raise DataError(f"{where}: input dtype {dtype}; allowed: float16, bool, uint8")
    names = check_names(target_labels, "target_labels", where)
    if not names:
        raise DataError(f"{where}: target_labels is empty; allowed: at least one task name")
    if not splits:
        raise DataError(f"{where}: no splits given; allowed: {', '.join(SPLITS)}")
    checked: dict[str, tuple] = {}
    seq_len = None
    for split, value in splits.items():
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r}; allowed: {', '.join(SPLITS)}")
        codes, labels = _split_parts(value, split)
        codes = check_codes(codes, f"{where}: {split}_in")
        if codes.shape[0] == 0:
            raise DataError(f"{where}: {split}_in: split is empty; allowed: at least one sequence")
        if seq_len is None:
            seq_len = codes.shape[1]
        elif codes.shape[1] != seq_len:
            raise DataError(f"{where}: {split}_in: sequence length {codes.shape[1]}, other splits "
                            f"have {seq_len}; all splits must have the same length")
        labels = check_labels(labels, codes.shape[0], len(names), f"{where}: {split}_out")
        checked[split] = (codes, labels)
    if test_headers is not None:
        if "test" not in checked:
            raise DataError(f"{where}: test_headers given without a test split")
        test_headers = [h.decode("utf-8") if isinstance(h, bytes) else str(h) for h in test_headers]
        if len(test_headers) != checked["test"][0].shape[0]:
            raise DataError(f"{where}: test_headers has {len(test_headers)} entries; allowed: one per "
                            f"test sequence ({checked['test'][0].shape[0]})")
    checked_tracks: dict[str, np.ndarray] = {}
    if tracks:
        if set(tracks) != set(checked):
            raise DataError(f"{where}: tracks given for splits {sorted(tracks)}; allowed: exactly the "
                            f"splits written ({', '.join(s for s in SPLITS if s in checked)})")
        tnames = check_names(track_names or [], "track_names", where)
        if not tnames:
            raise DataError(f"{where}: track_names missing; allowed: one name per track channel")
        for split in checked:
            checked_tracks[split] = check_tracks(tracks[split], checked[split][0].shape[0], seq_len,
                                                 len(tnames), f"{where}: {split}_tracks")
    elif track_names:
        raise DataError(f"{where}: track_names given without tracks")

    with atomic_h5_file(where, overwrite) as f:
        write_strings(f, "target_labels", names)
        for split in SPLITS:
            if split not in checked:
                continue
            codes, labels = checked[split]
            n = codes.shape[0]
            shape = {"N41L": (n, 4, 1, seq_len), "N4L": (n, 4, seq_len), "NL4": (n, seq_len, 4)}[layout]
            ds = create_dataset(f, f"{split}_in", shape, dtype)
            for a in range(0, n, chunk):
                ds[a:a + chunk] = codes_to_layout(codes[a:a + chunk], layout, dtype)
            create_dataset(f, f"{split}_out", labels.shape, np.int8)[...] = labels
            if split in checked_tracks:
                create_dataset(f, f"{split}_tracks", checked_tracks[split].shape,
                               np.float16)[...] = checked_tracks[split]
        if test_headers is not None:
            write_strings(f, "test_headers", test_headers)
        if checked_tracks:
            write_strings(f, "track_names", tnames)
            if track_info:
                f.attrs["track_info"] = np.bytes_(json.dumps(track_info, sort_keys=True).encode())


# ----------------------------------------------------------------------------- reader


def _decode_strings(ds: h5py.Dataset, where: str) -> list[str]:
    if ds.ndim != 1:
        raise DataError(f"{where}: shape {_fmt_shape(ds.shape)}; allowed: a 1-d list of strings")
    kind = ds.dtype.kind
    if kind not in "SOU":
        raise DataError(f"{where}: dtype {ds.dtype}; allowed: strings (fixed or variable-length bytes/str)")
    out = []
    for v in ds[()]:
        if isinstance(v, (bytes, np.bytes_)):
            try:
                v = bytes(v).decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{where}: entry {v!r} is not UTF-8; allowed: UTF-8 strings") from None
        elif not isinstance(v, str):
            raise DataError(f"{where}: entry {v!r}; allowed: strings")
        out.append(str(v))
    return out


def _normalize_label_map(label_map, where: str):
    """(string -> int8 map, numeric -> int8 map or None) from the user's label map."""
    if label_map is None:
        return dict(DEFAULT_LABEL_MAP), None
    if not isinstance(label_map, dict) or not label_map:
        raise DataError(f"{where}: label_map {label_map!r}; allowed: a non-empty dict label -> 0/1/-1")
    str_map, num_map = {}, {}
    for k, v in label_map.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v not in (-1, 0, 1):
            raise DataError(f"{where}: label_map[{k!r}] = {v!r}; allowed values: 0, 1, -1 (unknown)")
        if isinstance(k, bytes):
            k = k.decode("utf-8")
        if isinstance(k, str):
            str_map[k.strip()] = int(v)
        elif isinstance(k, (int, float, np.integer, np.floating)) and not isinstance(k, bool):
            num_map[float(k)] = int(v)
        else:
            raise DataError(f"{where}: label_map key {k!r}; allowed: strings or numbers")
    return (str_map or dict(DEFAULT_LABEL_MAP)), (num_map or None)


class BassetReader:
    """A Basset HDF5 file, checked when opened and streamed chunk by chunk.

    `label_map` maps string targets (and, if numeric keys are given, numeric targets) to
    0/1/-1; the default is {"U": 0, "A": -1, "B": 1} (TF binding: unbound/ambiguous/bound).
    """

    def __init__(self, path, label_map: dict | None = None):
        self.path = os.fspath(path)
        self._str_map, self._num_map = _normalize_label_map(label_map, self.path)
        if not os.path.isfile(self.path):
            raise DataError(f"{self.path}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
        try:
            self._inspect()
        except BaseException:
            self._f.close()
            raise

    # -- structure ---------------------------------------------------------

    def _err(self, key: str, msg: str) -> DataError:
        return DataError(f"{self.path}: key '{key}': {msg}")

    def _inspect(self) -> None:
        f = self._f
        if "target_labels" not in f:
            if f.attrs.get("format") is not None:
                raise DataError(f"{self.path}: is an mtlsweep store, not a Basset HDF5 file; "
                                "open it with Store.load / open_dataset")
            raise self._err("target_labels", "missing; a Basset HDF5 file needs target_labels, "
                            "{train,valid,test}_in and {train,valid,test}_out")
        self.task_names = check_names(_decode_strings(self._ds("target_labels"),
                                                      f"{self.path}: key 'target_labels'"),
                                      "key 'target_labels'", self.path)
        if not self.task_names:
            raise self._err("target_labels", "is empty; allowed: one name per task")
        present = []
        for s in SPLITS:
            has_in, has_out = f"{s}_in" in f, f"{s}_out" in f
            if has_in != has_out:
                missing = f"{s}_out" if has_in else f"{s}_in"
                raise self._err(missing, f"missing while {s}_{'in' if has_in else 'out'} is present; "
                                "each split needs both _in and _out")
            if has_in:
                present.append(s)
        if not present:
            raise self._err("train_in", "missing; no split found (allowed keys: "
                            + ", ".join(f"{s}_in/{s}_out" for s in SPLITS) + ")")
        self.splits = tuple(present)
        self._n: dict[str, int] = {}
        layouts: dict[str, list[str]] = {}
        self.seq_len = None
        self.dtype = None
        for s in self.splits:
            ds = self._ds(f"{s}_in")
            cands = self._shape_layouts(f"{s}_in", ds)
            if ds.shape[0] == 0:
                raise self._err(f"{s}_in", "split is empty; allowed: at least one sequence")
            L = ds.shape[3] if cands == ["N41L"] else (ds.shape[2] if cands[0] == "N4L" else ds.shape[1])
            if self.seq_len is None:
                self.seq_len, self.dtype = L, ds.dtype
            elif L != self.seq_len:
                raise self._err(f"{s}_in", f"sequence length {L}, but {self.splits[0]}_in has "
                                f"{self.seq_len}; all splits must have the same length")
            elif ds.dtype != self.dtype:
                raise self._err(f"{s}_in", f"dtype {ds.dtype}, but {self.splits[0]}_in has "
                                f"{self.dtype}; all splits must have the same dtype")
            self._n[s] = ds.shape[0]
            layouts[s] = cands
        self.layout = self._resolve_layout(layouts)
        self._check_outputs()
        self._check_headers()
        self._check_tracks()

    def _ds(self, key: str) -> h5py.Dataset:
        obj = self._f[key]
        if not isinstance(obj, h5py.Dataset):
            raise self._err(key, "is a group; allowed: a dataset")
        return obj

    def _shape_layouts(self, key: str, ds: h5py.Dataset) -> list[str]:
        if ds.dtype.kind not in "fbui":
            raise self._err(key, f"dtype {ds.dtype} is not numeric; allowed: float16/float32 "
                            "one-hot, bool or uint8 one-hot")
        shape = ds.shape
        if len(shape) == 4:
            if shape[1] == 4 and shape[2] == 1:
                return ["N41L"]
        elif len(shape) == 3:
            cands = [lay for lay, ok in (("N4L", shape[1] == 4), ("NL4", shape[2] == 4)) if ok]
            if cands:
                return cands
        else:
            raise self._err(key, f"has {len(shape)} dimensions {_fmt_shape(shape)}; allowed: "
                            + _SHAPES_ALLOWED)
        raise self._err(key, f"shape {_fmt_shape(shape)} is not one-hot; allowed: {_SHAPES_ALLOWED}")

    def _resolve_layout(self, layouts: dict[str, list[str]]) -> str:
        """Shapes decide; with L = 4 (N x 4 x 4) the content must single out one layout."""
        chosen: dict[str, str] = {}
        for s, cands in layouts.items():
            if len(cands) == 1:
                self._check_sample(s, cands[0])
                chosen[s] = cands[0]
                continue
            alive = list(cands)
            for a, block in self._blocks(s, 0, self._n[s]):
                alive = [lay for lay in alive if not (onehot_to_codes(block, lay) == 255).any()]
                if len(alive) < 2:
                    break
            if not alive:
                raise self._err(f"{s}_in", "is not one-hot along either axis of N x 4 x 4; each "
                                "position must be a single 1 (A,C,G,T) or all 0.25 / all 0 (N)")
            if len(alive) == 2:
                raise self._err(f"{s}_in", "shape N x 4 x 4 is one-hot along both axes, so N x 4 x L "
                                "and N x L x 4 cannot be told apart; write it as N x 4 x 1 x L")
            chosen[s] = alive[0]
        first = chosen[self.splits[0]]
        for s, lay in chosen.items():
            if lay != first:
                raise self._err(f"{s}_in", f"layout {lay}, but {self.splits[0]}_in is {first}; "
                                "all splits must share one layout")
        return first

    def _check_sample(self, split: str, layout: str) -> None:
        n = min(self._n[split], _SAMPLE_ROWS)
        raw = self._f[f"{split}_in"][0:n]
        self._codes_checked(split, raw, 0, layout)

    def _codes_checked(self, split: str, block: np.ndarray, row0: int, layout: str) -> np.ndarray:
        codes = onehot_to_codes(block, layout)
        bad = codes == 255
        if bad.any():
            r, p = np.argwhere(bad)[0]
            raise self._err(f"{split}_in", f"row {row0 + r}, position {p} is not one-hot (layout "
                            f"{layout}); allowed: a single 1 in channels A,C,G,T, or 0.25 in all "
                            "four / all 0 for N")
        return codes

    def _check_outputs(self) -> None:
        cols: dict[str, int] = {}
        for s in self.splits:
            key = f"{s}_out"
            ds = self._ds(key)
            if ds.ndim not in (1, 2) or ds.shape[0] != self._n[s]:
                raise self._err(key, f"shape {_fmt_shape(ds.shape)}; allowed: {self._n[s]} x T "
                                f"(one row per row of {s}_in, one column per task)")
            if ds.dtype.kind not in "fbuiSO":
                raise self._err(key, f"dtype {ds.dtype}; allowed: int8 0/1/-1, float 0/1/NaN, "
                                "bool, or strings mapped by label_map")
            cols[s] = ds.shape[1] if ds.ndim == 2 else 1
        first = self.splits[0]
        for s in self.splits:
            if cols[s] != cols[first]:
                raise self._err(f"{s}_out", f"has {cols[s]} task columns but {first}_out has "
                                f"{cols[first]}; all splits must have the same tasks")
        if cols[first] != len(self.task_names):
            raise self._err("target_labels", f"has {len(self.task_names)} names but {first}_out has "
                            f"{cols[first]} task columns; allowed: one name per column")

    def _check_headers(self) -> None:
        self._headers: dict[str, list[str] | None] = {}
        for s in self.splits:
            key = f"{s}_headers"
            if key not in self._f:
                self._headers[s] = None
                continue
            heads = _decode_strings(self._ds(key), f"{self.path}: key '{key}'")
            if len(heads) != self._n[s]:
                raise self._err(key, f"has {len(heads)} entries; allowed: one per row of {s}_in "
                                f"({self._n[s]})")
            self._headers[s] = heads
        for s in SPLITS:
            if s not in self.splits and f"{s}_headers" in self._f:
                raise self._err(f"{s}_headers", f"present without {s}_in/{s}_out")

    def _check_tracks(self) -> None:
        with_tracks = [s for s in self.splits if f"{s}_tracks" in self._f]
        self.track_names: list[str] = []
        self.track_info: list[dict] = []
        raw = self._f.attrs.get("track_info")
        if raw is not None:
            try:
                self.track_info = json.loads(raw.decode() if isinstance(raw, (bytes, np.bytes_)) else raw)
            except ValueError:
                raise self._err("track_info", "attribute is not JSON; the file is damaged") from None
        if not with_tracks:
            if "track_names" in self._f:
                raise self._err("track_names", "present but no {split}_tracks dataset; allowed: "
                                "track_names together with train_tracks/valid_tracks/test_tracks")
            return
        if len(with_tracks) != len(self.splits):
            miss = next(s for s in self.splits if s not in with_tracks)
            raise self._err(f"{miss}_tracks", f"missing while {with_tracks[0]}_tracks is present; "
                            "every split needs tracks or none does")
        if "track_names" not in self._f:
            raise self._err("track_names", "missing; allowed: one name per track channel")
        self.track_names = check_names(_decode_strings(self._ds("track_names"),
                                                       f"{self.path}: key 'track_names'"),
                                       "key 'track_names'", self.path)
        C = len(self.track_names)
        for s in self.splits:
            ds = self._ds(f"{s}_tracks")
            if ds.shape != (self._n[s], C, self.seq_len):
                raise self._err(f"{s}_tracks", f"shape {_fmt_shape(ds.shape)}; allowed: "
                                f"{self._n[s]} x {C} x {self.seq_len} (rows x track_names x L)")
            if ds.dtype.kind not in "fiu":
                raise self._err(f"{s}_tracks", f"dtype {ds.dtype}; allowed: float")

    # -- public ------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def _split(self, split: str) -> str:
        if split not in self.splits:
            raise DataError(f"{self.path}: no split {split!r}; present: {', '.join(self.splits)}")
        return split

    def n(self, split: str) -> int:
        return self._n[self._split(split)]

    def headers(self, split: str) -> list[str] | None:
        return self._headers[self._split(split)]

    def _blocks(self, split: str, start: int, stop: int):
        ds = self._f[f"{split}_in"]
        row_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
        step = max(1, _READ_BLOCK_BYTES // row_bytes)
        for a in range(start, stop, step):
            yield a, ds[a:min(a + step, stop)]

    def _labels(self, split: str, a: int, b: int) -> np.ndarray:
        key = f"{split}_out"
        raw = self._f[key][a:b]
        if raw.ndim == 1:
            raw = raw[:, None]
        kind = raw.dtype.kind
        if kind in "SO":
            return self._map_strings(key, raw, a)
        if self._num_map is not None and kind in "fiub":
            return self._map_numbers(key, raw, a)
        if kind == "b":
            return raw.astype(np.int8)
        if kind == "f":
            bad = ~(np.isnan(raw) | (raw == 0) | (raw == 1) | (raw == -1))
        elif kind in "iu":
            bad = (raw != 0) & (raw != 1) & (raw != -1) if kind == "i" else raw > 1
        if bad.any():
            r, t = np.argwhere(bad)[0]
            raise self._err(key, f"value {raw[r, t]} at row {a + r}, task '{self.task_names[t]}'; "
                            f"allowed: {_LABELS_ALLOWED}, or a label_map")
        if kind == "f":
            out = np.where(np.isnan(raw), -1, raw).astype(np.int8)
            return out
        return raw.astype(np.int8)

    def _map_strings(self, key: str, raw: np.ndarray, a: int) -> np.ndarray:
        uniq, inv = np.unique(raw, return_inverse=True)
        lut = np.empty(len(uniq), dtype=np.int8)
        for i, u in enumerate(uniq):
            s = u.decode("utf-8", "replace") if isinstance(u, (bytes, np.bytes_)) else str(u)
            v = self._str_map.get(s.strip())
            if v is None:
                r, t = np.argwhere(raw == u)[0]
                raise self._err(key, f"label {s!r} at row {a + r}, task '{self.task_names[t]}' is not "
                                f"in the label map; allowed: {', '.join(map(repr, self._str_map))}")
            lut[i] = v
        return lut[inv.reshape(raw.shape)]

    def _map_numbers(self, key: str, raw: np.ndarray, a: int) -> np.ndarray:
        vals = raw.astype(np.float64)
        out = np.full(raw.shape, -1, dtype=np.int8)
        known = ~np.isnan(vals)
        uniq, inv = np.unique(vals[known], return_inverse=True)
        lut = np.empty(len(uniq), dtype=np.int8)
        for i, u in enumerate(uniq):
            if float(u) not in self._num_map:
                r, t = np.argwhere(vals == u)[0]
                raise self._err(key, f"label {raw[r, t]} at row {a + r}, task '{self.task_names[t]}' "
                                f"is not in the label map; allowed: {', '.join(map(str, self._num_map))}")
            lut[i] = self._num_map[float(u)]
        out[known] = lut[inv]
        return out

    def _tracks(self, split: str, a: int, b: int) -> np.ndarray | None:
        if not self.track_names:
            return None
        raw = self._f[f"{split}_tracks"][a:b]
        out = raw.astype(np.float16)
        if not np.isfinite(out).all():
            r, c, p = np.argwhere(~np.isfinite(out))[0]
            raise self._err(f"{split}_tracks", f"value {raw[r, c, p]} at row {a + r}, track "
                            f"'{self.track_names[c]}', position {p}; allowed: finite values within "
                            "float16 range (|x| <= 65504)")
        return out

    def iter_labels(self, split: str, chunk: int = DEFAULT_CHUNK) -> Iterator[np.ndarray]:
        """Only the labels (int8, -1 unknown), chunk by chunk; inputs are not read."""
        n = self.n(split)
        for a in range(0, n, chunk):
            yield self._labels(split, a, min(a + chunk, n))

    def iter_chunks(self, split: str, chunk: int = DEFAULT_CHUNK):
        """(codes uint8 [n,L], labels int8 [n,T], tracks float16 [n,C,L] | None), each checked."""
        if not isinstance(chunk, (int, np.integer)) or isinstance(chunk, bool) or chunk < 1:
            raise DataError(f"{self.path}: chunk {chunk!r}; allowed: a positive integer")
        n = self.n(split)
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            codes = np.empty((b - a, self.seq_len), dtype=np.uint8)
            for r, block in self._blocks(split, a, b):
                codes[r - a:r - a + len(block)] = self._codes_checked(split, block, r, self.layout)
            yield codes, self._labels(split, a, b), self._tracks(split, a, b)

    def read_split(self, split: str):
        """The whole split at once (codes, labels, tracks); for files that fit in RAM."""
        n = self.n(split)
        codes = np.empty((n, self.seq_len), dtype=np.uint8)
        labels = np.empty((n, self.n_tasks), dtype=np.int8)
        tracks = (np.empty((n, len(self.track_names), self.seq_len), dtype=np.float16)
                  if self.track_names else None)
        a = 0
        for c, lab, tr in self.iter_chunks(split):
            codes[a:a + len(c)] = c
            labels[a:a + len(c)] = lab
            if tracks is not None:
                tracks[a:a + len(c)] = tr
            a += len(c)
        return codes, labels, tracks

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "BassetReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self._n[s]}" for s in self.splits)
        return (f"BassetReader({self.path!r}: {sizes}, L={self.seq_len}, T={self.n_tasks}, "
                f"layout={self.layout}, dtype={self.dtype})")


def open_h5(path) -> "h5py.File":
    """Open an existing HDF5 file read-only, or a one-line DataError naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith((".h5", ".hdf5")))
        raise DataError(f"{path}: is a directory, not an HDF5 file" + (
            f"; it holds {', '.join(inside[:3])}" if inside else " (and holds no .h5 file)"))
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
