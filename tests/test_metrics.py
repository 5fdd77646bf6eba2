import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, log_loss, roc_auc_score

from mtlsweep.training.loss import masked_bce_per_task
from mtlsweep.training.metrics import task_metrics


def _data(seed=0, n=400, t=7):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, t)) < 0.25).astype(np.int8)
    probs = np.round(np.clip(rng.random((n, t)) * 0.8 + 0.2 * labels, 0, 1), 2)  # rounding makes ties
    labels[rng.random((n, t)) < 0.15] = -1
    return probs.astype(np.float32), labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn_with_unknowns_and_ties(seed):
    probs, labels = _data(seed)
    m = task_metrics(probs, labels)
    for t in range(labels.shape[1]):
        k = labels[:, t] >= 0
        y, p = labels[k, t], probs[k, t].astype(np.float64)
        assert m.auroc[t] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert m.auprc[t] == pytest.approx(average_precision_score(y, p), abs=1e-12)
        assert m.accuracy[t] == pytest.approx(accuracy_score(y, p >= 0.5))
        assert m.loss[t] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]), rel=1e-6)


def test_undefined_tasks_are_nan_not_half():
    probs, labels = _data()
    labels[:, 0] = np.where(labels[:, 0] >= 0, 0, -1)   # no positives
    labels[:, 1] = np.where(labels[:, 1] >= 0, 1, -1)   # no negatives
    labels[:, 2] = -1                                     # nothing known
    m = task_metrics(probs, labels)
    assert np.isnan(m.auroc[:3]).all() and np.isnan(m.auprc[:3]).all()
    assert np.isnan(m.loss[2]) and np.isfinite(m.auroc[3:]).all()
    s = m.summary("val/")
    assert s["val/tasks_undefined"] == 3.0
    assert s["val/auroc_mean"] == pytest.approx(np.mean(m.auroc[3:]))


def test_masked_loss_ignores_unknown_labels_and_their_gradient():
    logits = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([[1, 0, 1]] * 6, dtype=torch.float32)
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[:3, 1] = False
    mask[:, 2] = False
    per_task, known = masked_bce_per_task(logits, y, mask)
    assert known.tolist() == [6, 3, 0]
    ref1 = torch.nn.functional.binary_cross_entropy_with_logits(logits[3:, 1], y[3:, 1])
    assert per_task[1].item() == pytest.approx(ref1.item(), rel=1e-6)
    assert per_task[2].item() == 0.0
    per_task.sum().backward()
    assert torch.all(logits.grad[:3, 1] == 0) and torch.all(logits.grad[:, 2] == 0)
    assert torch.all(logits.grad[3:, 1] != 0)
