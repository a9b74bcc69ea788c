# fundusfm: `make run` runs the demo study, `make test` the test suite.
# Both create .venv and install the project into it on first use.

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CORES  ?= all
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: run test test-integration report dry-run lint fmt clean bench check-results

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test,dvc]'
	@touch $(STAMP)

## run: the whole study on the embedded synthetic demo, then the HTML report
run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) $(SMK)
	$(VENV)/bin/snakemake --cores 1 --report results/report.html $(SMK)

## test: the test suite (unit tests and end-to-end Snakemake runs on a tiny config)
test: $(STAMP)
	$(PY) -m pytest -m "not integration" $(PYTEST)

## test-integration: real services: a single-node SLURM cluster, DVC remotes, an MLflow server
test-integration: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider -rs tests/integration $(PYTEST)

## check-results: every file of results/ against the digests and records the study wrote (what Snakemake cannot see)
check-results: $(STAMP)
	$(VENV)/bin/fundusfm check-results --results results --config config/config.yaml

report: $(STAMP)
	$(VENV)/bin/snakemake --cores 1 --report results/report.html $(SMK)

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --cores $(CORES) $(SMK)

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint --cores 1
	$(VENV)/bin/snakefmt --check Snakefile rules/

fmt: $(STAMP)
	$(VENV)/bin/snakefmt Snakefile rules/

bench: $(STAMP)
	bash benchmarks/demo_walltime.sh

clean:
	rm -rf results .snakemake
