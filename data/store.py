"""The compact store: uint8 codes, int8 labels (-1 = unknown), loaded whole into RAM.

A store is 8x smaller than Basset's float16 one-hot for the sequences; one-hot expansion
happens per batch on the device (`to_device`). Arrays are plain numpy, so a Store pickles
and goes into the Ray object store zero-copy (which makes them read-only: nothing here
writes into them).

File layout (one HDF5 file, contiguous datasets, `libver="earliest"`, no timestamps):
    attrs: format = "mtlsweep-store", format_version, seq_len, fingerprint
    task_names, [track_names], {split}/codes, {split}/labels, [{split}/tracks], [{split}/headers]
The fingerprint is a sha256 of the decoded content (names, codes, labels, tracks, headers),
so the same data in any Basset layout, converted in any chunk size, gives the same store.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterator

import h5py
import numpy as np
import torch

from mtlsweep.data.basset_hdf5 import (DEFAULT_CHUNK, SPLITS, BassetReader, atomic_h5_file, check_codes, open_h5,
                              check_labels, check_names, check_tracks, check_writable,
                              create_dataset, write_strings)
from mtlsweep.data.errors import DataError
from mtlsweep.data.onehot import codes_to_onehot, codes_to_onehot_np

FORMAT = "mtlsweep-store"
FORMAT_VERSION = 1
_STATS_ROWS = 65536


@dataclass
class SplitArrays:
    codes: np.ndarray                  # uint8 N x L, 0-3 = A,C,G,T, 4 = N
    labels: np.ndarray                 # int8 N x T, -1 = unknown
    tracks: np.ndarray | None = None   # float16 N x C x L
    headers: list[str] | None = None

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    def __len__(self) -> int:
        return self.n


@dataclass
class StoreInfo:
    """What basset_to_store wrote (the arrays stay on disk)."""
    path: str
    task_names: list[str]
    track_names: list[str]
    seq_len: int
    fingerprint: str
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)


# ----------------------------------------------------------------------------- fingerprint


class _Fingerprint:
    """sha256 over the content; one hasher per array stream, so chunk size does not matter."""

    def __init__(self, task_names, track_names, seq_len: int):
        self._meta = json.dumps({"tasks": list(task_names), "tracks": list(track_names),
                                 "seq_len": int(seq_len)}, sort_keys=True).encode()
        self._splits: dict[str, dict] = {}

    def add_split(self, split: str, n: int, headers: list[str] | None, streamed_headers: bool = False) -> None:
        """`streamed_headers`: the headers come later, chunk by chunk, through update_headers."""
        h = None
        if headers is not None or streamed_headers:
            h = hashlib.sha256()
        self._splits[split] = {"n": int(n), "codes": hashlib.sha256(), "labels": hashlib.sha256(),
                               "tracks": hashlib.sha256(), "headers": h}
        if headers is not None:
            self.update_headers(split, headers)

    def update_headers(self, split: str, headers) -> None:
        h = self._splits[split]["headers"]
        for s in headers:
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little") + b)

    def update(self, split: str, codes, labels, tracks) -> None:
        s = self._splits[split]
        s["codes"].update(np.ascontiguousarray(codes, dtype=np.uint8).data)
        s["labels"].update(np.ascontiguousarray(labels, dtype=np.int8).data)
        if tracks is not None:
            s["tracks"].update(np.ascontiguousarray(tracks, dtype=np.float16).data)

    def hexdigest(self) -> str:
        h = hashlib.sha256(self._meta)
        for split in SPLITS:
            if split not in self._splits:
                continue
            s = self._splits[split]
            h.update(split.encode() + s["n"].to_bytes(8, "little"))
            for k in ("codes", "labels", "tracks"):
                h.update(s[k].digest())
            h.update(s["headers"].digest() if s["headers"] is not None else b"no headers")
        return h.hexdigest()


# ----------------------------------------------------------------------------- file writer


class _StoreWriter:
    """Creates every dataset up front (allocated early), so that a streamed conversion and a
    whole-array save produce byte-identical files."""

    def __init__(self, f: h5py.File, task_names, track_names, seq_len: int,
                 sizes: dict[str, tuple[int, list[str] | int | None]], fingerprint_len: int = 64,
                 track_info: list[dict] | None = None):
        """`sizes[split]` = (rows, headers): a list of headers written now, an int (the byte width
        of headers written later into ``self.header_sinks[split]``) or None."""
        self._f = f
        f.attrs["format"] = np.bytes_(FORMAT)
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["seq_len"] = np.int64(seq_len)
        f.attrs["fingerprint"] = np.bytes_(b"0" * fingerprint_len)
        write_strings(f, "task_names", list(task_names))
        if track_names:
            write_strings(f, "track_names", list(track_names))
        if track_info:
            f.attrs["track_info"] = np.bytes_(json.dumps(track_info, sort_keys=True).encode())
        T, C = len(task_names), len(track_names)
        self.sinks: dict[str, tuple] = {}
        self.header_sinks: dict[str, h5py.Dataset] = {}
        for split in SPLITS:
            if split not in sizes:
                continue
            n, headers = sizes[split]
            g = f.create_group(split)
            codes = create_dataset(g, "codes", (n, seq_len), np.uint8)
            labels = create_dataset(g, "labels", (n, T), np.int8)
            tracks = create_dataset(g, "tracks", (n, C, seq_len), np.float16) if C else None
            if isinstance(headers, int):
                self.header_sinks[split] = create_dataset(g, "headers", (n,), f"S{max(headers, 1)}")
            elif headers is not None:
                write_strings(g, "headers", headers)
            self.sinks[split] = (codes, labels, tracks)

    def finish(self, fingerprint: str) -> None:
        self._f.attrs.modify("fingerprint", np.bytes_(fingerprint.encode("ascii")))


def _stream_into(reader: BassetReader, sinks: dict[str, tuple], chunk: int) -> str:
    """Copy every split chunk by chunk into `sinks` (h5py datasets or numpy arrays)."""
    fp = _Fingerprint(reader.task_names, reader.track_names, reader.seq_len)
    for split in reader.splits:
        fp.add_split(split, reader.n(split), reader.headers(split))
        codes_dst, labels_dst, tracks_dst = sinks[split]
        a = 0
        for codes, labels, tracks in reader.iter_chunks(split, chunk):
            b = a + len(codes)
            codes_dst[a:b] = codes
            labels_dst[a:b] = labels
            if tracks_dst is not None:
                tracks_dst[a:b] = tracks
            fp.update(split, codes, labels, tracks)
            a = b
    return fp.hexdigest()


# ----------------------------------------------------------------------------- store


def _decode_attr(v):
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else v


def _decode_names(ds) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v) for v in ds[()]]


def _looks_like_basset(f: h5py.File) -> bool:
    return "target_labels" in f or any(f"{s}_in" in f for s in SPLITS)


def read_store_meta(f: h5py.File, path: str) -> dict:
    """The store's attributes and names, checked; a clear DataError for a Basset or foreign file."""
    fmt = _decode_attr(f.attrs.get("format"))
    if fmt != FORMAT:
        if _looks_like_basset(f):
            raise DataError(f"{path}: is a Basset HDF5 file, not a store; convert it first with "
                            "`mtlsweep data convert BASSET.h5 STORE.h5` (or use open_dataset)")
        raise DataError(f"{path}: attribute 'format' is {fmt!r}; allowed: {FORMAT!r} "
                        "(an mtlsweep store) or a Basset HDF5 file")
    version = int(f.attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: attribute 'format_version' is {version}; this mtlsweep reads "
                        f"version {FORMAT_VERSION}")
    if "task_names" not in f:
        raise DataError(f"{path}: key 'task_names' missing; the store is incomplete")
    splits = [s for s in SPLITS if s in f]
    if not splits:
        raise DataError(f"{path}: no split group; allowed: {', '.join(SPLITS)}")
    return {"task_names": _decode_names(f["task_names"]),
            "track_names": _decode_names(f["track_names"]) if "track_names" in f else [],
            "seq_len": int(f.attrs["seq_len"]),
            "fingerprint": _decode_attr(f.attrs["fingerprint"]),
            "track_info": read_track_info(f, path),
            "format_version": version, "splits": splits}


