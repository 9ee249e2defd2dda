# make demo : the main job on a fresh machine (sets itself up)
# make test : the whole test suite (sets itself up)
PY := .venv/bin/python
SRCS := $(shell find csrc -name '*.cc' -o -name '*.h' -o -name '*.cu') setup.py

.PHONY: venv build test demo clean

venv: .venv/.ready
.venv/.ready: scripts/setup_env.sh
	bash scripts/setup_env.sh
	touch $@

# Editable install: hcomm/_C*.so is built in place, hcomm.parallel maps to parallel/.
build: .venv/.built
.venv/.built: .venv/.ready $(SRCS) pyproject.toml
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

test: build
	$(PY) -m pytest -q tests

demo: build
	$(PY) -m hcomm.demo

clean:
	rm -rf build .venv *.egg-info hcomm/_C*.so
