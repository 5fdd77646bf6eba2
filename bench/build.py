"""`mtlsweep data build --labels` on generated ENCODE-DREAM files: rows/s and peak RSS per file size.

    python bench/build.py [--rows 500000,5000000] [--tasks 4] [--len 200] [--dir DIR]

For each row count R it writes a genome of 10 Mb chromosomes (R x 50 bp in all: windows of
200 bp every 50 bp, as in the DREAM challenge), a bigWig over all of it (50 bp steps) and a
gzipped labels TSV (U/A/B, ~1% bound, a few unknown), then runs the build in a fresh process
(`--track DNase=... --track-transform log1p`) and reads that process's own peak RSS. The
chromosome size is the same for every R, so a bounded build shows the same RSS at every size.
Printed: rows/s, peak RSS, and the RSS of each size divided by the smallest's (target: ~1.0).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyBigWig

CHROM = 10_000_000
STEP, WIDTH = 50, 200

# Run in the child: the build alone, then its own peak RSS (ru_maxrss is in KiB on Linux).
CHILD = """
import json, resource, sys, time
from mtlsweep.data.labels_tsv import build_from_labels
from mtlsweep.data.signal import TrackSpec
labels, fasta, bw, out, test, valid = sys.argv[1:7]
t0 = time.perf_counter()
rep = build_from_labels(labels, fasta, out, tracks=[TrackSpec("DNase", bw)], track_transform="log1p",
                        test_chroms=[test], valid_chroms=[valid], progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rep["rows_read"], "kept": rep["rows_kept"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_inputs(d: str, rows: int, n_tasks: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    per_chrom = (CHROM - WIDTH) // STEP + 1
    n_chroms = -(-rows // per_chrom)
    chroms = [(f"chr{i + 1}", CHROM) for i in range(n_chroms)]
    fasta = os.path.join(d, "genome.fa")
    with open(fasta, "wb") as fh:
        for name, n in chroms:
            fh.write(f">{name}\n".encode())
            seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)]
            fh.write(b"\n".join(seq[i:i + 60].tobytes() for i in range(0, n, 60)) + b"\n")
    bw_path = os.path.join(d, "dnase.bw")
    bw = pyBigWig.open(bw_path, "w")
    bw.addHeader(chroms, maxZooms=0)
    for name, n in chroms:
        vals = rng.gamma(0.5, 2.0, n // STEP).astype(np.float64)
        bw.addEntries(name, 0, values=vals, span=STEP, step=STEP)
    bw.close()
    labels = os.path.join(d, "labels.tsv.gz")
    letters = np.array(["U", "B", "A"])
    with gzip.open(labels, "wt", compresslevel=1) as fh:
        fh.write("chr\tstart\tstop\t" + "\t".join(f"TF{t}" for t in range(n_tasks)) + "\n")
        left = rows
        for name, _ in chroms:
            k = min(left, per_chrom)
            starts = np.arange(k, dtype=np.int64) * STEP
            u = rng.random((k, n_tasks))
            lab = letters[(u < 0.01).astype(int) + 2 * ((u >= 0.01) & (u < 0.02))]
            cols = [np.full(k, name), starts.astype(str), (starts + WIDTH).astype(str)] + list(lab.T)
            fh.write("\n".join("\t".join(r) for r in zip(*cols)) + "\n")
            left -= k
            if not left:
                break
    return fasta, bw_path, labels, [c for c, _ in chroms]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="500000,5000000", help="comma-separated row counts")
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one, removed)")
    args = ap.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    base = args.dir or tempfile.mkdtemp(prefix="bench-build-")
    results = []
    try:
        for rows in sizes:
            d = os.path.join(base, f"r{rows}")
            os.makedirs(d, exist_ok=True)
            t0 = time.perf_counter()
            fasta, bw, labels, chroms = write_inputs(d, rows, args.tasks)
            gen_s = time.perf_counter() - t0
            if len(chroms) < 3:
                sys.exit("bench/build.py: each size needs >= 3 chromosomes (train, valid, test); use >= 400000 rows")
            out = subprocess.run([sys.executable, "-c", CHILD, labels, fasta, bw, os.path.join(d, "out"),
                                  chroms[-1], chroms[-2]], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r.update(target_rows=rows, inputs_s=gen_s, labels_mb=os.path.getsize(labels) / 2**20,
                     store_mb=os.path.getsize(os.path.join(d, "out", "store.h5")) / 2**20)
            results.append(r)
            print(f"{rows:>10,} rows: {r['seconds']:7.1f} s, {r['rows'] / r['seconds']:9,.0f} rows/s, "
                  f"peak RSS {r['peak_rss_mb']:7.1f} MB (labels {r['labels_mb']:.0f} MB gz, "
                  f"store {r['store_mb']:.0f} MB; inputs written in {gen_s:.0f} s)", flush=True)
            shutil.rmtree(d)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    first = results[0]
    for r in results[1:]:
        print(f"{r['rows']:,} vs {first['rows']:,} rows ({r['rows'] / first['rows']:.0f}x): peak RSS ratio "
              f"{r['peak_rss_mb'] / first['peak_rss_mb']:.2f} (target ~1.0: memory does not grow with the file), "
              f"rows/s ratio {(r['rows'] / r['seconds']) / (first['rows'] / first['seconds']):.2f}")


if __name__ == "__main__":
    main()
