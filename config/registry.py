"""One registry per axis of a run: model families, couplings, task orderings, task weightings.

Each entry names an implementation by import path (``"module:attribute"``), imported only when
a run builds it, so the config layer (the bottom one) can refuse an unknown name when a config
loads without importing anything above it. The config's allowed values, the family labels that
`compare` groups runs by and the documentation's tables all come from here.

Adding one is one file (the implementation) plus one registration: an entry below; from a test or a
script, ``WEIGHTINGS.register(Entry("mine", "my_module:MyWeighting", "..."))`` before the config
loads; from an installed package (which a Ray worker on any node sees too), an entry point in the
axis's group, ``mtlsweep.families``, ``.couplings``, ``.orderings`` or ``.weightings``, naming an
``Entry``. What an implementation must provide, per axis:

- a family: ``runner(request, callbacks, prepared) -> RunResult`` (training/run.py's are the model);
- a coupling: ``penalty(mats) -> Tensor`` (λ times it is added to the loss), or ``mixing`` for a
  module between tower layers (cross-stitch);
- an ordering: a ``schedules.base.Schedule`` subclass with ``from_config(cfg, setting)``;
- a weighting: a ``schedules.weighting.Weighting`` subclass with ``from_config(cfg, n_tasks)``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Iterator, Optional


@dataclass(frozen=True)
class Entry:
    name: str
    target: str                  # "module:attribute" of the implementation ("" for none)
    doc: str
    kind: str = ""               # couplings: penalty, mixing or none; families: cnn or reference
    label: str = ""              # the family a run of it belongs to in compare (couplings, families)
    section: str = ""            # families: the config section it reads (gbm, kmer)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    def __init__(self, field: str, group: str, entries: list[Entry]):
        self.field = field
        self.group = group                 # the entry-point group installed plugins register in
        self._entries = {e.name: e for e in entries}
        self._plugins: dict[str, Entry] = {}
        self._seen_plugins: set[str] = set()

    def _discover(self) -> None:
        """Register the installed plugins' entries (each entry point names an Entry)."""
        for ep in entry_points(group=self.group):
            if ep.value in self._seen_plugins:
                continue
            self._seen_plugins.add(ep.value)
            entry = ep.load()
            if not isinstance(entry, Entry) or entry.name != ep.name:
                raise ValueError(f"entry point {ep.name} = {ep.value} ({self.group}): must name an "
                                 f"Entry whose name is {ep.name!r}")
            self.register(entry)

    def register(self, entry: Entry) -> Entry:
        """Add an entry (a plugin's, a test's); a name may be registered once."""
        if entry.name in self._entries and self._entries[entry.name] != entry:
            raise ValueError(f"{self.field}: {entry.name!r} is registered already")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._discover()
        return name in self._entries

    def __getitem__(self, name: str) -> Entry:
        if name not in self:
            raise ValueError(self.refusal(name))
        return self._entries[name]

    def __iter__(self) -> Iterator[Entry]:
        self._discover()
        return iter(list(self._entries.values()))

    @property
    def names(self) -> tuple[str, ...]:
        self._discover()
        return tuple(self._entries)

    def refusal(self, name: object) -> str:
        return f"{name!r} is not a registered {self.field}; allowed: {', '.join(self.names)}"

    def check(self, name: str) -> str:
        """The name, or the one-line refusal a config field raises."""
        if name not in self:
            raise ValueError(self.refusal(name))
        return name

    def build(self, name: str, *args, **kwargs) -> Any:
        """The implementation's ``from_config(*args, **kwargs)``."""
        return self[name].load().from_config(*args, **kwargs)


FAMILIES = Registry("model family", "mtlsweep.families", [
    Entry("cnn", "mtlsweep.training.run:run_cnn",
          "the sharing continuum: towers, branched and hard trunks, soft couplings", kind="cnn"),
    Entry("motif_gbm", "mtlsweep.training.run:run_motif_gbm",
          "JASPAR motif scores + gradient-boosted trees (gbm:)", kind="reference", label="motif_gbm", section="gbm"),
    Entry("kmer_linear", "mtlsweep.training.run:run_kmer_linear",
          "k-mer counts of both strands + logistic regression (kmer:)", kind="reference", label="kmer_linear",
          section="kmer"),
])

COUPLINGS = Registry("coupling", "mtlsweep.couplings", [
    Entry("none", "", "no coupling", kind="none"),
    Entry("l2", "mtlsweep.models.couplings:spread", "λ·Σ_t‖W_t − mean_t W‖²: pulls the towers toward each other",
          kind="penalty", label="soft"),
    Entry("trace_norm", "mtlsweep.models.couplings:nuclear",
          "λ·nuclear norm of the towers' differences (task-axis unfolding, centred)", kind="penalty", label="soft"),
    Entry("cross_stitch", "mtlsweep.models.couplings:CrossStitch",
          "a learned T×T mix of the towers' activations after each tower layer", kind="mixing", label="soft"),
    Entry("l2_zero", "mtlsweep.models.couplings:magnitude",
          "the control of l2: the same pull toward zero instead of the towers' mean (no sharing)",
          kind="penalty", label="control"),
])

