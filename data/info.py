"""`mtlsweep data info FILE`: sizes, tasks, prevalence and layout of a Basset file or a store.

Only labels are read in full (chunk by chunk); sequences are not loaded, so this is quick on
the 2M-sequence compendium.
"""
from __future__ import annotations

import math
import os

import h5py
import numpy as np

from mtlsweep.data.basset_hdf5 import DEFAULT_CHUNK, BassetReader, open_h5
from mtlsweep.data.errors import DataError
from mtlsweep.data.store import read_store_meta

_FULL_TABLE_MAX = 20
_HEAD_ROWS = 10


def _label_stats(chunks, n: int, n_tasks: int) -> dict:
    pos = np.zeros(n_tasks, dtype=np.int64)
    known = np.zeros(n_tasks, dtype=np.int64)
    for labels in chunks:
        pos += (labels == 1).sum(0)
        known += (labels >= 0).sum(0)
    prevalence = [float(p / k) if k else None for p, k in zip(pos, known)]
    return {"n": int(n), "positives": pos.tolist(), "known": known.tolist(),
            "prevalence": prevalence, "unknown_fraction": (1.0 - known / n).tolist()}


def _describe_basset(path: str, label_map) -> dict:
    with BassetReader(path, label_map=label_map) as r:
        splits = {}
        for s in r.splits:
            splits[s] = _label_stats(r.iter_labels(s), r.n(s), r.n_tasks)
            splits[s]["headers"] = r.headers(s) is not None
        C = len(r.track_names)
        return {"path": path, "kind": "basset", "layout": r.layout, "input_dtype": str(r.dtype),
                "format_version": None, "fingerprint": None, "seq_len": r.seq_len,
                "n_tasks": r.n_tasks, "task_names": list(r.task_names),
                "track_names": list(r.track_names), "track_info": list(r.track_info), "splits": splits,
                "store_bytes": sum(r.n(s) * (r.seq_len + r.n_tasks + 2 * C * r.seq_len) for s in r.splits),
                "onehot_float16_bytes": sum(r.n(s) * (8 * r.seq_len + r.n_tasks + 2 * C * r.seq_len)
                                            for s in r.splits)}


def _describe_store(path: str, f: h5py.File) -> dict:
    meta = read_store_meta(f, path)
    T, L, C = len(meta["task_names"]), meta["seq_len"], len(meta["track_names"])
    splits = {}
    for s in meta["splits"]:
        g = f[s]
        if "labels" not in g or g["labels"].ndim != 2 or g["labels"].shape[1] != T:
            raise DataError(f"{path}: key '{s}/labels' missing or not N x {T}; the store is damaged")
        ds = g["labels"]
        n = ds.shape[0]
        splits[s] = _label_stats((ds[a:a + DEFAULT_CHUNK] for a in range(0, n, DEFAULT_CHUNK)), n, T)
        splits[s]["headers"] = "headers" in g
    total = sum(v["n"] for v in splits.values())
    return {"path": path, "kind": "store", "layout": "store", "input_dtype": "uint8 codes",
            "format_version": meta["format_version"], "fingerprint": meta["fingerprint"],
            "seq_len": L, "n_tasks": T, "task_names": meta["task_names"],
            "track_names": meta["track_names"], "track_info": meta["track_info"], "splits": splits,
            "store_bytes": total * (L + T + 2 * C * L),
            "onehot_float16_bytes": total * (8 * L + T + 2 * C * L)}


def describe(path, label_map: dict | None = None) -> dict:
    """Plain-Python summary (JSON-ready; prevalence is None for a task with no known label)."""
    path = os.fspath(path)
    if os.path.isdir(path):        # what `data synth`/`data build --out DIR` wrote: its one data file
        inside = [n for n in os.listdir(path) if n.endswith((".h5", ".hdf5"))]
        if "store.h5" in inside or len(inside) == 1:
            path = os.path.join(path, "store.h5" if "store.h5" in inside else inside[0])
    with open_h5(path) as f:
        if f.attrs.get("format") is not None:
            return _describe_store(path, f)
    return _describe_basset(path, label_map)


def _pct(v) -> str:
    return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}%"


def _mb(b: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:,.1f} {unit}"
    return f"{b} B"


def _summary(values) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    return f"min {_pct(min(vals)).strip()}  median {_pct(float(np.median(vals))).strip()}  " \
           f"max {_pct(max(vals)).strip()}"


def format_info(info: dict) -> str:
    """A compact human-readable table of `describe`'s output."""
    lines = [f"file:      {info['path']}"]
    if info["kind"] == "store":
        lines.append(f"kind:      mtlsweep store v{info['format_version']}, "
                     f"fingerprint {info['fingerprint'][:16]}")
    else:
        lines.append(f"kind:      Basset HDF5, layout {info['layout']}, {info['input_dtype']} one-hot")
    splits = info["splits"]
    total = sum(s["n"] for s in splits.values())
    tracks = ", ".join(info["track_names"]) if info["track_names"] else "none"
    lines.append(f"data:      {total:,} sequences x {info['seq_len']} bp, {info['n_tasks']} tasks, "
                 f"extra tracks: {tracks}")
    lines.append(f"RAM:       store {_mb(info['store_bytes'])} vs float16 one-hot "
                 f"{_mb(info['onehot_float16_bytes'])}")
    for t in info.get("track_info") or ():
        stats = ""
        if t.get("train_mean") is not None:
            stats = f", train mean {t['train_mean']:.4g} sd {t['train_std']:.4g} (before zscore)"
        lines.append(f"track:     {t.get('name')}: {t.get('format', '?')} {t.get('source', '?')}, "
                     f"transform {t.get('transform') or 'none'}, resolution {t.get('resolution', 1)} bp{stats}")
    lines.append("")
    lines.append(f"{'split':<6} {'sequences':>11} {'mean prev.':>10} {'mean unknown':>12}  headers")
    for name, s in splits.items():
        prev = [p for p in s["prevalence"] if p is not None]
        mean_prev = float(np.mean(prev)) if prev else None
        lines.append(f"{name:<6} {s['n']:>11,} {_pct(mean_prev):>10} "
                     f"{_pct(float(np.mean(s['unknown_fraction']))):>12}  "
                     f"{'yes' if s['headers'] else 'no'}")
    names = info["task_names"]
    T = len(names)
    lines.append("")
    any_unknown = any(u > 0 for s in splits.values() for u in s["unknown_fraction"])
    if T > _FULL_TABLE_MAX:
        for name, s in splits.items():
            lines.append(f"{name} prevalence over {T} tasks: {_summary(s['prevalence'])}")
            if any_unknown:
                lines.append(f"{name} unknown over {T} tasks:    {_summary(s['unknown_fraction'])}")
        lines.append("")
    width = max(4, min(24, max(len(n) for n in names)))
    head = f"{'#':>4}  {'task':<{width}}" + "".join(f" {s + ' prev':>11}" for s in splits)
    if any_unknown:
        head += "".join(f" {s + ' unk':>10}" for s in splits)
    lines.append(head)
    shown = T if T <= _FULL_TABLE_MAX else _HEAD_ROWS
    for t in range(shown):
        row = f"{t:>4}  {names[t][:width]:<{width}}"
        row += "".join(f" {_pct(s['prevalence'][t]):>11}" for s in splits.values())
        if any_unknown:
            row += "".join(f" {_pct(s['unknown_fraction'][t]):>10}" for s in splits.values())
        lines.append(row)
    if shown < T:
        lines.append(f"      ... ({T - shown} more tasks; first {shown} of {T} shown)")
    return "\n".join(lines)
