"""Input files the data-building tests write: FASTA genomes and plain or gzipped text."""
from __future__ import annotations

import gzip


def write_fasta(path, genome: dict[str, str], width: int = 60, description: str = ""):
    """`genome` name -> sequence, `width` bases per line; `description` follows each name."""
    with open(path, "w") as fh:
        for name, seq in genome.items():
            fh.write(f">{name}{' ' + description if description else ''}\n")
            for i in range(0, len(seq), width):
                fh.write(seq[i:i + width] + "\n")
    return path


def write_text(path, text: str, gz: bool = False):
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path
