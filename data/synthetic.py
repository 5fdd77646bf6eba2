"""Synthetic multi-task benchmark with known ground truth: JASPAR motifs planted in GC background.

T tasks fall into G groups (contiguous blocks of task indices). Each group owns
round(shared_fraction * motifs_per_task) shared activating motifs; each task adds private ones
up to motifs_per_task. Every activating motif and every decoy is planted, independently, in a
fraction of the sequences (one site per motif, random strand, random position, never overlapping
another site).

Planted sites are PWM samples conditioned on scoring at least the motif's *floor*: the score
that random background reaches only `chance_matches` times per sequence on average (exact score
distribution, both strands). So a planted site stands out from chance matches, and a scan of
the sequence finds essentially the sites the generator planted.

Label rule (before noise): a task is positive exactly when one of its activating motifs has a
planted site scoring at least the task's threshold for that motif. Private motifs count from
their floor. A group's shared motifs are planted often enough for its most prevalent member, and
each task responds only to the sites above its own threshold (like cell types with different TF
levels), chosen so that shared motifs explain about n_shared / motifs_per_task of every task's
positives; the task's private motifs supply the rest of its target prevalence. Then
`label_noise` flips labels symmetrically (targets are corrected so that the observed prevalence
still matches) and `unknown_rate` sets labels to -1. Decoys never affect a label, so the
presence of some motif is not enough. With shared_fraction = 1 (no private motifs) the tasks of
a group differ only by their thresholds, and prevalences are as close as the motifs' discrete
score distributions allow.

Same spec (seed included) -> identical arrays and byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pyjaspar import jaspar_releases
from sklearn.metrics import average_precision_score, roc_auc_score

from mtlsweep.config.errors import describe
from mtlsweep.data.basset_hdf5 import write_basset
from mtlsweep.data.errors import DataError
from mtlsweep.data.jaspar import Motif, load_motifs, log_odds, pfm_similarity_many, read_motif_file, scan_max
from mtlsweep.data.store import SplitArrays, Store

SPLITS = ("train", "valid", "test")
OUTPUT_FILES = {"basset": "basset.h5", "store": "store.h5", "truth": "truth.json"}
# Sequences are generated in blocks of this many so that the [N, motifs] temporaries stay small;
# it is part of the random stream, so changing it changes the data for a given seed.
_CHUNK = 4096
# Planted sites may cover at most this fraction of a sequence on average.
_MAX_COVERAGE = 0.5
SCORE_RES = 20       # log-odds in 1/20 bit: integer site scores are exact on any machine
_MIN_ACCEPT = 0.2    # a motif must reach its floor in >= this share of PWM samples to be usable
NO_SITE = np.iinfo(np.int64).min
_SHARED_RESOLUTION = 0.05
LABEL_RULE = ("positive iff one of the task's activating motifs has a planted site scoring at least the "
              "task's min_score_bits for it (before label_noise flips and unknown_rate)")


_NUMBER = {"int": "an integer", "float": "a number"}


class SynthSpec(BaseModel):
    """The knobs of a benchmark. Same spec (seed included) -> identical arrays and files."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_tasks: int = Field(16, ge=1)
    n_groups: int = Field(4, ge=1)
    motifs_per_task: int = Field(3, ge=1)
    shared_fraction: float = Field(0.67, ge=0.0, le=1.0)    # share of a task's motifs common to its group; 0 = unrelated
    n_seqs: int = Field(20000, ge=100)
    seq_len: int = 600
    gc: float = Field(0.41, gt=0.0, lt=1.0)                  # human genome average
    prevalence_min: float = Field(0.04, gt=0.0, lt=1.0)      # targets spaced log-linearly min..median..max
    prevalence_median: float = 0.08                          # (Basset: 4-19%, median 8%)
    prevalence_max: float = Field(0.19, lt=1.0)
    label_noise: float = Field(0.02, ge=0.0)                 # probability that a label is flipped
    unknown_rate: float = Field(0.0, ge=0.0, lt=1.0)         # probability that a label is set to -1 (unknown)
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = Field(0, ge=0)
    motif_collection: str = "CORE"
    motif_tax_group: str = "vertebrates"
    motif_release: Optional[str] = "JASPAR2026"              # pinned so that a seed means the same data next year
    motif_file: Optional[str] = None                         # JASPAR or MEME file used as the motif pool instead
    # denovo: random PWMs drawn for this spec (columns ~ Dirichlet(denovo_alpha)) instead of a JASPAR pool
    motif_source: Literal["jaspar", "denovo"] = "jaspar"
    denovo_alpha: float = Field(0.15, gt=0.0, le=1.0)        # lower: more peaked columns
    # "COLLECTION/tax_group" (CORE/vertebrates is what motif_gbm scans by default): no planted motif or decoy
    # aligns with any of those at max_similarity or more, so a model that scans them gets no prior from them
    avoid_motifs: Optional[str] = None
    min_ic: float = Field(10.0, ge=0.0)                      # bits over the whole motif
    min_width: int = Field(6, ge=1)
    max_width: int = 19                                      # Basset's first-layer filters are 19 wide
    max_similarity: float = Field(0.6, gt=0.0, le=1.0)       # no two chosen motifs align better; 1 = no limit
    chance_matches: float = Field(0.001, gt=0.0, le=0.1)     # background matches per sequence at the weakest site
    n_decoys: int = Field(4, ge=0)                           # motifs planted like the others but tied to no task

    def __init__(self, **knobs):
        try:
            super().__init__(**knobs)
        except ValidationError as exc:
            raise DataError(_spec_error(exc)) from None

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools(cls, v, info):
        if isinstance(v, bool):                              # True is not 1 here
            raise ValueError("expected a number")
        if isinstance(v, str) and v.lower() in ("none", "null") and info.field_name in ("motif_release", "motif_file",
                                                                                       "avoid_motifs"):
            return None
        if isinstance(v, np.generic):
            return v.item()
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.n_groups > self.n_tasks:
            raise _Bad("n_groups", self.n_groups, f"allowed: 1..n_tasks ({self.n_tasks})")
        if self.min_width > self.max_width:
            raise _Bad("min_width", self.min_width, f"allowed: 1..max_width ({self.max_width})")
        if self.seq_len < self.max_width:
            raise _Bad("seq_len", self.seq_len, f"it must be >= max_width ({self.max_width}), the widest motif allowed")
        if not self.prevalence_min <= self.prevalence_median <= self.prevalence_max:
            raise _Bad("prevalence_median", self.prevalence_median,
                       f"allowed: prevalence_min ({self.prevalence_min})..prevalence_max ({self.prevalence_max})")
        cap = min(0.5, self.prevalence_min, 1.0 - self.prevalence_max)
        if not self.label_noise < cap:
            raise _Bad("label_noise", self.label_noise,
                       f"allowed: 0..below {cap:g} (flips alone would exceed the smallest prevalence)")
        for name in ("valid_fraction", "test_fraction"):
            if round(getattr(self, name) * self.n_seqs) < 1:
                raise _Bad(name, getattr(self, name), f"allowed: at least one of n_seqs ({self.n_seqs}) sequences")
        left = self.n_seqs - round(self.valid_fraction * self.n_seqs) - round(self.test_fraction * self.n_seqs)
        if self.valid_fraction + self.test_fraction >= 1.0 or left < 1:
            raise _Bad("test_fraction", self.test_fraction,
                       "valid_fraction + test_fraction must leave training sequences (sum < 1)")
        if self.motif_release is not None:
            if self.motif_release not in jaspar_releases:
                raise _Bad("motif_release", self.motif_release,
                           f"allowed: {', '.join(sorted(jaspar_releases))} or null (newest)")
        if self.motif_file is not None and not Path(self.motif_file).is_file():
            raise _Bad("motif_file", self.motif_file, "the file does not exist")
        if self.avoid_motifs is not None and not re.fullmatch(r"[^/\s]+/[^/\s]+", self.avoid_motifs):
            raise _Bad("avoid_motifs", self.avoid_motifs, "allowed: COLLECTION/tax_group, e.g. CORE/vertebrates")
        return self

    @property
    def n_shared(self) -> int:
        # Half rounds up (Python's round() would send 2.5 to 2).
        return int(math.floor(self.shared_fraction * self.motifs_per_task + 0.5))

    @property
    def n_private(self) -> int:
        return self.motifs_per_task - self.n_shared

    @property
    def n_activating(self) -> int:
        return self.n_groups * self.n_shared + self.n_tasks * self.n_private

    def to_dict(self) -> dict:
        return self.model_dump()

    def replace(self, **changes) -> "SynthSpec":
        return spec_from_dict({**self.to_dict(), **changes})


