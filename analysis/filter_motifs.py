"""`mtlsweep motifs RUN`: which known motifs the first-layer filters learned.

1. Filter -> position frequency matrix (Basset, Kelley et al. 2016): on a probe set, every
   subsequence where the filter's activation (conv -> BatchNorm -> ReLU, eval mode, before
   pooling) exceeds ``threshold`` × its maximum over the probe is counted into a PFM.
2. PFM -> JASPAR (offline, data.jaspar): a Tomtom-like comparison. Columns are compared by
   Pearson correlation; an alignment scores the sum over its aligned columns; the score of a
   motif is the best over offsets with at least ``min_overlap`` aligned columns and both
   strands. Low-information edge columns of the filter PFM are trimmed first.
3. Significance from a shuffled-column null: the filter's columns are permuted
   ``n_shuffles`` times (all motifs scored at once per permutation, vectorized). A target's
   p-value compares its score with the shuffled queries' scores against the same target; the
   filter's p-value compares its best score over the whole database with the shuffled
   queries' best scores over the whole database, which accounts for searching ~1000 motifs.
   A filter matches a known motif when that database-wide p-value is below ``alpha``.

On the synthetic benchmark (data/synthetic.py, truth.json) the planted activating motifs are
"recovered" when one of them is among the top ``top_k`` significant matches of a significant
filter.

Why not memelite's Tomtom (exact p-values): measured by ``python bench/filter_matching.py``
(memelite 0.5.0) on a filter seeded with GATA1 (MA0035.5) and seven Kaiming-random filters
against JASPAR 2026 CORE vertebrates: both put MA0035.5 first for the seeded filter, but Tomtom
calls six of the seven random filters significant (E 1.7e-6 to 4e-3, matching long CTCF-family
matrices, whose many alignments its per-target p-values do not account for), where this
column-shuffled null gives them database-wide p 0.31-0.90 (and the seeded filter 0.005). Its
numba kernels also cost ~42 s of compilation on a machine's first call (cached afterwards).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.font_manager import FontProperties
from matplotlib.patches import PathPatch
from matplotlib.textpath import TextPath
from matplotlib.transforms import Affine2D

from mtlsweep.analysis.similarity import load_probe, load_run
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import ALPHABET, Motif, information_content, load_motifs, read_motif_file
from mtlsweep.data.onehot import reverse_complement
from mtlsweep.data.task_keys import sanitize_names
from mtlsweep.models.layers import BN_EPS
from mtlsweep.plots import save_figure, subplots

COLORS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


# ---- filters -> PFMs ------------------------------------------------------------------------
def first_layer_activation(model, x: torch.Tensor) -> torch.Tensor:
    """[B, filters, positions]: conv -> BatchNorm (running statistics) -> ReLU of the first
    layer, before pooling; filters of every stack (one for a shared layer, T for towers)."""

    layer = model.layers[model.layer_names[0]]
    s, c, cin, w = layer.weight.shape
    with torch.no_grad():
        z = F.conv1d(x, layer.weight.reshape(s * c, cin, w)) + layer.bias.reshape(-1, 1)
        bn = layer.bn
        h = F.batch_norm(z, bn.running_mean.reshape(-1), bn.running_var.reshape(-1),
                         bn.weight.reshape(-1), bn.bias.reshape(-1), False, 0.0, BN_EPS)
    return F.relu(h)


def filter_names(model) -> list[str]:
    layer = model.layers[model.layer_names[0]]
    s, c = layer.weight.shape[:2]
    if s == 1:
        return [f"f{i}" for i in range(c)]
    keys = sanitize_names(model.tasks)
    return [f"{keys[t]}/f{i}" for t in model.tasks for i in range(c)]


@dataclass
class FilterPFMs:
    names: list[str]
    counts: np.ndarray          # [F, 4, W] base counts over the filter's top-activating sites
    n_sites: np.ndarray         # [F]
    max_act: np.ndarray         # [F] maximum activation over the probe

    def pfm(self, i: int, pseudocount: float = 1.0) -> Optional[np.ndarray]:
        if self.n_sites[i] == 0:
            return None
        return (self.counts[i] + pseudocount / 4.0) / (self.n_sites[i] + pseudocount)


def filter_pfms(model, probe, batch: int = 256, device: str = "cpu", threshold: float = 0.5,
                columns: Optional[Sequence[int]] = None) -> FilterPFMs:
    """Two passes over the probe: each filter's maximum, then its sites above threshold × max.
    ``columns``: the probe's channels the model reads (LoadedRun.columns; default the first in_channels)."""
    if not 0.0 < threshold < 1.0:
        raise DataError(f"--threshold must be between 0 and 1 (a fraction of each filter's maximum), got {threshold}")
    width = model.layers[model.layer_names[0]].weight.shape[-1]
    cols = list(columns) if columns is not None else list(range(model.in_channels))
    model.eval()
    mx = None
    for x in probe.batches(batch, cols, device):
        m = first_layer_activation(model, x).amax(dim=(0, 2))
        mx = m if mx is None else torch.maximum(mx, m)
    n_f = mx.shape[0]
    cut = (threshold * mx).clamp(min=torch.finfo(mx.dtype).tiny)
    counts = np.zeros((n_f, 5, width), dtype=np.float64)        # row 4: N bases
    n_sites = np.zeros(n_f, dtype=np.int64)
    offsets = np.arange(width)
    start = 0
    for x in probe.batches(batch, cols, device):
        act = first_layer_activation(model, x)
        b, f, pos = torch.nonzero(act > cut[None, :, None], as_tuple=True)
        b, f, pos = b.cpu().numpy(), f.cpu().numpy(), pos.cpu().numpy()
        codes = probe.codes[start:start + x.shape[0]]
        start += x.shape[0]
        if not len(b):
            continue
        win = codes[b[:, None], pos[:, None] + offsets[None, :]].astype(np.int64)      # [sites, W]
        flat = (f[:, None] * 5 + win) * width + offsets[None, :]
        counts += np.bincount(flat.ravel(), minlength=n_f * 5 * width).reshape(n_f, 5, width)
        n_sites += np.bincount(f, minlength=n_f)
    acgt = counts[:, :4] + counts[:, 4:5] / 4.0      # an N is a quarter of each base
    return FilterPFMs(filter_names(model), acgt, n_sites, mx.cpu().numpy())


