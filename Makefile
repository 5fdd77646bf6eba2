# The README's two set-up commands. Both create .venv if it is missing.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: demo test

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

demo: .venv/.installed
	.venv/bin/mtlsweep demo

test: .venv/.installed
	$(PY) -m pytest -q