class _Bad(ValueError):
    def __init__(self, field: str, value, allowed: str):
        super().__init__(f"{field}={value!r} is not allowed; {allowed}")


def written_with(truth_path: Path, spec: SynthSpec) -> bool:
    """Was the benchmark beside ``truth_path`` written from ``spec``? (A knob added since it was
    written counts as its default, which the files were made with.)"""
    try:
        written = json.loads(Path(truth_path).read_text()).get("spec", {})
        return spec_from_dict(written) == spec
    except (OSError, ValueError, DataError):
        return False


def spec_from_dict(d: dict | None) -> SynthSpec:
    """SynthSpec from CLI/YAML knobs (missing keys take the defaults); DataError names a bad key."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise DataError(f"synthetic spec: expected a mapping of knobs, got {type(d).__name__}")
    return SynthSpec(**d)


def _spec_error(exc: ValidationError) -> str:
    """The first of a spec's errors as "synthetic spec: <knob>=<value> is not allowed; <what is>"."""
    e = exc.errors()[0]
    if e["type"] == "value_error" and isinstance(e.get("ctx", {}).get("error"), _Bad):
        return f"synthetic spec: {e['ctx']['error']}"
    if e["type"] == "extra_forbidden":
        return f"synthetic spec: unknown knob {e['loc'][0]!r}; allowed: {', '.join(SynthSpec.model_fields)}"
    field = e["loc"][0] if e["loc"] else ""
    allowed = describe({**e, "loc": ()}).lstrip(": ").removesuffix(f", got {e.get('input')!r}")
    return f"synthetic spec: {field}={e.get('input')!r} is not allowed; {allowed}"


