# dlpipe developer entry points. `make demo` runs the main job, `make test` the tests.
VENV ?= .venv
GPU ?= 0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlpipe-installed-gpu$(GPU)

.PHONY: install install-gpu test test-fast demo bench lint format clean

install: $(STAMP)

# Re-runs only when the inputs of the install change, so a second `make install` takes seconds.
$(STAMP): pyproject.toml constraints.txt tools/install.sh
	@rm -f $(VENV)/.dlpipe-installed-gpu*
	bash tools/install.sh $(VENV) $(GPU)
	@touch $@

install-gpu:
	$(MAKE) install GPU=1

# One pytest worker per core (at most 4): most tests are start-up, file and subprocess work that a
# second core overlaps. Workers keep torch's default threads: parity tolerances were measured so.
test: install
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

demo: install
	$(VENV)/bin/dlpipe run pipelines/quickstart.yaml

# Each script measures dlpipe against a baseline side by side and writes benchmarks/results/.
# Together they take a few hours on 2 cores (bench_quality about 2 h); the soak test (benchmarks/soak.py) is separate.
bench: install
	$(PY) benchmarks/bench_onnx_cpu.py
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_gan.py
	$(PY) benchmarks/bench_ae.py --quickstart
	$(PY) benchmarks/bench_scaleout.py
	$(PY) benchmarks/bench_quality.py
	$(PY) benchmarks/bench_data.py --n 20000 --size 192 --open-n 100000
	$(PY) benchmarks/bench_plan.py --stages 1000,10000

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: install
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache build dist src/*.egg-info
	find exports -mindepth 1 ! -name .gitkeep -delete
