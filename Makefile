# The README's two set-up commands. Both create .venv if it is missing.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: demo test test-cluster

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,docs]'
	touch $@

demo: .venv/.installed
	.venv/bin/mtlsweep demo

# Two pytest runs (the cluster-launcher test's `ray stop` would end the first run's Ray cluster; it
# skips, with the reason, without root, openssh-server and rsync) and the docs site, strict: a
# broken link or a page left out of its navigation fails.
test: .venv/.installed
	$(PY) -m pytest -q
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
	$(PY) -m pytest -q -m cluster_launcher tests/test_cluster_launcher.py

test-cluster: .venv/.installed
	$(PY) -m pytest -q -m cluster_launcher tests/test_cluster_launcher.py