def read_track_info(f: h5py.File, path: str) -> list[dict]:
    """Where each track came from and how it was transformed (attribute ``track_info``, JSON)."""
    raw = f.attrs.get("track_info")
    if raw is None:
        return []
    try:
        info = json.loads(_decode_attr(raw))
        assert isinstance(info, list)
        return info
    except (ValueError, AssertionError):
        raise DataError(f"{path}: attribute 'track_info' is not a JSON list; the file is damaged") from None


def _split_from_value(value, split: str) -> SplitArrays:
    if isinstance(value, SplitArrays):
        return value
    if isinstance(value, (tuple, list)) and 2 <= len(value) <= 4:
        return SplitArrays(*value)
    raise DataError(f"splits[{split!r}]: {type(value).__name__}; allowed: SplitArrays "
                    "or (codes, labels[, tracks[, headers]])")


class Store:
    """Task names, track names, sequence length, source fingerprint and per-split arrays."""

    def __init__(self, task_names: list[str], track_names: list[str], seq_len: int,
                 fingerprint: str, splits: dict[str, SplitArrays], track_info: list[dict] | None = None):
        # No checks here: use from_arrays / load, which validate.
        self.task_names = list(task_names)
        self.track_names = list(track_names)
        self.track_info = list(track_info or [])
        self.seq_len = int(seq_len)
        self.fingerprint = fingerprint
        self.splits = splits

    # -- construction ------------------------------------------------------

    @classmethod
    def from_arrays(cls, task_names, splits: dict, fingerprint: str | None = None,
                    track_names=(), *, where: str = "store", track_info=()) -> "Store":
        task_names = check_names(task_names, "task_names", where)
        if not task_names:
            raise DataError(f"{where}: task_names is empty; allowed: at least one task")
        track_names = check_names(track_names or [], "track_names", where)
        if not splits:
            raise DataError(f"{where}: no splits; allowed: {', '.join(SPLITS)}")
        out: dict[str, SplitArrays] = {}
        seq_len = None
        for split in SPLITS:
            if split not in splits:
                continue
            sp = _split_from_value(splits[split], split)
            w = f"{where}: split '{split}'"
            codes = check_codes(sp.codes, w)
            n = codes.shape[0]
            if n == 0:
                raise DataError(f"{w}: is empty; allowed: at least one sequence")
            if seq_len is None:
                seq_len = codes.shape[1]
            elif codes.shape[1] != seq_len:
                raise DataError(f"{w}: sequence length {codes.shape[1]}, other splits have {seq_len}; "
                                "all splits must have the same length")
            labels = check_labels(sp.labels, n, len(task_names), w)
            tracks = None
            if track_names:
                if sp.tracks is None:
                    raise DataError(f"{w}: tracks missing; track_names {track_names} need tracks "
                                    "in every split")
                tracks = check_tracks(sp.tracks, n, seq_len, len(track_names), w)
            elif sp.tracks is not None:
                raise DataError(f"{w}: tracks given without track_names; allowed: one name per channel")
            headers = None
            if sp.headers is not None:
                headers = [h.decode("utf-8") if isinstance(h, bytes) else str(h) for h in sp.headers]
                if len(headers) != n:
                    raise DataError(f"{w}: {len(headers)} headers; allowed: one per sequence ({n})")
            out[split] = SplitArrays(codes, labels, tracks, headers)
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise DataError(f"{where}: split {unknown[0]!r}; allowed: {', '.join(SPLITS)}")
        if fingerprint is None:
            fp = _Fingerprint(task_names, track_names, seq_len)
            for split, sp in out.items():
                fp.add_split(split, sp.n, sp.headers)
                fp.update(split, sp.codes, sp.labels, sp.tracks)
            fingerprint = fp.hexdigest()
        elif not isinstance(fingerprint, str) or not fingerprint or not fingerprint.isascii():
            raise DataError(f"{where}: fingerprint {fingerprint!r}; allowed: a non-empty ASCII (hex) string")
        return cls(task_names, track_names, seq_len, fingerprint, out, list(track_info or []))

    @classmethod
    def load(cls, path) -> "Store":
        """The whole store file into RAM (a Basset file is refused: convert it first)."""
        path = os.fspath(path)
        with open_h5(path) as f:
            meta = read_store_meta(f, path)
            splits = {}
            for split in meta["splits"]:
                g = f[split]
                for key in ("codes", "labels"):
                    if key not in g:
                        raise DataError(f"{path}: key '{split}/{key}' missing; the store is incomplete")
                tracks = g["tracks"][()] if "tracks" in g else None
                headers = _decode_names(g["headers"]) if "headers" in g else None
                splits[split] = SplitArrays(g["codes"][()], g["labels"][()], tracks, headers)
        store = cls.from_arrays(meta["task_names"], splits, meta["fingerprint"], meta["track_names"],
                                where=path, track_info=meta["track_info"])
        if store.seq_len != meta["seq_len"]:
            raise DataError(f"{path}: attribute 'seq_len' is {meta['seq_len']} but codes have length "
                            f"{store.seq_len}")
        return store

    def save(self, path, overwrite: bool = False) -> None:
        """Atomic; equal content gives byte-identical files."""
        sizes = {s: (sp.n, sp.headers) for s, sp in self.splits.items()}
        with atomic_h5_file(path, overwrite) as f:
            w = _StoreWriter(f, self.task_names, self.track_names, self.seq_len, sizes,
                             fingerprint_len=len(self.fingerprint), track_info=self.track_info)
            for split, sp in self.splits.items():
                codes, labels, tracks = w.sinks[split]
                codes[...] = sp.codes
                labels[...] = sp.labels
                if tracks is not None:
                    tracks[...] = sp.tracks
            w.finish(self.fingerprint)

    # -- queries -----------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def nbytes(self) -> int:
        """RAM held by the arrays (codes, labels, tracks) of all splits."""
        return sum(sp.codes.nbytes + sp.labels.nbytes + (sp.tracks.nbytes if sp.tracks is not None else 0)
                   for sp in self.splits.values())

    def split(self, split: str) -> SplitArrays:
        if split not in self.splits:
            raise DataError(f"store: no split {split!r}; present: {', '.join(self.splits)}")
        return self.splits[split]

    def n(self, split: str) -> int:
        return self.split(split).n

    def _counts(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        labels = self.split(split).labels
        pos = np.zeros(labels.shape[1], dtype=np.int64)
        known = np.zeros(labels.shape[1], dtype=np.int64)
        for a in range(0, labels.shape[0], _STATS_ROWS):  # bounded temporaries on 2M x 164
            blk = labels[a:a + _STATS_ROWS]
            pos += (blk == 1).sum(0)
            known += (blk >= 0).sum(0)
        return pos, known

    def prevalence(self, split: str) -> np.ndarray:
        """Fraction of positives among known labels, per task (NaN if a task has none known)."""
        pos, known = self._counts(split)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(known > 0, pos / np.maximum(known, 1), np.nan)

    def unknown_fraction(self, split: str) -> np.ndarray:
        _, known = self._counts(split)
        return 1.0 - known / self.n(split)

    def select_tasks(self, tasks) -> "Store":
        """A store with only `tasks` (names or indices, in the given order); codes are shared."""
        if tasks is None:
            return self
        if isinstance(tasks, (str, int, np.integer)):
            tasks = [tasks]
        tasks = list(tasks)
        if not tasks:
            raise DataError("select_tasks: empty task list; allowed: task names or indices, or None for all")
        T = self.n_tasks
        index = {name: i for i, name in enumerate(self.task_names)}
        idx = []
        for t in tasks:
            if isinstance(t, str):
                if t not in index:
                    near = ", ".join(self.task_names[:8]) + (", ..." if T > 8 else "")
                    raise DataError(f"select_tasks: unknown task {t!r}; allowed: {near}")
                idx.append(index[t])
            elif isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)):
                if not 0 <= int(t) < T:
                    raise DataError(f"select_tasks: task index {int(t)} out of range; allowed: 0..{T - 1}")
                idx.append(int(t))
            else:
                raise DataError(f"select_tasks: task {t!r}; allowed: a task name or an index 0..{T - 1}")
        if len(set(idx)) != len(idx):
            dup = next(i for i in idx if idx.count(i) > 1)
            raise DataError(f"select_tasks: task {self.task_names[dup]!r} selected twice; "
                            "each task may appear once")
        if idx == list(range(T)):
            return self
        cols = np.asarray(idx)
        splits = {s: SplitArrays(sp.codes, np.ascontiguousarray(sp.labels[:, cols]), sp.tracks, sp.headers)
                  for s, sp in self.splits.items()}
        return Store([self.task_names[i] for i in idx], self.track_names, self.seq_len,
                     self.fingerprint, splits, self.track_info)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={sp.n}" for s, sp in self.splits.items())
        return (f"Store({sizes}, L={self.seq_len}, T={self.n_tasks}, tracks={len(self.track_names)}, "
                f"fingerprint={self.fingerprint[:12]})")