# ---------------------------------------------------------------- motifs


def background(gc: float) -> np.ndarray:
    return np.array([(1.0 - gc) / 2.0, gc / 2.0, gc / 2.0, (1.0 - gc) / 2.0])


def quantized_log_odds(pfm: np.ndarray, gc: float) -> np.ndarray:
    """int64 [4, W]: log2 odds against the GC background (pseudocount 0.01), in 1/SCORE_RES bit."""
    return np.round(log_odds(pfm, background(gc)) * SCORE_RES).astype(np.int64)


@dataclass
class _SiteModel:
    motif: Motif
    lo: np.ndarray      # int64 [4, W] quantized log-odds
    floor: int          # weakest planted score
    top: int            # best possible score
    chance: float       # background matches >= floor per sequence, both strands
    accept: float       # share of PWM samples that reach the floor
    scores: np.ndarray  # int64, ascending: the possible planted-site scores
    tail: np.ndarray    # P(planted score >= scores[i]), decreasing from 1

    @property
    def resolution(self) -> float:
        """The largest share of planted sites that have one same score."""
        return float(max(self.tail[-1], (-np.diff(self.tail)).max(initial=0.0)))


def _site_model(m: Motif, spec: SynthSpec) -> _SiteModel | None:
    """The motif's floor for this background and length, or None when it cannot stand out."""
    lo = quantized_log_odds(m.pfm, spec.gc)
    bg = background(spec.gc)
    low = lo.min(axis=0)
    # Exact score distributions (background and PWM samples) by convolving the columns.
    p_bg, p_site = np.ones(1), np.ones(1)
    for j in range(m.width):
        col = lo[:, j] - low[j]
        k_bg, k_site = np.zeros(col.max() + 1), np.zeros(col.max() + 1)
        np.add.at(k_bg, col, bg)
        np.add.at(k_site, col, m.pfm[:, j])
        p_bg, p_site = np.convolve(p_bg, k_bg), np.convolve(p_site, k_site)
    per_seq = np.cumsum(p_bg[::-1])[::-1] * (2 * (spec.seq_len - m.width + 1))
    ok = np.flatnonzero(per_seq <= spec.chance_matches)
    if ok.size == 0:
        return None
    f = int(ok[0])
    accept = float(p_site[f:].sum())
    if accept < _MIN_ACCEPT:
        return None
    mass = p_site[f:] / accept
    possible = np.flatnonzero(mass > 0)
    tail = np.cumsum(mass[::-1])[::-1][possible]
    return _SiteModel(m, lo, f + int(low.sum()), int(lo.max(axis=0).sum()), float(per_seq[f]), accept,
                      possible + f + int(low.sum()), tail / tail[0])


DENOVO_POOL = 1000      # candidate PWMs drawn for a de novo benchmark (enough for any spec that fits)


def _denovo_pool(spec: SynthSpec, rng: np.random.Generator) -> list[Motif]:
    """Random PWMs of widths min_width..max_width whose columns are Dirichlet(denovo_alpha) draws:
    motifs like no known one (the similarity filters of _choose_motifs still apply)."""
    out = []
    for i in range(DENOVO_POOL):
        width = int(rng.integers(spec.min_width, spec.max_width + 1))
        pfm = rng.dirichlet(np.full(4, spec.denovo_alpha), size=width).T
        pfm = np.maximum(pfm, 1e-3)
        pfm = pfm / pfm.sum(axis=0)
        pfm.setflags(write=False)
        out.append(Motif(f"denovo{spec.seed}.{i:04d}", f"denovo_{i:04d}", pfm))
    return out


