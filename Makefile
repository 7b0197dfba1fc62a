# medseg: two commands for a new user on Debian/Ubuntu with Python >= 3.10.
#   make demo   run the demo pipeline on the bundled demo cohort, then put its report's excerpt
#               into README.md (make readme-report)
#   make test   run the test suite (installs Xvfb + Mesa for the napari tests, dicom3tools and
#               Orthanc with its DICOMweb plugin for the PACS tests, when missing)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medseg-installed
APT_PACKAGES := xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 \
	libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xfixes0 libxcb-shape0 libdbus-1-3 libfontconfig1 dicom3tools orthanc orthanc-dicomweb

.PHONY: demo readme-report test flake-hunt install system-deps clean-demo napari-screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first: sam2 builds against the installed torch (no build isolation, no CUDA toolkit needed).
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip setuptools wheel
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install hydra-core iopath
	SAM2_BUILD_CUDA=0 $(BIN)/pip install --no-build-isolation sam2==1.1.0
	$(BIN)/pip install -e ".[napari,distributed,data,dev]"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages for the tests (napari, dciodvfy, Orthanc): $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# one pytest worker per core of a 2-core machine, each on 1 torch thread (tests/conftest.py); a test
# module stays in one worker, so its fixtures (the trained models) are built once. WORKERS=0: one process.
WORKERS  ?= 2
PARALLEL := -n $(WORKERS) --dist loadfile
test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -rs --durations=15 $(PARALLEL)

# the slow tests (or ARGS) N times in fresh processes, torch threads 1 and 2 in turn, another seed each run
N    ?= 10
ARGS ?= -m slow
flake-hunt: install system-deps
	$(BIN)/python benchmarks/flake_hunt.py --runs $(N) -- $(PARALLEL) $(ARGS)

demo: install
	$(BIN)/medseg demo-data data_manifests
	$(BIN)/medseg run pipelines/demo.yaml --out results/demo
	$(MAKE) readme-report

# the README's sample report: an excerpt of results/demo/report.md between its sample-report markers
readme-report:
	$(BIN)/python docs/readme_report.py results/demo/report.md README.md

# the README's napari pictures (docs/napari*.png), on a virtual 1600x1000 screen
napari-screenshots: install system-deps
	xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/python docs/napari_screenshots.py

clean-demo:
	rm -rf results/demo data_manifests/demo data_manifests/real
