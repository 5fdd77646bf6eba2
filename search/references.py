"""The reference families of a sweep: motif_gbm and kmer_linear fitted beside its trials.

`mtlsweep sweep --references motif_gbm,kmer_linear` fits each named family once on every data
set of the sweep (same splits, same task subset), tunes what it tunes inside its own fit, logs it
as a run of the sweep (tagged ``variant``/``arm`` with its name) and compares it with the same
single-task baseline as the CNN trials: a reference's comparison key is its base config's, whose
CNN keys are the towers'. Nothing of the CNN search applies to them, so they are fitted once, not
once per trial. A rerun finds a reference already logged under the sweep and fits nothing again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from mtlsweep.config import tags as tag
from mtlsweep.config.errors import ConfigError
from mtlsweep.config.identity import FAMILY_SECTIONS, config_fingerprint
from mtlsweep.config.run import RunConfig
from mtlsweep.config.tags import Role
from mtlsweep.search.baseline_search import train_reference
from mtlsweep.search.live_view import mlflow_scores, wait_tasks

REFERENCES = tuple(FAMILY_SECTIONS)


def parse_references(text: Optional[str]) -> tuple[str, ...]:
    """``motif_gbm,kmer_linear`` -> the names; an unknown one is refused in one line."""
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    for n in names:
        if n not in REFERENCES:
            raise ConfigError(f"--references {n!r}: allowed: {', '.join(REFERENCES)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def reference_config(base: RunConfig, name: str, data_path: str, cpus: float) -> RunConfig:
    """The base config as reference family ``name`` on ``data_path``, with the trial's CPU share."""
    threads = max(1, int(cpus))
    section = FAMILY_SECTIONS[name]
    return base.with_overrides({"model.family": name, "data.path": data_path, f"{section}.n_jobs": threads},
                               source=f"--references {name}")


def fit_references(sweep, names: Sequence[str], paths: Sequence[str], baselines: dict, tuned_keys) -> int:
    """Fit every reference of ``names`` on every data set in ``paths`` not yet fitted under the
    sweep, at once as the cluster allows; returns how many were fitted."""

    client = sweep.client
    done = {r.data.tags.get(tag.CONFIG_FP) for r in client.search_runs(
        [sweep.experiment_id], filter_string=f"tags.`{tag.PARENT}` = '{sweep.parent_id}' and "
                                             "attributes.status = 'FINISHED'", max_results=5000)} if client else set()
    pending, arms = [], []
    for path in paths:
        for name in names:
            cfg = reference_config(sweep.cfg, name, path, sweep.args.cpus_per_trial)
            store = sweep.store_of(cfg)
            fp = config_fingerprint(cfg, store.fingerprint, list(store.task_names))
            run_dir = (sweep.workspace / "references" / sweep.name / f"{name}-{fp}").resolve()
            if fp in done or (client is None and (run_dir / tag.METRICS_FILE).is_file()):
                continue
            key = sweep.key(cfg, tuned_keys)
            tags = {tag.ROLE: Role.TRIAL, tag.SWEEP: sweep.name, tag.VARIANT: name, tag.ARM: name, tag.CONFIG_FP: fp, tag.COMPARE_KEY: key,
                    tag.PARENT: sweep.parent_id, tag.RUN_NAME: f"{sweep.name}/{name}-{fp[:6]}"}
            if key in baselines:
                tags[tag.BASELINE_RUN] = baselines[key].run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            arms.append(name if len(paths) == 1 else f"{name} ({Path(path).parent.name})")
            pending.append(train_reference(cfg, sweep.datasets[path], run_dir, sweep.tracking_uri, cfg.tracking.experiment,
                                           tags,
                                           sweep.args.cpus_per_trial, 0.0,
                                           baselines[key].auroc if key in baselines else None))
    wait_tasks(pending, "references", arms, mlflow_scores(client) if client else None)
    return len(pending)