def avoided_motifs(spec: SynthSpec) -> list[Motif]:
    """The motifs no planted motif may resemble (avoid_motifs), from the spec's JASPAR release."""
    if spec.avoid_motifs is None:
        return []
    collection, tax_group = spec.avoid_motifs.split("/")
    try:
        return load_motifs(collection, tax_group, spec.motif_release)
    except DataError as e:
        raise DataError(f"synthetic spec: avoid_motifs={spec.avoid_motifs!r}: {e}") from None


def _motif_pool(spec: SynthSpec, rng: np.random.Generator) -> list[Motif]:
    if spec.motif_source == "denovo":
        motifs = _denovo_pool(spec, rng)
    elif spec.motif_file is not None:
        motifs = read_motif_file(spec.motif_file)
    else:
        try:
            motifs = load_motifs(spec.motif_collection, spec.motif_tax_group, spec.motif_release)
        except DataError as e:
            raise DataError(f"synthetic spec: motif_collection/motif_tax_group/motif_release: {e}") from None
    return [m for m in motifs if spec.min_width <= m.width <= spec.max_width and m.information_content() >= spec.min_ic]


def _choose_motifs(spec: SynthSpec, rng: np.random.Generator) -> list[_SiteModel]:
    """Random usable motifs, none more similar than max_similarity to another: shared ones first.

    Shared motifs must have finely graded site scores (no score holds more than
    _SHARED_RESOLUTION of the planted sites), so that each task of a group can be given its own
    threshold without a jump in how many sites it responds to.
    """
    pool = _motif_pool(spec, rng)
    avoid = [m.pfm for m in avoided_motifs(spec)]
    avoid_ids = {m.matrix_id.split(".")[0] for m in avoided_motifs(spec)}
    need_shared = spec.n_groups * spec.n_shared
    need_other = spec.n_activating - need_shared + spec.n_decoys
    source = ("de novo PWMs" if spec.motif_source == "denovo" else
              spec.motif_file or f"{spec.motif_release} {spec.motif_collection} {spec.motif_tax_group}")
    if spec.avoid_motifs:
        source += f" outside {spec.avoid_motifs}"
    shared: list[_SiteModel] = []
    other: list[_SiteModel] = []
    order = rng.permutation(len(pool))
    if len(pool) < need_shared + need_other:
        order = order[:0]  # hopeless: go straight to the error instead of scanning the pool
    for i in order:
        if len(shared) == need_shared and len(other) == need_other:
            break
        cand = pool[int(i)]
        if avoid and (cand.matrix_id.split(".")[0] in avoid_ids or
                      pfm_similarity_many(cand.pfm, avoid).max() >= spec.max_similarity):
            continue
        if spec.max_similarity < 1.0 and (shared or other):
            taken = [c.motif.pfm for c in shared + other]
            if pfm_similarity_many(cand.pfm, taken).max() >= spec.max_similarity:
                continue
        model = _site_model(cand, spec)
        if model is None:
            continue
        if len(shared) < need_shared and model.resolution <= _SHARED_RESOLUTION:
            shared.append(model)
        elif len(other) < need_other:
            other.append(model)
    if len(shared) < need_shared or len(other) < need_other:
        raise DataError(
            f"synthetic spec: needs {need_shared} finely graded shared + {need_other} other distinct motifs "
            f"({spec.n_activating} activating + n_decoys={spec.n_decoys}) but {source} gives only "
            f"{len(shared)} + {len(other)} with min_ic={spec.min_ic}, width {spec.min_width}..{spec.max_width}, "
            f"max_similarity={spec.max_similarity}, chance_matches={spec.chance_matches}; raise max_similarity or "
            "chance_matches, or lower n_tasks/n_groups/motifs_per_task/n_decoys"
        )
    return shared + other


# ---------------------------------------------------------------- tasks


def target_prevalences(spec: SynthSpec) -> np.ndarray:
    """Ascending targets spaced log-linearly from min through median to max (endpoints included)."""
    t = spec.n_tasks
    if t == 1:
        return np.array([spec.prevalence_median])
    u = np.arange(t) / (t - 1)
    lo, mid, hi = np.log([spec.prevalence_min, spec.prevalence_median, spec.prevalence_max])
    return np.exp(np.where(u <= 0.5, lo + (mid - lo) * u / 0.5, mid + (hi - mid) * (u - 0.5) / 0.5))


