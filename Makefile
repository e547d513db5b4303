# lightning_sep: `make demo` (set up, build the demo data, train, test, print the table) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Debian packages the recipes read their sounds from (installed when run as root): the speech demo's, then
# fluidsynth + a soundfont (demo-chorales), ffmpeg (MUSDB18's .stem.mp4 files; the tests make such files) and the
# Tux Paint stamps (demo-urban)
DEMO_DEB_PACKAGES := asterisk-core-sounds-en-wav openttd-opensfx simutrans-pak64 pocketsphinx-testdata espeak-ng
DEB_PACKAGES := $(DEMO_DEB_PACKAGES) libfluidsynth3 timgm6mb-soundfont ffmpeg tuxpaint-stamps-default
PYTEST_ARGS ?=

.PHONY: install debian debian-demo demo demo-nes demo-masknet bench-masknet-ablations demo-weaksep test test-fast \
	bench lint constraints clean

install: $(VENV)/.installed debian

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $@

debian:
	@$(call apt_install,$(DEB_PACKAGES))

debian-demo:
	@$(call apt_install,$(DEMO_DEB_PACKAGES))

# the missing ones of the packages $(1), or the apt-get line to run when not root
define apt_install
missing=""; for p in $(1); do \
  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
if [ -n "$$missing" ]; then \
  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
  else echo "lightning_sep needs Debian packages. Run as root:"; echo "  apt-get install -y$$missing"; exit 1; fi; \
fi
endef

demo: $(VENV)/.installed debian-demo
	$(BIN)/lightning-sep demo

# NES beside its baselines on demo-speech-noise: the bound, NES, GLO masking and NES-FT (CPU: about an hour)
demo-nes: $(VENV)/.installed debian-demo
	$(BIN)/lightning-sep demo --suite nes

# the music methods on demo-chorales: the supervised bound, NES and MaskNet side by side (CPU: about 90 minutes)
demo-masknet: $(VENV)/.installed debian
	$(BIN)/lightning-sep demo --suite chorales

# MaskNet with each row of its paper's ablation table on demo-chorales: median SDR and SIR of the vocals, each row
# against the full loss (CPU: about four and a half hours)
bench-masknet-ablations: $(VENV)/.installed debian
	$(BIN)/lightning-sep demo --suite masknet-ablations

# WeakSep on demo-urban: the classifier, the supervised bound and WeakSep with clip- and frame-level labels (CPU: about
# an hour)
demo-weaksep: $(VENV)/.installed debian
	$(BIN)/lightning-sep demo --suite urban

# fast tests and the slow (end-to-end) tier
test: install
	WANDB_MODE=offline $(BIN)/python -m pytest -m "slow or not slow" $(PYTEST_ARGS)

test-fast: install
	WANDB_MODE=offline $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	mkdir -p runs/bench
	$(BIN)/python benchmarks/loader.py --json runs/bench/loader.json
	$(BIN)/python benchmarks/metrics.py --json runs/bench/metrics.json
	$(BIN)/python benchmarks/overhead.py --json runs/bench/overhead.json
	$(BIN)/python benchmarks/nes.py --json runs/bench/nes.json

lint: install
	$(BIN)/ruff check lightning_sep tests benchmarks

# re-pin every installed package (after changing setup.cfg)
constraints:
	$(BIN)/pip freeze --exclude-editable | sed -e 's/^torch==/torch===/' -e 's/^torchaudio==/torchaudio===/' \
	  -e 's/^torchvision==/torchvision===/' | grep -v '^pip==' > constraints.body
	{ head -3 constraints.txt; cat constraints.body; } > constraints.new && rm constraints.body && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) runs *.egg-info
