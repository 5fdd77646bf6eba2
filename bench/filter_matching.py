"""Filter-to-motif matching: this project's column-shuffled null against memelite's Tomtom.

    pip install memelite==0.5.0      # not a dependency: only this comparison uses it
    python bench/filter_matching.py

A first-layer filter seeded with GATA1 (MA0035.5) and seven Kaiming-random filters, their PFMs
from a random probe (as `mtlsweep motifs` builds them), matched against JASPAR CORE vertebrates
by both methods. Prints, per filter, each method's best match and significance, and the time of
the first call (compilation included) and of a second one.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_filter_motifs import TARGET, motif_model, random_probe  # noqa: E402

from mtlsweep.analysis.filter_motifs import MotifDB, filter_pfms, match_filters, trim  # noqa: E402
from mtlsweep.data.jaspar import load_motifs  # noqa: E402


def main() -> int:
    motifs = load_motifs()
    db = MotifDB(motifs)
    pfms = filter_pfms(motif_model(motifs[db.index[TARGET]]), random_probe(), batch=256)
    t0 = time.perf_counter()
    ours = match_filters(pfms, db, n_shuffles=200)
    t_ours = time.perf_counter() - t0
    try:
        from memelite.tomtom import tomtom
    except ImportError:
        print("memelite is not installed (pip install memelite==0.5.0); only the shuffled null was run")
        tomtom = None
    queries = [trim(pfms.pfm(i), 0.2)[0].astype(np.float64) for i in range(len(pfms.names))]
    targets = [m.pfm.astype(np.float64) for m in motifs]
    if tomtom is not None:
        t0 = time.perf_counter()
        p, *_ = tomtom(queries, targets)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        tomtom(queries, targets)
        t_second = time.perf_counter() - t0
    print(f"{'filter':<7} {'shuffled null: best':<12} {'p_db':>9}   {'tomtom: best':<12} {'E-value':>9}")
    for i, r in enumerate(ours):
        mine = r.matches[0].matrix_id if r.matches else "-"
        line = f"{r.name:<7} {mine:<12} {r.p_db:9.3g}"
        if tomtom is not None:
            k = int(np.argmin(p[i]))
            line += f"   {motifs[k].matrix_id:<12} {p[i, k] * len(motifs):9.3g}"
        print(line)
    print(f"shuffled null: {t_ours:.2f} s for {len(ours)} filters")
    if tomtom is not None:
        print(f"tomtom: first call {t_first:.1f} s (numba compilation included), second {t_second:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
