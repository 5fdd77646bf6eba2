"""The classical baseline family: known motifs scored along the sequence + gradient-boosted trees.

One fit trains one model per task (or, with multi_output and xgboost, one vector-leaf model for
all tasks) on data.motif_features tables, stopping early on the validation split, and predicts
every split; training/reference_runner.py turns a fit into a run like a CNN's. The models (xgboost
JSON or joblib) and the motif set go to ``run_dir/gbm/``; ``GbmModel.load(run_dir)`` predicts
from codes again.

Backends: ``sklearn`` (HistGradientBoostingClassifier; the default: as fast per thread as
xgboost on the synthetic benchmark) and ``xgboost`` (a required dependency, ``xgboost-cpu``:
a 5.6 MB CPU-only wheel; needed for multi_output).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import joblib
import numpy as np
import xgboost as xgb
from sklearn.ensemble import HistGradientBoostingClassifier
from tqdm.auto import tqdm

from mtlsweep.config.run import GbmConfig
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import Motif, load_motifs, read_motif_file
from mtlsweep.data.motif_features import (
    FeatureOptions,
    MotifScanner,
    cache_stats,
    compute_features,
    feature_table,
    select_motifs,
    track_summary,
)
from mtlsweep.models.threads import limited_threads

MODEL_DIR = "gbm"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def feature_options(gbm: GbmConfig) -> FeatureOptions:
    return FeatureOptions(tuple(gbm.features), gbm.hit_threshold, gbm.n_bins, gbm.kmer_k)


# ----------------------------------------------------------------------------- backends


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class _SklearnTask:
    kind = "sklearn"
    suffix = ".joblib"
    stopped = False          # early stopping ended the fit before n_estimators (set by fit)

    def __init__(self, est):
        self.est = est

    @classmethod
    def fit(cls, gbm: GbmConfig, seed: int, X, y, Xv, yv) -> "_SklearnTask":
        stop = gbm.early_stopping_rounds is not None and Xv is not None
        est = HistGradientBoostingClassifier(
            learning_rate=gbm.learning_rate, max_iter=gbm.n_estimators, max_depth=gbm.max_depth,
            max_leaf_nodes=None,  # depth alone bounds the tree, as in xgboost
            early_stopping=stop, n_iter_no_change=gbm.early_stopping_rounds or 10, scoring="loss",
            random_state=seed)
        if stop:
            est.fit(X, y, X_val=Xv, y_val=yv)
        else:
            est.fit(X, y)
        out = cls(est)
        out.stopped = stop and est.n_iter_ < gbm.n_estimators
        return out

    @property
    def rounds(self) -> int:
        return int(self.est.n_iter_)

    def n_nodes(self) -> int:
        preds = getattr(self.est, "_predictors", None)
        return int(sum(p.nodes.shape[0] for it in preds for p in it)) if preds is not None else 0

    def predict(self, X) -> np.ndarray:
        return self.est.predict_proba(X)[:, 1].astype(np.float32)

    def save(self, path: Path) -> None:
        joblib.dump(self.est, path)

    @classmethod
    def load(cls, path: Path) -> "_SklearnTask":
        return cls(joblib.load(path))


class _XgbModel:
    """One xgboost booster: a per-task binary model, or a vector-leaf model for all tasks."""

    kind = "xgboost"
    suffix = ".json"
    stopped = False

    def __init__(self, booster):
        self.booster = booster

    @staticmethod
    def params(gbm: GbmConfig, seed: int) -> dict:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "max_depth": gbm.max_depth, "eta": gbm.learning_rate, "seed": seed,
                "nthread": gbm.n_jobs or 0, "verbosity": 0}

    @classmethod
    def fit(cls, gbm: GbmConfig, seed: int, X, y, Xv, yv) -> "_XgbModel":
        # QuantileDMatrix bins once and keeps only the bins: ~4x less memory than a DMatrix copy.
        dtrain = xgb.QuantileDMatrix(X, label=y, nthread=gbm.n_jobs or 0)
        kw = {}
        if Xv is not None:
            kw["evals"] = [(xgb.QuantileDMatrix(Xv, label=yv, ref=dtrain, nthread=gbm.n_jobs or 0), "valid")]
            if gbm.early_stopping_rounds is not None:
                kw["early_stopping_rounds"] = gbm.early_stopping_rounds
        booster = xgb.train(cls.params(gbm, seed), dtrain, num_boost_round=gbm.n_estimators,
                            verbose_eval=False, **kw)
        return cls.stopping(booster, gbm)

    @classmethod
    def fit_multi(cls, gbm: GbmConfig, seed: int, X, Y, Xv, Yv, active: np.ndarray) -> "_XgbModel":
        """Masked BCE over all tasks: an unknown label (or a skipped task) gets zero gradient and
        zero hessian, so it takes no part in the splits or the leaf values."""

        mask = (Y >= 0) & active[None, :]
        target = np.where(mask, Y, 0).astype(np.float32)
        dtrain = xgb.QuantileDMatrix(X, label=target, nthread=gbm.n_jobs or 0)

        def objective(margin, _dtrain):
            p = _sigmoid(margin.reshape(mask.shape))
            return (p - target) * mask, np.maximum(p * (1 - p), 1e-16) * mask

        params = cls.params(gbm, seed)
        params.pop("objective")
        params.pop("eval_metric")
        params.update({"multi_strategy": "multi_output_tree", "num_target": Y.shape[1],
                       "disable_default_eval_metric": 1})
        kw = {}
        if Xv is not None:
            vmask = (Yv >= 0) & active[None, :]

            def metric(margin, _d):
                p = np.clip(_sigmoid(margin.reshape(vmask.shape)), 1e-7, 1 - 1e-7)
                y = Yv == 1
                bce = -np.where(y, np.log(p), np.log(1 - p))
                return "masked_logloss", float((bce * vmask).sum() / max(vmask.sum(), 1))

            kw["evals"] = [(xgb.QuantileDMatrix(Xv, label=np.where(vmask, Yv, 0).astype(np.float32),
                                                ref=dtrain, nthread=gbm.n_jobs or 0), "valid")]
            kw["custom_metric"] = metric
            if gbm.early_stopping_rounds is not None:
                kw["early_stopping_rounds"] = gbm.early_stopping_rounds
        booster = xgb.train(params, dtrain, num_boost_round=gbm.n_estimators, obj=objective,
                            verbose_eval=False, **kw)
        return cls.stopping(booster, gbm)

    @classmethod
    def stopping(cls, booster, gbm: GbmConfig) -> "_XgbModel":
        """The booster cut at its best round; ``stopped``: early stopping ended it before the cap."""
        out = cls(_best(booster))
        out.stopped = gbm.early_stopping_rounds is not None and booster.num_boosted_rounds() < gbm.n_estimators
        return out

    @property
    def rounds(self) -> int:
        return int(self.booster.num_boosted_rounds())

    def n_nodes(self) -> int:
        model = json.loads(self.booster.save_raw("json"))
        trees = model["learner"]["gradient_booster"]["model"]["trees"]
        return int(sum(int(t["tree_param"]["num_nodes"]) for t in trees))

    def margin(self, X) -> np.ndarray:
        return self.booster.inplace_predict(X, predict_type="margin")

    def predict(self, X) -> np.ndarray:
        return _sigmoid(self.margin(X)).astype(np.float32)

    def save(self, path: Path) -> None:
        self.booster.save_model(str(path))

    @classmethod
    def load(cls, path: Path) -> "_XgbModel":
        b = xgb.Booster()
        b.load_model(str(path))
        return cls(b)


def _best(booster):
    """The booster cut at its best validation round (early stopping keeps the rounds after it)."""
    best = getattr(booster, "best_iteration", None)
    if best is None or best + 1 >= booster.num_boosted_rounds():
        return booster
    return booster[: best + 1]


# ----------------------------------------------------------------------------- motifs and features


def load_motif_set(gbm: GbmConfig) -> list[Motif]:
    if gbm.motif_file:
        motifs = read_motif_file(gbm.motif_file)
    else:
        motifs = load_motifs(gbm.motif_collection, gbm.motif_tax_group, gbm.motif_release)
    return select_motifs(motifs, gbm.max_motifs)


def motif_source(gbm: GbmConfig) -> str:
    if gbm.motif_file:
        return f"file:{gbm.motif_file}"
    return f"jaspar:{gbm.motif_release or 'latest'}/{gbm.motif_collection}/{gbm.motif_tax_group}"


def _save_motifs(path: Path, motifs: Sequence[Motif]) -> None:
    widths = np.array([m.width for m in motifs], dtype=np.int64)
    pfms = np.concatenate([np.asarray(m.pfm, dtype=np.float64) for m in motifs], axis=1)
    _atomic(path, lambda fh: np.savez(fh, ids=np.array([m.matrix_id for m in motifs]),
                                      names=np.array([m.name for m in motifs]), widths=widths, pfms=pfms))


def _load_motifs(path: Path) -> list[Motif]:
    with np.load(path, allow_pickle=False) as z:
        ids, names, widths, pfms = z["ids"], z["names"], z["widths"], z["pfms"]
    edges = np.concatenate([[0], np.cumsum(widths)])
    return [Motif(str(i), str(n), pfms[:, a:b]) for i, n, a, b in zip(ids, names, edges[:-1], edges[1:])]


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- fitting


@dataclass
class GbmFit:
    """Everything one fit produced; training.reference_runner turns it into a RunResult."""
    task_names: list[str]
    backend: str
    feature_names: list[str]
    models: dict[int, Any]                 # task index -> model (per-task mode)
    multi: Optional[Any]                   # the one model (multi_output mode)
    skipped: list[int]                     # tasks with one class (or none) among known train labels
    rounds: dict[int, int]
    stopped: dict[int, bool]               # task -> early stopping ended its fit before the round cap
    probs: dict[str, np.ndarray]           # split -> [N, T] (0.5 in skipped columns)
    timings: dict[str, float]
    n_nodes: int
    flops_per_sample: int
    n_motifs: int
    features_cached: bool
    motifs: list[Motif] = field(default_factory=list)
    gbm: Optional[GbmConfig] = None

    # What training.reference_runner reads of every reference family's fit.
    @property
    def n_params(self) -> int:
        return self.n_nodes

    def tuned(self) -> dict[str, dict]:
        return {}                          # nothing tuned inside a fit: early stopping sets the rounds

    def metrics(self) -> dict[str, float]:
        return {"cost/features_cached": float(self.features_cached),
                "gbm/n_features": float(len(self.feature_names)), "gbm/n_motifs": float(self.n_motifs),
                "gbm/tasks_skipped": float(len(self.skipped)),
                "gbm/rounds_mean": float(np.mean(list(self.rounds.values()))) if self.rounds else float("nan")}

    def info(self) -> dict:
        return {"backend": self.backend, "n_features": len(self.feature_names), "n_motifs": self.n_motifs}

    def convergence_terms(self) -> tuple[str, str]:
        return ("early stopping ended the boosting before gbm.n_estimators",
                "raise gbm.n_estimators (or set gbm.early_stopping_rounds)")

    def save(self, run_dir: Path) -> Path:
        return save_models(self, self.gbm, run_dir)


# ----------------------------------------------------------------------------- fitting


def _trainable(labels: np.ndarray) -> np.ndarray:
    return ((labels == 1).sum(0) > 0) & ((labels == 0).sum(0) > 0)


def fit_gbm(gbm: GbmConfig, store, *, seed: int = 0, motifs: Optional[Sequence[Motif]] = None,
            data_path: str = "store", progress: bool = False, tracks: Sequence[str] = ()) -> GbmFit:
    """Features for train/valid(/test), one model per task (or one for all), predictions.

    Unknown labels (-1) are left out of each task's fit and early stopping; a task with a single
    class among its known train labels is skipped (its predictions are 0.5).
    """
    backend = gbm.backend
    for split in ("train", "valid"):
        if split not in store.splits or store.n(split) == 0:
            raise DataError(f"{data_path}: the {split} split is empty; training needs train and valid")
    options = feature_options(gbm)
    if options.uses_motifs:
        motifs = list(motifs) if motifs is not None else load_motif_set(gbm)
        scanner = MotifScanner(motifs, options.pseudocount)
        scanner.check_length(store.seq_len)
    else:
        motifs, scanner = [], None
    T = store.n_tasks
    train_labels = store.split("train").labels
    active = _trainable(train_labels)
    if not active.any():
        raise DataError(f"{data_path}: no task has both positives and negatives among its known train "
                        "labels; nothing to fit")
    skipped = [int(t) for t in np.flatnonzero(~active)]
    splits = [s for s in ("train", "valid", "test") if s in store.splits and store.n(s) > 0]

    timings: dict[str, float] = {}
    X: dict[str, np.ndarray] = {}
    names: list[str] = []
    before = _cache_counts()
    with limited_threads(gbm.n_jobs):
        for s in splits:
            t0 = time.perf_counter()
            X[s], names = feature_table(store, s, scanner, options, cache_dir=gbm.cache_dir, progress=progress)
            if tracks:
                X[s], names = _with_tracks(X[s], names, store.split(s).tracks, store.track_names, tracks, gbm.n_bins)
            timings[f"features_{s}_s"] = time.perf_counter() - t0
        cached = _cache_counts()[0] == before[0]

        Y = {s: store.split(s).labels for s in splits}
        models: dict[int, Any] = {}
        multi = None
        rounds: dict[int, int] = {}
        stopped: dict[int, bool] = {}
        t0 = time.perf_counter()
        if gbm.multi_output:
            multi = _XgbModel.fit_multi(gbm, seed, X["train"], Y["train"], X["valid"], Y["valid"], active)
            rounds = {t: multi.rounds for t in range(T) if active[t]}
            stopped = {t: multi.stopped for t in rounds}
        else:
            cls = _XgbModel if backend == "xgboost" else _SklearnTask
            tasks = [t for t in range(T) if active[t]]
            it = tasks
            if progress:
                it = tqdm(tasks, desc="boosting", unit="task", leave=False, disable=None)
            for t in it:
                known = Y["train"][:, t] >= 0
                vknown = Y["valid"][:, t] >= 0
                Xt = X["train"] if known.all() else X["train"][known]
                Xv = (X["valid"] if vknown.all() else X["valid"][vknown]) if vknown.any() else None
                yv = Y["valid"][vknown, t] if vknown.any() else None
                models[t] = cls.fit(gbm, seed, Xt, Y["train"][known, t], Xv, yv)
                rounds[t] = models[t].rounds
                stopped[t] = models[t].stopped
        timings["fit_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        probs: dict[str, np.ndarray] = {}
        for s in splits:
            p = np.full((store.n(s), T), 0.5, dtype=np.float32)
            if multi is not None:
                p[:, active] = multi.predict(X[s]).reshape(store.n(s), T)[:, active]
            for t, m in models.items():
                p[:, t] = m.predict(X[s])
            probs[s] = p
        timings["predict_s"] = time.perf_counter() - t0
    n_nodes = multi.n_nodes() if multi is not None else sum(m.n_nodes() for m in models.values())
    flops = 2 * scanner.macs_per_sample(store.seq_len) if scanner is not None else 0
    return GbmFit(list(store.task_names), backend, names, models, multi, skipped, rounds, stopped, probs,
                  timings, n_nodes, flops, len(motifs), cached, list(motifs), gbm)


def _with_tracks(X: np.ndarray, names: list[str], values: np.ndarray, store_tracks: Sequence[str],
                 tracks: Sequence[str], n_bins: int) -> tuple[np.ndarray, list[str]]:
    idx = [list(store_tracks).index(t) for t in tracks]
    T, tnames = track_summary(values[:, idx], tracks, n_bins)
    return np.concatenate([X, T], axis=1), list(names) + tnames


def _cache_counts() -> tuple[int, int]:
    return cache_stats.computed, cache_stats.loaded


def save_models(fit: GbmFit, gbm: GbmConfig, run_dir: Path) -> Path:
    """run_dir/gbm/: manifest.json, the models, motifs.npz; written atomically file by file."""
    d = Path(run_dir) / MODEL_DIR
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Optional[str]] = {}

    def save(model, fname: str) -> str:
        # The libraries write in place; a same-directory temp file (keeping the suffix, which
        # selects xgboost's format) + rename makes it atomic.
        tmp = d / f".{fname}.{os.getpid()}.tmp{model.suffix}"
        try:
            model.save(tmp)
            os.replace(tmp, d / fname)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return fname

    if fit.multi is not None:
        fname = save(fit.multi, "multi_output" + fit.multi.suffix)
        files = {n: (fname if i not in fit.skipped else None) for i, n in enumerate(fit.task_names)}
    else:
        for i, name in enumerate(fit.task_names):
            m = fit.models.get(i)
            files[name] = save(m, f"task_{i:04d}{m.suffix}") if m is not None else None
    if fit.motifs:
        _save_motifs(d / "motifs.npz", fit.motifs)
    manifest = {
        "format_version": FORMAT_VERSION, "backend": fit.backend, "multi_output": fit.multi is not None,
        "task_names": fit.task_names, "models": files,
        "skipped_tasks": [fit.task_names[i] for i in fit.skipped],
        "rounds": {fit.task_names[i]: r for i, r in fit.rounds.items()},
        "feature_options": feature_options(gbm).key(),
        "feature_names": fit.feature_names, "motif_source": motif_source(gbm), "n_motifs": fit.n_motifs,
        "tracks": [n.split(":")[1] for n in fit.feature_names if n.startswith("track:") and n.endswith(":mean")],
        "gbm": gbm.model_dump(mode="json"),
    }
    _atomic(d / MANIFEST, lambda fh: fh.write(json.dumps(manifest, indent=1).encode()))
    return d


class GbmModel:
    """A saved run's models: predict_proba(codes [N, L]) -> [N, T] (NaN for skipped tasks)."""

    def __init__(self, manifest: dict, models: dict[int, Any], multi, motifs: list[Motif]):
        self.manifest = manifest
        self.task_names: list[str] = manifest["task_names"]
        self.models = models
        self.multi = multi
        self.motifs = motifs
        g = manifest["gbm"]
        self.options = FeatureOptions(tuple(g["features"]), g["hit_threshold"], g["n_bins"], g["kmer_k"])
        self.scanner = MotifScanner(motifs, self.options.pseudocount) if motifs else None

    @classmethod
    def load(cls, run_dir) -> "GbmModel":
        d = Path(run_dir) / MODEL_DIR
        path = d / MANIFEST
        if not path.is_file():
            raise DataError(f"{path}: no such file; not a motif_gbm run directory")
        manifest = json.loads(path.read_text())
        kind = _XgbModel if manifest["backend"] == "xgboost" else _SklearnTask
        multi, models = None, {}
        if manifest["multi_output"]:
            fname = next(f for f in manifest["models"].values() if f)
            multi = kind.load(d / fname)
        else:
            for i, name in enumerate(manifest["task_names"]):
                fname = manifest["models"].get(name)
                if fname:
                    models[i] = kind.load(d / fname)
        motifs = _load_motifs(d / "motifs.npz") if (d / "motifs.npz").is_file() else []
        return cls(manifest, models, multi, motifs)

    def features(self, codes: np.ndarray, tracks: Optional[np.ndarray] = None) -> np.ndarray:
        """`tracks` [N, C, L]: the run's tracks (manifest "tracks"), in that order."""
        X = compute_features(np.asarray(codes), self.scanner, self.options)
        names = self.manifest.get("tracks") or []
        if names:
            if tracks is None or tracks.shape[1] != len(names):
                raise DataError(f"this motif_gbm run reads tracks {', '.join(names)}; pass them as tracks [N, "
                                f"{len(names)}, L]")
            X = np.concatenate([X, track_summary(tracks, names, self.manifest["gbm"]["n_bins"])[0]], axis=1)
        return X

    def predict_proba(self, codes: np.ndarray, tracks: Optional[np.ndarray] = None) -> np.ndarray:
        X = self.features(codes, tracks)
        T = len(self.task_names)
        out = np.full((X.shape[0], T), np.nan, dtype=np.float32)
        skipped = set(self.manifest["skipped_tasks"])
        if self.multi is not None:
            p = self.multi.predict(X).reshape(X.shape[0], T)
            for i, n in enumerate(self.task_names):
                if n not in skipped:
                    out[:, i] = p[:, i]
        for i, m in self.models.items():
            out[:, i] = m.predict(X)
        return out