def _clean_prevalence(target: np.ndarray, noise: float) -> np.ndarray:
    # Symmetric flips turn clean prevalence c into c(1-e) + (1-c)e; invert so the observed rate hits the target.
    return (target - noise) / (1.0 - 2.0 * noise)


@dataclass
class _Tasks:
    names: list[str]
    group_of: np.ndarray            # [T]
    motifs: list[list[int]]         # [T] indices of activating motifs (shared first)
    targets: np.ndarray             # [T] observed-prevalence targets
    clean: np.ndarray               # [T] prevalence before label noise
    rates: np.ndarray               # [M] site rate per motif (activating, then decoys)
    min_score: np.ndarray           # [T, M] score a site needs to activate the task; above any score if unrelated
    shared_expected: np.ndarray     # [T] P(a shared motif activates the task)


def _tasks(spec: SynthSpec, models: list[_SiteModel], rng: np.random.Generator) -> _Tasks:
    T, G, ns, npv = spec.n_tasks, spec.n_groups, spec.n_shared, spec.n_private
    M = len(models)
    group_of = np.concatenate([np.full(len(b), g) for g, b in enumerate(np.array_split(np.arange(T), G))])
    base = G * ns
    motifs = [list(range(group_of[t] * ns, (group_of[t] + 1) * ns)) + list(range(base + t * npv, base + (t + 1) * npv))
              for t in range(T)]
    digits = max(2, len(str(T - 1)))
    names = [f"g{int(g)}_t{t:0{digits}d}" for t, g in enumerate(group_of)]

    # Random assignment so that prevalence is not tied to group or task index.
    targets = rng.permutation(target_prevalences(spec))
    clean = _clean_prevalence(targets, spec.label_noise)
    share = ns / spec.motifs_per_task

    rates = np.zeros(M)
    never = np.iinfo(np.int64).max
    min_score = np.full((T, M), never, dtype=np.int64)
    shared_expected = np.zeros(T)
    for g in range(G):
        members = np.flatnonzero(group_of == g)
        if ns:
            want = share * clean[members]
            # Planted often enough for the member that needs the most; the others need stronger sites.
            q = 1.0 - (1.0 - want.max()) ** (1.0 / ns)
            rates[g * ns:(g + 1) * ns] = q
            for t, w in zip(members, want):
                frac = (1.0 - (1.0 - w) ** (1.0 / ns)) / q
                # Nearest achievable share of sites; with private motifs, never so many that shared motifs
                # alone would exceed the task's prevalence (the private ones could not make up for it).
                cap = frac / share if npv else np.inf
                miss = 1.0
                for m in range(g * ns, (g + 1) * ns):
                    tail = models[m].tail
                    dist = np.where(tail <= cap, np.abs(tail - frac), np.inf)
                    i = int(np.argmin(dist)) if np.isfinite(dist).any() else len(tail) - 1
                    min_score[t, m] = models[m].scores[i]
                    miss *= 1.0 - q * models[m].tail[i]
                shared_expected[t] = 1.0 - miss
        for t in members:
            for m in motifs[t][ns:]:
                min_score[t, m] = models[m].floor
            if npv:
                p_private = max(0.0, 1.0 - (1.0 - clean[t]) / (1.0 - shared_expected[t]))
                rates[base + t * npv: base + (t + 1) * npv] = 1.0 - (1.0 - p_private) ** (1.0 / npv)
    if spec.n_decoys:
        rates[spec.n_activating:] = np.median(rates[:spec.n_activating])
    return _Tasks(names, group_of, motifs, targets, clean, rates, min_score, shared_expected)


# ---------------------------------------------------------------- sequences


@dataclass
class _Tables:
    widths: np.ndarray   # [M]
    cdf: np.ndarray      # [M, Wmax, 3] cumulative P(A), P(A or C), P(A, C or G); 1 past the width
    lo: np.ndarray       # [M, 4, Wmax] quantized log-odds, 0 past the width
    floor: np.ndarray    # [M]


def _tables(models: list[_SiteModel]) -> _Tables:
    wmax = max(sm.motif.width for sm in models)
    cdf = np.ones((len(models), wmax, 3))
    lo = np.zeros((len(models), 4, wmax), dtype=np.int64)
    for k, sm in enumerate(models):
        w = sm.motif.width
        cdf[k, :w] = np.cumsum(sm.motif.pfm, axis=0)[:3].T
        lo[k, :, :w] = sm.lo
    return _Tables(np.array([sm.motif.width for sm in models], dtype=np.int64), cdf, lo,
                   np.array([sm.floor for sm in models], dtype=np.int64))