def trim(pfm: np.ndarray, min_ic: float) -> tuple[np.ndarray, int]:
    """Drop low-information columns at both edges; returns (trimmed, first kept column)."""
    ic = information_content(pfm)
    keep = np.flatnonzero(ic >= min_ic)
    if not keep.size:
        return pfm[:, :0], 0
    return pfm[:, keep[0]:keep[-1] + 1], int(keep[0])


# ---- the database and the comparison --------------------------------------------------------
def _standardize(cols: np.ndarray) -> np.ndarray:
    """[..., 4, W]: each column centered and scaled to unit norm, so that a dot product of two
    columns is their Pearson correlation; flat columns become 0 (they carry no signal)."""
    c = cols - cols.mean(axis=-2, keepdims=True)
    n = np.sqrt((c * c).sum(axis=-2, keepdims=True))
    return np.where(n > 1e-9, c / np.where(n > 1e-9, n, 1.0), 0.0)


class MotifDB:
    """Standardized columns of every motif on both strands, side by side, and for each query
    width the list of allowed alignments (motif, strand, shift) as column indices."""

    def __init__(self, motifs: Sequence[Motif]):
        if not motifs:
            raise DataError("motif database is empty")
        self.motifs = list(motifs)
        self.widths = np.array([m.width for m in motifs])
        parts, starts = [], []
        col = 0
        for mo in self.motifs:
            for pfm in (mo.pfm, reverse_complement(mo.pfm)):
                starts.append(col)
                parts.append(_standardize(pfm))
                col += mo.width
        parts.append(np.zeros((4, 1)))            # the column an unaligned query column meets
        self.cols = torch.from_numpy(np.concatenate(parts, axis=1)).float()
        self.zero = col
        self.starts = np.array(starts).reshape(-1, 2)   # [M, strand]
        self.index = {mo.matrix_id: k for k, mo in enumerate(motifs)}
        self._alignments: dict[tuple[int, int], "Alignments"] = {}

    def __len__(self) -> int:
        return len(self.motifs)

    def alignments(self, wq: int, min_overlap: int) -> "Alignments":
        key = (wq, min_overlap)
        if key not in self._alignments:
            self._alignments[key] = Alignments.build(self, wq, min_overlap)
        return self._alignments[key]


