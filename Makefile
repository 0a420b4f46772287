# make demo : set up .venv and run both steps on the bundled demo volume
# make test : set up .venv and run the whole test suite
# GPU=1 installs TensorFlow's CUDA build instead of the CPU build.
PYTHON_BASE ?= python3
VENV        := .venv
PYTHON      := $(VENV)/bin/python
GPU         ?= 0
TF_EXTRA    := $(if $(filter 1,$(GPU)),gpu,cpu)
STAMP       := $(VENV)/.installed-$(TF_EXTRA)
DEMO_DIR    := demo_data
# the demo volume is small: cut it finer than the defaults so that blocks, tiles and chunks
# really meet at boundaries
DEMO_LOCAL  := --set prediction.block_shape=[64,128,128]
DEMO_HPC    := --set nms.tile_shape=[null,128,128] --set labeling.chunk_shape=[32,128,128]
# pytest worker processes; each test module runs whole on one of them (--dist loadscope), so
# module fixtures (a Dask client, the SLURM cluster) are made once
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PYTHON_BASE) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[$(TF_EXTRA),test]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PYTHON) -m stardist_hpc.demo data $(DEMO_DIR)
	$(PYTHON) local_prediction.py local_template.yaml $(DEMO_LOCAL)
	$(PYTHON) hpc_prediction.py hpc_prediction_template.yaml $(DEMO_HPC)
	$(PYTHON) -m stardist_hpc.demo summary $(DEMO_DIR) output/label.h5

test: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

clean:
	rm -rf output $(DEMO_DIR) .pytest_cache
