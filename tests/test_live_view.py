"""The sweep's live view and where the libraries' lines go (no Ray cluster: Tune's trials are
stood in for by objects with the attributes the callback reads)."""
import io
import logging
import warnings
from types import SimpleNamespace

import optuna
from rich.console import Console

from mtlsweep.search import live_view
from mtlsweep.search.experiment import planned_trials
from mtlsweep.search.grid import GridSpace
from mtlsweep.search.library_logs import LibraryLogs
from mtlsweep.search.live_view import LiveTrials, SweepView
from mtlsweep.search.space import SearchSpace


def _trial(status, family, epoch=0, **result):
    return SimpleNamespace(status=status, config={"family": family},
                           last_result={"epoch": epoch, **result} if epoch else {})


def _view(buf):
    return SweepView("sweep s", console=Console(file=buf, width=120, force_terminal=False, highlight=False),
                     footer="log: ws/logs/s.log")


def test_trials_are_counted_per_family_with_the_best_against_the_baseline_and_written_once_to_a_file():
    buf = io.StringIO()
    with _view(buf) as view:
        cb = LiveTrials("trials", {"hard": 2, "soft": 2}, max_epochs=10)
        trials = [_trial("TERMINATED", "hard", 10, **{"cert/converged": 1.0}), _trial("RUNNING", "hard", 5),
                  _trial("ERROR", "soft", 2), _trial("TERMINATED", "soft", 3)]    # the last stopped by ASHA
        cb.on_trial_result(0, trials, trials[0], {"val/auroc_mean": 0.81, "val/delta_auroc_mean": -0.01})
        cb.on_trial_result(0, trials, trials[1], {"val/auroc_mean": 0.85, "val/delta_auroc_mean": 0.02})
        cb.on_trial_result(0, trials, trials[1], {"val/auroc_mean": 0.84, "val/delta_auroc_mean": 0.01})
        cb.on_step_end(1, trials)
        view.log("a message above the view")
        hard, soft = view.stages[0].arms["hard"], view.stages[0].arms["soft"]
        assert (hard.done, hard.running, hard.pending, hard.best, hard.delta) == (1, 1, 0, 0.85, 0.02)
        assert (soft.failed, soft.stopped, soft.pending) == (1, 1, 0)
        assert view.stages[0].eta_s() is not None           # 1.5 of 2 hard, 2 of 2 soft trials' worth done
    out = buf.getvalue()
    assert "a message above the view" in out
    assert out.count("sweep s") == 1                        # on a file: the final state only, once
    assert "0.850" in out and "+0.020" in out and "1/2" in out and "log: ws/logs/s.log" in out
    assert live_view.ACTIVE is None


def test_a_restored_callback_draws_on_the_new_view():
    import pickle
    cb = LiveTrials("baseline search", {"towers": 3}, max_epochs=4, fixed_arm="towers")
    cb.setup()                                        # no view: nothing to draw on, nothing fails
    with _view(io.StringIO()) as view:
        again = pickle.loads(pickle.dumps(cb))
        again.on_step_end(0, [_trial("RUNNING", None, 2)])
        assert view.stages[0].name == "baseline search" and view.stages[0].arms["towers"].running == 1


def test_planned_trials_follow_families_in_turn_and_grid_variants(tmp_path):
    space = SearchSpace(dims=[], families={"hard": {}, "soft": {}, "branched": {}})
    assert planned_trials(space, 7) == {"hard": 3, "soft": 2, "branched": 2}
    assert planned_trials(space, 7, arm="towers") == {"towers": 7}
    grid = GridSpace(variants={"a": {}, "b": {}}, grid={"train.seed": [0, 1, 2]})
    assert planned_trials(grid, 2) == {"a": 6, "b": 6}


def test_library_lines_go_to_the_log_file_and_own_warnings_are_said_once(tmp_path, capsys):
    said = []
    path = tmp_path / "logs" / "s.log"
    ray_logger = logging.getLogger("ray.tune.tune_controller")
    import ray  # noqa: F401 - its own handlers, as a sweep's driver has them
    before = list(logging.getLogger("ray").handlers)
    with LibraryLogs(path, say=said.append):
        ray_logger.warning("Trial run_trial_1 errored")
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        optuna.logging.get_logger("optuna").info("A new study created in memory")
        warnings.warn("store.h5: task t0 has 3 positives", stacklevel=1)         # mtlsweep's own, from this tree
        warnings.warn("store.h5: task t0 has 3 positives", stacklevel=1)
        warnings.warn("Argument group is an experimental feature", optuna.exceptions.ExperimentalWarning)
        warnings.warn("old API", DeprecationWarning)
    log = path.read_text()
    assert "Trial run_trial_1 errored" in log and "Creating initial MLflow database tables" in log
    assert "A new study created" in log and "experimental feature" in log
    assert said == ["mtlsweep: warning: store.h5: task t0 has 3 positives"]
    captured = capsys.readouterr()
    assert "errored" not in captured.out + captured.err and "study" not in captured.out + captured.err
    # put back as it was
    assert logging.getLogger("ray").handlers == before