# ----------------------------------------------------------------------------- batching


def batches(split, batch_size: int, *, shuffle: bool, rng: np.random.Generator | None = None,
            drop_last: bool = False) -> Iterator[np.ndarray]:
    """Index arrays covering the split once (an epoch); a seeded `rng` makes the order reproducible."""
    n = split if isinstance(split, (int, np.integer)) else split.n
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"batch_size {batch_size!r}; allowed: a positive integer")
    if shuffle:
        order = (rng if rng is not None else np.random.default_rng()).permutation(n)
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n

    def gen():
        for a in range(0, stop, batch_size):
            yield order[a:a + batch_size]
    return gen()


_LUT_T: dict[tuple, torch.Tensor] = {}
_LUT_T_NP: dict[np.dtype, np.ndarray] = {}
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _expand(codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes_to_onehot's values [B, 4, L] (a view; not contiguous), several times faster.

    One index_select on the transposed table [4, 5] writes each channel's B*L values
    contiguously, where codes_to_onehot gathers 4-vectors; the table is taken from
    codes_to_onehot itself, so the two cannot disagree.
    """
    key = (codes.device, dtype)
    lut_t = _LUT_T.get(key)
    if lut_t is None:
        probe = torch.arange(5, dtype=torch.uint8, device=codes.device)[None]
        lut_t = _LUT_T[key] = codes_to_onehot(probe, dtype)[0].contiguous()
    B, L = codes.shape
    return lut_t.index_select(1, codes.reshape(-1).int()).view(4, B, L).permute(1, 0, 2)


def _expand_np(codes: np.ndarray, tracks: np.ndarray | None, dtype) -> np.ndarray:
    """[B, 4 + C, L] in one allocation, for the CPU: the torch path pays for its temporaries
    (page faults when glibc trims them) and for intra-op thread hand-offs on a busy machine."""
    dtype = np.dtype(dtype)
    lut_t = _LUT_T_NP.get(dtype)
    if lut_t is None:
        lut_t = _LUT_T_NP[dtype] = np.ascontiguousarray(
            codes_to_onehot_np(np.arange(5, dtype=np.uint8)[None], dtype)[0])
    B, L = codes.shape
    C = 0 if tracks is None else tracks.shape[1]
    out = np.empty((B, 4 + C, L), dtype=dtype)
    for ch in range(4):
        # codes are checked to be 0-4, so "clip" never clips; it lets numpy write `out` unbuffered
        np.take(lut_t[ch], codes, out=out[:, ch, :], mode="clip")
    if C:
        out[:, 4:, :] = tracks
    return out


def to_device(split: SplitArrays, idx, device, dtype: torch.dtype = torch.float32):
    """(x [B, 4+C, L], y [B, T] with unknown -> 0, mask bool [B, T]) on `device`.

    Only uint8 codes and int8 labels cross to the device; one-hot is expanded there
    (on the CPU with numpy, elsewhere with torch); x is contiguous.
    """
    idx = np.asarray(idx)
    if idx.ndim != 1:
        raise DataError(f"to_device: index array has shape {idx.shape}; allowed: 1-d")
    device = torch.device(device)
    codes = split.codes[idx]
    tracks = split.tracks[idx] if split.tracks is not None else None
    if device.type == "cpu" and dtype in _NP_DTYPES:
        x = torch.from_numpy(_expand_np(codes, tracks, _NP_DTYPES[dtype]))
        labels = torch.from_numpy(split.labels[idx])
    else:
        # Pinned host pages let the copies overlap the previous step's kernels (non_blocking
        # is a plain synchronous copy from pageable memory).
        pin = device.type == "cuda"

        def host(a: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(a)
            return t.pin_memory() if pin else t
        x = _expand(host(codes).to(device, non_blocking=True), dtype)
        if tracks is not None:
            x = torch.cat([x, host(tracks).to(device, non_blocking=True).to(dtype)], dim=1)
        else:
            x = x.contiguous()
        labels = host(split.labels[idx]).to(device, non_blocking=True)
    mask = labels >= 0
    y = labels.clamp(min=0).to(dtype)
    return x, y, mask


# ----------------------------------------------------------------------------- conversion


def basset_to_store(h5_path, store_path, chunk: int = DEFAULT_CHUNK, overwrite: bool = False,
                    label_map: dict | None = None) -> StoreInfo:
    """Stream a Basset HDF5 file into a store file; memory is O(chunk), not O(file)."""
    store_path = check_writable(store_path, overwrite)
    if os.path.exists(store_path) and os.path.exists(h5_path) and os.path.samefile(store_path, h5_path):
        raise DataError(f"{store_path}: output is the input file; give another path")
    with BassetReader(h5_path, label_map=label_map) as r:
        sizes = {s: (r.n(s), r.headers(s)) for s in r.splits}
        with atomic_h5_file(store_path, overwrite) as f:
            w = _StoreWriter(f, r.task_names, r.track_names, r.seq_len, sizes, track_info=r.track_info)
            fingerprint = _stream_into(r, w.sinks, chunk)
            w.finish(fingerprint)
        return StoreInfo(store_path, list(r.task_names), list(r.track_names), r.seq_len, fingerprint,
                         {s: r.n(s) for s in r.splits})


def open_dataset(path, label_map: dict | None = None, chunk: int = DEFAULT_CHUNK) -> Store:
    """A Store from a store file, or from a Basset HDF5 file converted in memory (nothing written)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            is_store = f.attrs.get("format") is not None
            is_basset = _looks_like_basset(f)
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
    if not (is_store or is_basset):
        raise DataError(f"{path}: neither an mtlsweep store (attribute 'format') nor a Basset HDF5 "
                        "file (keys target_labels, train_in, train_out, ...)")
    if is_store:
        return Store.load(path)
    with BassetReader(path, label_map=label_map) as r:
        L, T, C = r.seq_len, r.n_tasks, len(r.track_names)
        arrays = {s: SplitArrays(np.empty((r.n(s), L), np.uint8), np.empty((r.n(s), T), np.int8),
                                 np.empty((r.n(s), C, L), np.float16) if C else None, r.headers(s))
                  for s in r.splits}
        sinks = {s: (sp.codes, sp.labels, sp.tracks) for s, sp in arrays.items()}
        fingerprint = _stream_into(r, sinks, chunk)
        return Store(r.task_names, r.track_names, L, fingerprint, arrays, r.track_info)
