# The README's two set-up commands. Both create .venv if it is missing.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: demo test test-cluster

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

demo: .venv/.installed
	.venv/bin/mtlsweep demo

# Two pytest runs: the cluster-launcher test's `ray stop` would end the first run's Ray cluster.
# It skips (with the reason) without root, openssh-server and rsync.
test: .venv/.installed
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m cluster_launcher tests/test_cluster_launcher.py

test-cluster: .venv/.installed
	$(PY) -m pytest -q -m cluster_launcher tests/test_cluster_launcher.py