@dataclass
class Alignments:
    """All allowed placements of a query of width wq: ``cols[a, i]`` is the database column
    facing query column i in alignment a (the zero column when none). Alignments are grouped by
    motif: those of motif m are ``group_starts[m]:group_starts[m + 1]``."""
    cols: torch.Tensor          # [A, wq] int64
    motif: np.ndarray           # [A]
    strand: np.ndarray          # [A] 0 = +, 1 = -
    shift: np.ndarray           # [A] motif column facing query column 0
    group_starts: np.ndarray    # [M]

    @classmethod
    def build(cls, db: MotifDB, wq: int, min_overlap: int) -> "Alignments":
        i = np.arange(wq)
        cols, motif, strand, shift, starts = [], [], [], [], []
        n = 0
        for m, w in enumerate(db.widths):
            starts.append(n)
            need = min(min_overlap, wq, int(w))
            sh = np.arange(-(wq - 1), int(w))
            overlap = np.minimum(wq, int(w) - sh) - np.maximum(0, -sh)
            sh = sh[overlap >= need]
            pos = sh[:, None] + i[None, :]                       # motif column facing query column i
            inside = (pos >= 0) & (pos < w)
            for st in (0, 1):
                cols.append(np.where(inside, db.starts[m, st] + pos, db.zero))
                motif.append(np.full(len(sh), m)); strand.append(np.full(len(sh), st)); shift.append(sh)
                n += len(sh)
        return cls(torch.from_numpy(np.concatenate(cols)), np.concatenate(motif), np.concatenate(strand),
                   np.concatenate(shift), np.array(starts))


def compare(query: np.ndarray, db: MotifDB, n_shuffles: int = 200, min_overlap: int = 5,
            seed: int = 0):
    """Best alignment score per motif of ``query`` [4, Wq], and of ``n_shuffles`` random
    column permutations of it.

    A column permutation only reorders the rows of the query-by-database column correlation
    matrix, so every alignment's score under permutation P is <vec(P), vec(T_a)> with T_a the
    [Wq, Wq] correlations between the query columns and the columns alignment a faces: all
    permutations and all alignments are one matrix product.

    Returns (scores [M], best alignment per motif as (strand "+"/"-", shift), null [n_shuffles, M])."""
    wq = query.shape[1]
    al = db.alignments(wq, min_overlap)
    q = torch.from_numpy(_standardize(query)).float()                 # [4, Wq]
    s = q.T @ db.cols                                                 # [Wq(r), columns]
    t = s[:, al.cols].permute(1, 2, 0)                               # [A, Wq(i), Wq(r)]
    obs = torch.diagonal(t, dim1=1, dim2=2).sum(1).numpy()            # identity permutation
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_shuffles, wq)), axis=1)
    onehot = torch.zeros(n_shuffles, wq, wq)
    onehot[torch.arange(n_shuffles)[:, None], torch.arange(wq)[None, :], torch.from_numpy(perms)] = 1.0
    null = (onehot.reshape(n_shuffles, -1) @ t.reshape(t.shape[0], -1).T).numpy()   # [n_shuffles, A]
    scores = np.maximum.reduceat(obs, al.group_starts)
    null_best = np.maximum.reduceat(null, al.group_starts, axis=1)
    order = np.lexsort((-obs, al.motif))                             # best alignment first within a motif
    first = order[np.searchsorted(al.motif[order], np.arange(len(db)))]
    align = [("-" if al.strand[a] else "+", int(al.shift[a])) for a in first]
    return scores, align, null_best