ORDERINGS = Registry("ordering", "mtlsweep.orderings", [
    Entry("joint", "mtlsweep.schedules.base:Joint", "every task at every step"),
    Entry("task_per_epoch", "mtlsweep.schedules.orderings:TaskPerEpoch", "one task at a time, in blocks of each epoch"),
    Entry("round_robin", "mtlsweep.schedules.orderings:RoundRobin", "one task per step, in turn"),
    Entry("curriculum", "mtlsweep.schedules.orderings:Curriculum", "tasks enter in order, each from its epoch on"),
    Entry("annealed", "mtlsweep.schedules.orderings:Annealed",
          "sampling probability ∝ n_t^α, α annealed from 1 towards schedule.anneal_floor"),
    Entry("group_blocks", "mtlsweep.schedules.orderings:GroupCycle",
          "one task group per block of an epoch (groups from model.sharing.groups)"),
    Entry("group_round_robin", "mtlsweep.schedules.orderings:GroupCycle", "one task group per step"),
])

WEIGHTINGS = Registry("weighting", "mtlsweep.weightings", [
    Entry("equal", "mtlsweep.schedules.weighting:Equal", "the sum of the scheduled task losses"),
    Entry("uncertainty", "mtlsweep.schedules.weighting:Uncertainty", "learned homoscedastic uncertainty (Kendall 2018)"),
    Entry("gradnorm", "mtlsweep.schedules.weighting:GradNorm", "task weights balancing gradient norms (Chen 2018)",
          kind="shared"),
    Entry("pcgrad", "mtlsweep.schedules.weighting:PCGrad", "conflicting task gradients projected (Yu 2020)",
          kind="shared"),
    Entry("famo", "mtlsweep.schedules.weighting:FAMO", "fast adaptive multitask optimization, O(1) in T (Liu 2023)"),
    Entry("random", "mtlsweep.schedules.weighting:RandomLoss",
          "random loss weights, softmax of N(0, 1) draws each step, seeded by train.seed (Lin 2021)"),
    Entry("fixed", "mtlsweep.schedules.weighting:Fixed", "fixed per-task loss weights from schedule.task_weights"),
    # TorchJD aggregators of the counted tasks' Jacobian on the shared parameters (kind "shared":
    # they need model.sharing.shared_layers >= 1); schedules/jacobian_weighting.py.
    Entry("upgrad", "mtlsweep.schedules.jacobian_weighting:UPGrad",
          "each task gradient projected onto the dual cone of all, averaged (Quinton 2024)", kind="shared"),
    Entry("dualproj", "mtlsweep.schedules.jacobian_weighting:DualProj",
          "the mean gradient projected onto the dual cone of the task gradients (Lopez-Paz 2017)", kind="shared"),
    Entry("mgda", "mtlsweep.schedules.jacobian_weighting:MGDA",
          "minimum-norm convex combination of the task gradients (Désidéri 2012, Sener 2018)", kind="shared"),
    Entry("imtl_g", "mtlsweep.schedules.jacobian_weighting:IMTLG",
          "equal projection of the update on every task gradient (Liu 2021, IMTL-G)", kind="shared"),
    Entry("aligned_mtl", "mtlsweep.schedules.jacobian_weighting:AlignedMTL",
          "the Jacobian's singular values equalized before averaging (Senushkin 2023)", kind="shared"),
    Entry("cagrad", "mtlsweep.schedules.jacobian_weighting:CAGrad",
          "conflict-averse: best worst-task gain near the mean gradient, radius schedule.cagrad_c (Liu 2021)",
          kind="shared"),
    Entry("nash_mtl", "mtlsweep.schedules.jacobian_weighting:NashMTL",
          "task weights from a Nash bargaining game, G a = 1/a (Navon 2022)", kind="shared"),
    Entry("fairgrad", "mtlsweep.schedules.jacobian_weighting:FairGrad",
          "alpha-fair task utilities, schedule.fairgrad_alpha (Ban 2024)", kind="shared"),
    Entry("graddrop", "mtlsweep.schedules.jacobian_weighting:GradDrop",
          "per coordinate, gradients of one sign dropped at random by sign purity (Chen 2020)", kind="shared"),
    Entry("conflict_free", "mtlsweep.schedules.jacobian_weighting:ConFIG",
          "ConFIG: the direction of equal cosine to every task gradient (Liu 2024)", kind="shared"),
])

REGISTRIES = {"model.family": FAMILIES, "model.sharing.coupling": COUPLINGS, "schedule.order": ORDERINGS,
              "schedule.weighting": WEIGHTINGS}


def registry_of(field: str) -> Optional[Registry]:
    return REGISTRIES.get(field)