def _sample_sites(mot: np.ndarray, tab: _Tables, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """PWM samples (forward strand, uint8 [n, Wmax]) scoring >= each motif's floor, and their scores."""
    wmax = tab.cdf.shape[1]
    cols = np.arange(wmax)
    sites = np.zeros((len(mot), wmax), dtype=np.uint8)
    scores = np.zeros(len(mot), dtype=np.int64)
    pending = np.arange(len(mot))
    # Rejection sampling: every usable motif accepts >= _MIN_ACCEPT of draws, so this ends fast.
    while pending.size:
        m = mot[pending]
        cand = (rng.random((pending.size, wmax))[:, :, None] >= tab.cdf[m]).sum(axis=2)
        sc = tab.lo[m[:, None], cand, cols[None, :]].sum(axis=1)
        ok = sc >= tab.floor[m]
        sites[pending[ok]] = cand[ok]
        scores[pending[ok]] = sc[ok]
        pending = pending[~ok]
    return sites, scores


def _generate_chunk(n: int, spec: SynthSpec, tab: _Tables, rates: np.ndarray, rng: np.random.Generator):
    """n sequences -> (codes uint8 [n, L], planted-site scores int64 [n, M], NO_SITE where absent)."""
    L, M = spec.seq_len, len(tab.widths)
    at = (1.0 - spec.gc) / 2.0
    u = rng.random((n, L), dtype=np.float32)
    codes = ((u >= at).astype(np.uint8) + (u >= 0.5) + (u >= 1.0 - at)).astype(np.uint8)

    present = rng.random((n, M)) < rates[None, :]
    # Random order of each sequence's sites; absent motifs sort last.
    order = np.argsort(rng.random((n, M)) + 2.0 * ~present, axis=1, kind="stable")
    present_ord = np.take_along_axis(present, order, axis=1)
    w_ord = tab.widths[order] * present_ord
    # Sites that would overflow the sequence are dropped (only when it is nearly full).
    keep = present_ord & (np.cumsum(w_ord, axis=1) <= L)
    w_ord = w_ord * keep
    free = L - w_ord.sum(axis=1)
    # Sorted uniform gaps in [0, free] plus the widths before each site give non-overlapping starts.
    gaps = np.floor(rng.random((n, M)) * (free[:, None] + 1)).astype(np.int64)
    gaps = np.sort(np.where(keep, gaps, L + 1), axis=1)
    starts = gaps + np.cumsum(w_ord, axis=1) - w_ord
    minus = rng.random((n, M)) < 0.5

    seq_idx, slot = np.nonzero(keep)
    mot = order[seq_idx, slot]
    start = starts[seq_idx, slot]
    strand_minus = minus[seq_idx, slot]
    site, score = _sample_sites(mot, tab, rng)

    wmax = tab.cdf.shape[1]
    cols = np.arange(wmax)
    w = tab.widths[mot][:, None]
    valid = cols[None, :] < w
    src = np.where(strand_minus[:, None], w - 1 - cols[None, :], cols[None, :])
    written = np.take_along_axis(site, np.clip(src, 0, wmax - 1), axis=1)
    written = np.where(strand_minus[:, None], 3 - written, written).astype(np.uint8)
    rows = np.broadcast_to(seq_idx[:, None], valid.shape)
    pos = start[:, None] + cols[None, :]
    codes[rows[valid], pos[valid]] = written[valid]

    scores = np.full((n, M), NO_SITE, dtype=np.int64)
    scores[seq_idx, mot] = score
    return codes, scores


# ---------------------------------------------------------------- generation


def generate(spec: SynthSpec) -> tuple[list[str], dict[str, SplitArrays], dict]:
    """(task_names, {"train","valid","test"} -> SplitArrays, truth) for the spec; nothing is written."""
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    models = _choose_motifs(spec, rng)
    tasks = _tasks(spec, models, rng)
    tab = _tables(models)
    coverage = float(tasks.rates @ tab.widths) / spec.seq_len
    if coverage > _MAX_COVERAGE:
        raise DataError(
            f"synthetic spec: planted sites would cover {coverage:.0%} of seq_len={spec.seq_len} on average "
            f"(limit {_MAX_COVERAGE:.0%}); raise seq_len or lower prevalence_max, n_tasks, motifs_per_task or n_decoys"
        )

    N = spec.n_seqs
    codes = np.empty((N, spec.seq_len), dtype=np.uint8)
    site_scores = np.empty((N, len(models)), dtype=np.int64)
    for lo in range(0, N, _CHUNK):
        hi = min(N, lo + _CHUNK)
        codes[lo:hi], site_scores[lo:hi] = _generate_chunk(hi - lo, spec, tab, tasks.rates, rng)

    clean = np.stack([(site_scores[:, ms] >= tasks.min_score[t, ms]).any(axis=1) for t, ms in enumerate(tasks.motifs)],
                     axis=1)
    labels = clean.astype(np.int8) ^ (rng.random(clean.shape) < spec.label_noise).astype(np.int8)
    labels[rng.random(clean.shape) < spec.unknown_rate] = -1

    n_valid = int(round(spec.valid_fraction * N))
    n_test = int(round(spec.test_fraction * N))
    bounds = {"train": (0, N - n_valid - n_test), "valid": (N - n_valid - n_test, N - n_test), "test": (N - n_test, N)}
    width = len(str(N - 1))
    splits = {
        s: SplitArrays(codes=codes[a:b], labels=labels[a:b], tracks=None,
                       headers=[f"synth:{i:0{width}d}" for i in range(a, b)])
        for s, (a, b) in bounds.items()
    }
    truth = _truth(spec, models, tasks, site_scores, clean, labels, bounds)
    truth["oracle"] = _oracle(oracle_scores(codes, tab, tasks), labels, tasks.names, bounds)
    truth["fingerprint"] = _fingerprint(spec, tasks.names, models, splits)
    return tasks.names, splits, truth


# ---------------------------------------------------------------- the ceiling

ORACLE_RULE = ("scan each sequence (both strands) with the task's true activating PWMs; score = max over them "
               "of (best site score - the task's threshold for that motif): positive iff >= 0, the generator's rule")


def oracle_scores(codes: np.ndarray, tab: "_Tables", tasks: "_Tasks") -> np.ndarray:
    """float64 [N, T]: the ceiling's score per sequence and task (see ORACLE_RULE). It sees only the
    sequence and the generator's own motifs and thresholds, as a perfect model would."""
    used = sorted({m for ms in tasks.motifs for m in ms})
    best = {m: scan_max(codes, tab.lo[m][:, :int(tab.widths[m])]) for m in used}
    out = np.empty((codes.shape[0], len(tasks.names)), dtype=np.float64)
    for t, ms in enumerate(tasks.motifs):
        out[:, t] = np.max([best[m] - tasks.min_score[t, m] for m in ms], axis=0) / SCORE_RES
    return out


def _oracle(scores: np.ndarray, labels: np.ndarray, names: list[str], bounds: dict) -> dict:
    """Per split and task, the AUROC/AUPRC of the oracle against the observed (noisy) labels."""
    per_split, means = {}, {}
    for s, (a, b) in bounds.items():
        rows = {}
        for t, name in enumerate(names):
            y, x = labels[a:b, t], scores[a:b, t]
            known = y >= 0
            y, x = y[known], x[known]
            ok = 0 < y.sum() < len(y)
            rows[name] = {"auroc": _r(roc_auc_score(y, x)) if ok else None,
                          "auprc": _r(average_precision_score(y, x)) if ok else None}
        per_split[s] = rows
        means[s] = {k: _r(np.mean([v[k] for v in rows.values() if v[k] is not None]))
                    if any(v[k] is not None for v in rows.values()) else None for k in ("auroc", "auprc")}
    return {"rule": ORACLE_RULE, "tasks": per_split, "mean": means}


def load_oracle(data_path, fingerprint: str) -> dict | None:
    """The ceiling written by `data synth` beside a store (truth.json, same fingerprint):
    {split: {task: {"auroc", "auprc"}}}; None for data with no known ceiling."""
    p = Path(data_path).parent / OUTPUT_FILES["truth"]
    try:
        truth = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if truth.get("fingerprint") != fingerprint or "oracle" not in truth:
        return None
    return truth["oracle"]["tasks"]


def _r(x) -> float:
    return float(round(float(x), 6))


def _truth(spec: SynthSpec, models: list[_SiteModel], tasks: _Tasks, site_scores: np.ndarray, clean: np.ndarray,
           labels: np.ndarray, bounds: dict) -> dict:
    def ref(k: int) -> dict:
        return {"matrix_id": models[k].motif.matrix_id, "name": models[k].motif.name}

    n_act, n_shared_total = spec.n_activating, spec.n_groups * spec.n_shared
    planted = site_scores != NO_SITE
    task_info = {}
    for t, name in enumerate(tasks.names):
        pos = clean[:, t]
        shared = [m for m in tasks.motifs[t] if m < n_shared_total]
        active = site_scores >= tasks.min_score[t][None, :]
        task_info[name] = {
            "group": f"g{int(tasks.group_of[t])}",
            "activating_motifs": [{**ref(m), "shared": m < n_shared_total, "site_rate": _r(tasks.rates[m]),
                                   "min_score_bits": _r(tasks.min_score[t, m] / SCORE_RES),
                                   "planted_sites_used": _r(models[m].tail[np.searchsorted(models[m].scores,
                                                                                           tasks.min_score[t, m])])}
                                  for m in tasks.motifs[t]],
            "prevalence_target": _r(tasks.targets[t]),
            "clean_prevalence_target": _r(tasks.clean[t]),
            "clean_prevalence": _r(pos.mean()),
            # Share of the task's clean positives activated by a motif shared with its group.
            "positives_from_shared_motifs": _r(active[pos][:, shared].any(axis=1).mean() if pos.any() and shared else 0.0),
            "positives_from_shared_motifs_target": _r(tasks.shared_expected[t] / tasks.clean[t]),
        }
    groups = {f"g{g}": {"tasks": [n for n, gg in zip(tasks.names, tasks.group_of) if gg == g],
                        "shared_motifs": [ref(m) for m in range(g * spec.n_shared, (g + 1) * spec.n_shared)]}
              for g in range(spec.n_groups)}
    prevalence, unknown = {}, {}
    for s, (a, b) in bounds.items():
        lab = labels[a:b]
        known = lab >= 0
        n_known = known.sum(axis=0)
        prev = np.where(n_known > 0, (lab == 1).sum(axis=0) / np.maximum(n_known, 1), 0.0)
        prevalence[s] = {n: _r(p) for n, p in zip(tasks.names, prev)}
        unknown[s] = {n: _r(u) for n, u in zip(tasks.names, 1.0 - known.mean(axis=0))}
    return {
        "spec": spec.to_dict(),
        "label_rule": LABEL_RULE,
        "tasks": task_info,
        "groups": groups,
        "decoys": [ref(k) for k in range(n_act, len(models))],
        "motifs": {sm.motif.matrix_id: {
            "name": sm.motif.name,
            "role": "decoy" if k >= n_act else "activating",
            "width": sm.motif.width,
            "information_content": _r(sm.motif.information_content()),
            "site_rate": _r(tasks.rates[k]),
            "planted_fraction": _r(planted[:, k].mean()),
            "floor_bits": _r(sm.floor / SCORE_RES),
            "max_bits": _r(sm.top / SCORE_RES),
            "chance_matches_per_seq": _r(sm.chance),
            "pwm_samples_above_floor": _r(sm.accept),
        } for k, sm in enumerate(models)},
        "score_units": f"log2 odds against the GC background (pseudocount 0.01), rounded to 1/{SCORE_RES} bit",
        "split_sizes": {s: b - a for s, (a, b) in bounds.items()},
        "prevalence": prevalence,
        "unknown_fraction": unknown,
    }


def _fingerprint(spec: SynthSpec, names: list[str], models: list[_SiteModel], splits: dict[str, SplitArrays]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(names).encode())
    for sm in models:
        h.update(sm.motif.matrix_id.encode() + b"\0" + np.ascontiguousarray(sm.motif.pfm, dtype="<f8").tobytes())
    for s in SPLITS:
        h.update(s.encode())
        h.update(np.ascontiguousarray(splits[s].codes).tobytes())
        h.update(np.ascontiguousarray(splits[s].labels).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- files


def write_synthetic(spec: SynthSpec, out_dir, overwrite: bool = False) -> dict[str, Path]:
    """Write out_dir/basset.h5, out_dir/store.h5 and out_dir/truth.json; returns their paths by kind.

    Everything is checked (spec, existing files) and generated before the first byte is written.
    """

    if not isinstance(spec, SynthSpec):
        raise DataError(f"write_synthetic: spec must be a SynthSpec, got {type(spec).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    paths = {kind: out / fname for kind, fname in OUTPUT_FILES.items()}
    if not overwrite:
        for p in paths.values():
            if p.exists():
                raise DataError(f"{p}: already exists; pass --force to replace it")
    names, splits, truth = generate(spec)
    out.mkdir(parents=True, exist_ok=True)
    write_basset(paths["basset"], names, {s: (splits[s].codes, splits[s].labels) for s in SPLITS},
                 test_headers=splits["test"].headers, overwrite=overwrite)
    Store.from_arrays(names, splits, fingerprint=truth["fingerprint"]).save(paths["store"], overwrite=overwrite)
    _write_text_atomic(paths["truth"], json.dumps(truth, sort_keys=True, indent=2) + "\n")
    return paths


def _write_text_atomic(path: Path, text: str) -> None:
    # A named temp file opened with "x" gets the usual umask permissions (mkstemp would force 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