@dataclass
class Match:
    matrix_id: str
    name: str
    score: float
    p: float                    # per-target shuffled-column p-value
    strand: str                 # "+" or "-" (the motif's reverse complement aligned)
    shift: int                  # motif column facing the trimmed filter's first column (may be < 0)


@dataclass
class FilterResult:
    name: str
    n_sites: int
    max_act: float
    ic: float                   # bits of the trimmed PFM
    pfm: Optional[np.ndarray]   # trimmed [4, W']
    p_db: float = math.nan      # database-wide shuffled-column p-value
    matches: list[Match] = field(default_factory=list)

    def significant(self, alpha: float) -> bool:
        return math.isfinite(self.p_db) and self.p_db < alpha


def match_filters(pfms: FilterPFMs, db: MotifDB, *, n_shuffles: int = 200, min_overlap: int = 5,
                  min_ic: float = 0.2, min_sites: int = 10, top_k: int = 3, seed: int = 0) -> list[FilterResult]:
    if n_shuffles < 1:
        raise DataError(f"--shuffles must be >= 1, got {n_shuffles}")
    out = []
    for i, name in enumerate(pfms.names):
        full = pfms.pfm(i)
        res = FilterResult(name, int(pfms.n_sites[i]), float(pfms.max_act[i]), 0.0, None)
        out.append(res)
        if full is None or pfms.n_sites[i] < min_sites:
            continue
        core, _ = trim(full, min_ic)
        res.pfm = core
        res.ic = float(information_content(core).sum()) if core.shape[1] else 0.0
        if core.shape[1] < 2:
            continue
        scores, align, null = compare(core, db, n_shuffles, min_overlap, seed=seed + i)
        per_target = (1.0 + (null >= scores[None, :]).sum(0)) / (1.0 + n_shuffles)
        res.p_db = float((1.0 + (null.max(1) >= scores.max()).sum()) / (1.0 + n_shuffles))
        for k in np.argsort(-scores, kind="stable")[:top_k]:
            mo = db.motifs[k]
            res.matches.append(Match(mo.matrix_id, mo.name, float(scores[k]), float(per_target[k]),
                                     align[k][0], int(align[k][1])))
    return out


