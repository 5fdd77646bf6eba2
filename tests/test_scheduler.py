"""FamilyASHA: trials judged only against their own family, and only once every task has entered."""
from ray.tune.schedulers import TrialScheduler

from mtlsweep.search.scheduler import ENTERED, FamilyASHA


class Trial:
    def __init__(self, trial_id, family):
        self.trial_id = trial_id
        self.config = {"family": family}


def _sched(**kw):
    return FamilyASHA(lambda c: c["family"], n_tasks=4, metric="val/auroc_mean", mode="max", max_t=8,
                      grace_period=1, reduction_factor=2, **kw)


def _report(s, trial, epoch, auroc, entered=4):
    return s.on_trial_result(None, trial, {"training_iteration": epoch, "val/auroc_mean": auroc, ENTERED: entered})


def test_a_family_is_only_judged_against_itself():
    s = _sched()
    towers = [Trial(f"t{i}", "single") for i in range(3)]
    hard = [Trial(f"h{i}", "hard") for i in range(3)]
    for t in towers + hard:
        s.on_trial_add(None, t)
    for t, a in zip(towers, (0.90, 0.91, 0.92)):
        assert _report(s, t, 1, a) == TrialScheduler.CONTINUE
    # Far below every tower at the same rung, but the best hard trial so far: not stopped.
    assert _report(s, hard[0], 1, 0.60) == TrialScheduler.CONTINUE
    assert _report(s, hard[1], 1, 0.62) == TrialScheduler.CONTINUE
    # Below the hard family's own cutoff: stopped.
    assert _report(s, hard[2], 1, 0.50) == TrialScheduler.STOP
    assert s.family_of_trial("h2") == "hard"


def test_a_warm_start_is_not_judged_before_all_tasks_entered():
    s = _sched()
    joint = [Trial(f"j{i}", "hard") for i in range(3)]
    warm = Trial("warm", "hard")
    for t in [*joint, warm]:
        s.on_trial_add(None, t)
    for t, a in zip(joint, (0.80, 0.81, 0.82)):
        _report(s, t, 1, a)
        _report(s, t, 2, a + 0.02)
    # One task of four trained: chance AUROC for the others, far below every joint trial.
    assert _report(s, warm, 1, 0.55, entered=1) == TrialScheduler.CONTINUE
    assert _report(s, warm, 2, 0.56, entered=1) == TrialScheduler.CONTINUE
    assert s.deferred("warm") == 2
    # Once every task is in, it is judged like any other trial at its rung.
    assert _report(s, warm, 3, 0.50) == TrialScheduler.STOP


def test_plain_results_without_the_entry_count_are_judged_at_once():
    s = _sched()
    trials = [Trial(f"x{i}", "soft") for i in range(3)]
    for t in trials:
        s.on_trial_add(None, t)
    r = {"training_iteration": 1}
    assert s.on_trial_result(None, trials[0], {**r, "val/auroc_mean": 0.9}) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, trials[1], {**r, "val/auroc_mean": 0.95}) == TrialScheduler.CONTINUE
    assert s.on_trial_result(None, trials[2], {**r, "val/auroc_mean": 0.5}) == TrialScheduler.STOP
    s.on_trial_complete(None, trials[0], {**r, "val/auroc_mean": 0.9})