# ---- synthetic truth ------------------------------------------------------------------------
def read_truth(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such truth file (data synth writes truth.json next to store.h5)")
    try:
        truth = json.loads(p.read_text())
        _ = [m["matrix_id"] for t in truth["tasks"].values() for m in t["activating_motifs"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DataError(f"{p}: not a synthetic benchmark truth.json (tasks.<task>.activating_motifs)") from None
    return truth


def planted_recall(results: Sequence[FilterResult], truth: dict, alpha: float, top_k: int = 3) -> dict:
    planted = sorted({m["matrix_id"] for t in truth["tasks"].values() for m in t["activating_motifs"]})
    decoys = sorted({m["matrix_id"] for m in truth.get("decoys", [])})
    best: dict[str, tuple[float, str]] = {}
    for r in results:
        if not r.significant(alpha):
            continue
        for mt in r.matches[:top_k]:
            if mt.p < alpha and (mt.matrix_id not in best or mt.p < best[mt.matrix_id][0]):
                best[mt.matrix_id] = (mt.p, r.name)
    found = [m for m in planted if m in best]
    return {"planted": planted, "recovered": found, "missed": [m for m in planted if m not in best],
            "recall": len(found) / len(planted) if planted else math.nan,
            "filters": {m: best[m][1] for m in found},
            "decoys_matched": [m for m in decoys if m in best]}


def database_for(truth: Optional[dict], collection: str, tax_group: str, release: Optional[str]) -> list[Motif]:
    """The synthetic benchmark's own motif pool when a truth file is given, so ids line up."""
    if truth is not None:
        spec = truth.get("spec", {})
        if spec.get("motif_file"):
            return read_motif_file(spec["motif_file"])
        return load_motifs(spec.get("motif_collection", collection), spec.get("motif_tax_group", tax_group),
                           spec.get("motif_release", release))
    return load_motifs(collection, tax_group, release)


# ---- logos ----------------------------------------------------------------------------------
def draw_logo(ax, pfm: np.ndarray, x0: float = 0.0) -> None:
    """Letters stacked by information content (bits), the tallest on top."""
    font = FontProperties(family="DejaVu Sans", weight="bold")
    ic = information_content(pfm)
    for j in range(pfm.shape[1]):
        y = 0.0
        for b in np.argsort(pfm[:, j]):
            h = float(pfm[b, j] * ic[j])
            if h <= 1e-3:
                continue
            letter = ALPHABET[b]
            path = TextPath((0, 0), letter, size=1, prop=font)
            ext = path.get_extents()
            t = Affine2D().translate(-ext.x0, -ext.y0).scale(0.9 / ext.width, h / ext.height) \
                .translate(x0 + j + 0.05, y)
            ax.add_patch(PathPatch(t.transform_path(path), color=COLORS[letter], lw=0))
            y += h
    ax.set_ylim(0, 2)
    ax.set_yticks([0, 1, 2])
    ax.set_ylabel("bits", fontsize=7)


def plot_logos(results: Sequence[FilterResult], db: MotifDB, path: Path, n: int = 12) -> Path:
    """For the top filters: the filter's logo and, under it, its best JASPAR match aligned."""
    shown = [r for r in results if r.pfm is not None and r.pfm.shape[1] > 0][:n]
    rows = max(1, len(shown))
    fig, axes = subplots(2 * rows, 1, figsize=(7, 2.2 * rows), squeeze=False)
    for k in range(rows):
        top, bottom = axes[2 * k, 0], axes[2 * k + 1, 0]
        if k >= len(shown):
            top.axis("off"); bottom.axis("off")
            top.set_title("no informative filter", fontsize=7)
            continue
        r = shown[k]
        draw_logo(top, r.pfm)
        lo, hi = 0, r.pfm.shape[1]
        top.set_title(f"{r.name}: {r.n_sites} sites, {r.ic:.1f} bits, database p={r.p_db:.3g}", fontsize=7, loc="left")
        if r.matches:
            mt = r.matches[0]
            target = db.motifs[db.index[mt.matrix_id]].pfm
            target = reverse_complement(target) if mt.strand == "-" else target
            draw_logo(bottom, target, x0=-mt.shift)
            lo, hi = min(lo, -mt.shift), max(hi, target.shape[1] - mt.shift)
            bottom.set_title(f"{mt.matrix_id} {mt.name} ({mt.strand} strand), p={mt.p:.3g}", fontsize=7, loc="left")
        else:
            bottom.axis("off")
        for ax in (top, bottom):
            ax.set_xlim(lo, hi)
            ax.tick_params(labelsize=6)
    return save_figure(fig, path)


# ---- one run --------------------------------------------------------------------------------
@dataclass
class MotifReport:
    results: list[FilterResult]
    alpha: float
    recall: Optional[dict]
    files: list[Path] = field(default_factory=list)
    mlflow_run_id: Optional[str] = None          # the analysis run ``publish`` recorded, if any

    @property
    def n_tested(self) -> int:
        return sum(1 for r in self.results if math.isfinite(r.p_db))

    @property
    def n_matched(self) -> int:
        return sum(1 for r in self.results if r.significant(self.alpha))

    @property
    def fraction_matched(self) -> float:
        return self.n_matched / len(self.results) if self.results else math.nan


def ranked(results: Sequence[FilterResult]) -> list[FilterResult]:
    """Most significant first, then the best scoring, then the most informative."""
    def key(r):
        p = r.p_db if math.isfinite(r.p_db) else 2.0
        s = r.matches[0].score if r.matches else -math.inf
        return (p, -s, -r.ic)
    return sorted(results, key=key)


def write_report(rep: MotifReport, db: MotifDB, out_dir: Path, n_logos: int = 12) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "filter_matches.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filter", "n_sites", "max_activation", "ic_bits", "p_database", "significant",
                    "match1_id", "match1_name", "match1_score", "match1_p", "match1_strand",
                    "match2_id", "match2_name", "match2_p", "match3_id", "match3_name", "match3_p"])
        for r in ranked(rep.results):
            m = r.matches + [None] * (3 - len(r.matches))
            w.writerow([r.name, r.n_sites, f"{r.max_act:.4g}", f"{r.ic:.3f}",
                        "" if not math.isfinite(r.p_db) else f"{r.p_db:.4g}", int(r.significant(rep.alpha)),
                        *(["", "", "", "", ""] if m[0] is None else
                          [m[0].matrix_id, m[0].name, f"{m[0].score:.3f}", f"{m[0].p:.4g}", m[0].strand]),
                        *[v for mt in m[1:3] for v in (["", "", ""] if mt is None else
                                                       [mt.matrix_id, mt.name, f"{mt.p:.4g}"])]])
    summary = out_dir / "motifs_summary.json"
    summary.write_text(json.dumps({
        "filters": len(rep.results), "tested": rep.n_tested, "matched": rep.n_matched,
        "fraction_matched": rep.fraction_matched, "alpha": rep.alpha,
        "expected_by_chance": rep.n_tested * rep.alpha,     # false matches if no filter were a motif
        "top": [{"filter": r.name, "p_database": r.p_db, "match": r.matches[0].matrix_id, "name": r.matches[0].name,
                 "p": r.matches[0].p} for r in ranked(rep.results) if r.significant(rep.alpha)][:20],
        "planted_recall": rep.recall}, indent=1))
    logos = plot_logos(ranked(rep.results), db, out_dir / "filter_logos.png", n=n_logos)
    return [table, summary, logos]


def analyze(run_ref: str, *, probe: int = 2000, split: str = "valid", seed: int = 0, data: Optional[str] = None,
            batch: int = 256, device: str = "cpu", threshold: float = 0.5, shuffles: int = 200,
            alpha: float = 0.01, min_overlap: int = 5, top_k: int = 3, truth: Optional[str] = None,
            collection: str = "CORE", tax_group: str = "vertebrates", release: Optional[str] = None,
            logos: int = 12, out: str | Path = "workspace/analysis/motifs", locate=None,
            publish: Optional[Callable[..., str]] = None) -> MotifReport:
    """First-layer filters of a run matched to JASPAR, written to ``out``; ``publish`` records it."""
    if not 0.0 < alpha < 1.0:
        raise DataError(f"--alpha must be between 0 and 1, got {alpha}")
    if shuffles + 1 < 1.0 / alpha:
        raise DataError(f"--shuffles {shuffles} cannot reach p < {alpha}; use at least {math.ceil(1 / alpha)}")
    t = read_truth(truth) if truth else None
    r = load_run(run_ref, device, locate)
    if r.in_channels < 4:
        raise DataError(f"{r.name}: the first layer reads {r.in_channels} channels; motifs need the 4 one-hot bases")
    pr = load_probe(data or r.cfg.data.path, probe, seed, split)
    db = MotifDB(database_for(t, collection, tax_group, release))
    pfms = filter_pfms(r.model, pr, batch, device, threshold, r.columns(pr))
    results = match_filters(pfms, db, n_shuffles=shuffles, min_overlap=min_overlap, top_k=top_k, seed=seed)
    rep = MotifReport(results, alpha, planted_recall(results, t, alpha, top_k) if t else None)
    rep.files = write_report(rep, db, Path(out), logos)
    if publish is not None:
        metrics = [("motifs/fraction_matched", rep.fraction_matched, 0), ("motifs/matched", rep.n_matched, 0),
                   ("motifs/filters", len(results), 0)]
        if rep.recall:
            metrics.append(("motifs/planted_recall", rep.recall["recall"], 0))
        tags = {"run": str(r.run_dir), **({"run_id": r.mlflow_run_id} if r.mlflow_run_id else {})}
        rep.mlflow_run_id = publish(f"motifs {r.name}", kind="motifs", tags=tags,
                         params={"probe": pr.n, "split": split, "threshold": threshold, "shuffles": shuffles,
                                 "alpha": alpha, "min_overlap": min_overlap, "motifs": len(db)},
                         metrics=metrics, artifacts=rep.files)
    return rep


