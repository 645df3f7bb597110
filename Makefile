# Lambda layers, built without Docker: the babychain package is copied, the dependencies are installed from
# platform wheels for the template's runtime (python3.13) and architecture (arm64), whatever machine runs this.
#
#   sam build                 calls build-SharedLayer and build-DependenciesLayer (BuildMethod: makefile) with
#                             ARTIFACTS_DIR set; each target fills $(ARTIFACTS_DIR)/python (Lambda's /opt/python).
#   make layers               builds both into build/layers/{shared,dependencies}/python, without SAM.
#   make layer-check          checks the built layers hold every runtime import of every handler; reports sizes.
#   make lock                 (maintainers) regenerates layers/requirements.lock from the requirement files with uv.
#   make openapi              regenerates docs/openapi.json from the code (a test fails when it is stale).
#   make swagger-ui           (maintainers) refreshes the Swagger UI files the local runner serves at /docs from the npm
#                             package swagger-ui-dist (SWAGGER_UI_VERSION); they are committed, so running needs no npm.
#
# Variables: PYTHON (the interpreter whose pip downloads the wheels), LAYERS_DIR (where `make layers` builds),
# LAYER_COMPILE_PYTHON (a Python 3.13 that compiles the layers' bytecode; found on PATH, in pyenv or uv when unset),
# LAYER_PYC (1; 0 ships no bytecode: slower cold starts), UV and LOCK_FLAGS (for `make lock`; LOCK_FLAGS=--upgrade
# moves every pin to the newest release).

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
PYTHON ?= python3
LAYERS_DIR ?= $(ROOT)/build/layers
UV ?= uv
LOCK_FLAGS ?=
SWAGGER_UI_VERSION ?= 5.35.0
SWAGGER_UI_DIR := $(ROOT)/shared/babychain/local/swagger_ui
SWAGGER_UI_FILES := swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png \
	LICENSE NOTICE package.json

# The template's Globals: Runtime python3.13, Architectures [arm64]. The python3.13 runtime runs on Amazon Linux
# 2023 (glibc 2.34), so any manylinux wheel up to manylinux_2_34 runs there. pip does not widen a manylinux_2_x
# platform to the older ones, so every glibc level is listed (psycopg-binary 3.3 ships manylinux_2_28 aarch64 only).
LAYER_PYTHON_VERSION := 3.13
LAYER_ARCH := aarch64
LAYER_GLIBC_MINORS := 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34
LAYER_PLATFORMS := --platform manylinux2014_$(LAYER_ARCH) \
	$(foreach m,$(LAYER_GLIBC_MINORS),--platform manylinux_2_$(m)_$(LAYER_ARCH))
# The build installs exactly layers/requirements.lock: every distribution pinned with its hashes, no resolution at
# build time (--no-deps), so two builds are identical. `make lock` writes it from the human-edited inputs
# (requirements.txt: what every handler imports; requirements-optional.txt: what configuration switches on), resolved
# for CPython 3.13 on Linux aarch64 / glibc 2.34, leaving out what the Lambda runtime provides (runtime-provided.txt:
# boto3, botocore, s3transfer) and whatever only they need.
LAYER_LOCK := $(ROOT)/layers/requirements.lock
# --only-binary: never build an sdist on this machine (it would be for the wrong platform).
# --no-compile: pip would write .pyc files for the build interpreter's version, useless on 3.13 (compile_layer writes
# the runtime's).
PIP_LAYER_FLAGS := $(LAYER_PLATFORMS) --implementation cp --python-version $(LAYER_PYTHON_VERSION) \
	--only-binary=:all: --no-compile --no-warn-script-location --no-warn-conflicts --disable-pip-version-check

# Drops what the runtime never reads: bytecode caches of other interpreters and console scripts (their shebangs name
# the build machine's interpreter). The *.dist-info folders stay: the layer check maps distributions to import names
# with them.
define strip_layer
	find "$(1)" -depth -type d -name __pycache__ -exec rm -rf {} +
	find "$(1)" -type f -name '*.py[co]' -delete
	rm -rf "$(1)/bin"
endef

# Bytecode for the runtime: Lambda mounts the layers read-only, so Python cannot cache what it compiles there, and a
# layer without .pyc files compiles every module it imports on every cold start (2 to 3 times the import time). Each
# module is compiled by a Python of the runtime's version (the cache tag, cpython-313, must match), as an
# unchecked-hash .pyc: used without looking at the source's timestamp, which a zip does not keep anyway. -d names
# the files as Lambda sees them (/opt/python/...) in the code objects, and PYTHONHASHSEED=0 fixes the order of
# constant sets, so two builds write the same bytes. -S: no site hooks of the compiling interpreter.
LAYER_PYC ?= 1
LAYER_CACHE_TAG := cpython-$(subst .,,$(LAYER_PYTHON_VERSION))
LAYER_COMPILE_PYTHON ?= $(shell $(PYTHON) "$(ROOT)/layers/find_python.py" $(LAYER_PYTHON_VERSION) 2>/dev/null)
define compile_layer
	@if [ "$(LAYER_PYC)" != 1 ]; then echo "LAYER_PYC=$(LAYER_PYC): $(1) ships no bytecode"; exit 0; fi; \
	compile_python="$(LAYER_COMPILE_PYTHON)"; \
	tag=$$("$${compile_python:-false}" -S -c 'import sys; print(sys.implementation.cache_tag)' 2>/dev/null); \
	if [ "$$tag" != "$(LAYER_CACHE_TAG)" ]; then \
		echo "The layers' bytecode needs a CPython $(LAYER_PYTHON_VERSION) (cache tag $(LAYER_CACHE_TAG));" \
			"LAYER_COMPILE_PYTHON='$$compile_python' is not one. Install one (pyenv install $(LAYER_PYTHON_VERSION)," \
			"uv python install $(LAYER_PYTHON_VERSION)) or set LAYER_COMPILE_PYTHON=/path/to/python$(LAYER_PYTHON_VERSION);" \
			"LAYER_PYC=0 builds without bytecode (cold starts import 2 to 3 times slower)." >&2; \
		exit 2; \
	fi; \
	echo "compiling $(1) with $$compile_python"; \
	PYTHONHASHSEED=0 "$$compile_python" -S -m compileall -q -j 0 --invalidation-mode unchecked-hash -d /opt/python "$(1)"
endef

build-SharedLayer:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it; or use: make layers)"; exit 2; }
	rm -rf "$(ARTIFACTS_DIR)/python"
	mkdir -p "$(ARTIFACTS_DIR)/python"
	cp -R "$(ROOT)/shared/babychain" "$(ARTIFACTS_DIR)/python/"
	# GET /api/v1/openapi.json serves the committed document (babychain.api.openapi); Swagger UI is the local shape's.
	cp "$(ROOT)/docs/openapi.json" "$(ARTIFACTS_DIR)/python/babychain/api/openapi.json"
	rm -rf "$(ARTIFACTS_DIR)/python/babychain/local/swagger_ui"
	$(call strip_layer,$(ARTIFACTS_DIR)/python)
	$(call compile_layer,$(ARTIFACTS_DIR)/python)

build-DependenciesLayer:
	@test -n "$(ARTIFACTS_DIR)" || { echo "ARTIFACTS_DIR is not set (sam build sets it; or use: make layers)"; exit 2; }
	rm -rf "$(ARTIFACTS_DIR)/python"
	mkdir -p "$(ARTIFACTS_DIR)/python"
	$(PYTHON) -m pip install --quiet --require-hashes --no-deps -r "$(LAYER_LOCK)" --target "$(ARTIFACTS_DIR)/python" \
		$(PIP_LAYER_FLAGS)
	$(call strip_layer,$(ARTIFACTS_DIR)/python)
	$(call compile_layer,$(ARTIFACTS_DIR)/python)

layers:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -f "$(ROOT)/Makefile" build-SharedLayer ARTIFACTS_DIR="$(LAYERS_DIR)/shared" && \
	$(MAKE) --no-print-directory -f "$(ROOT)/Makefile" build-DependenciesLayer \
		ARTIFACTS_DIR="$(LAYERS_DIR)/dependencies" && \
	echo "Built $(LAYERS_DIR)/{shared,dependencies}/python in $$(( $$(date +%s) - start )) s:" && \
	du -sh "$(LAYERS_DIR)/shared" "$(LAYERS_DIR)/dependencies"

layer-check:
	$(PYTHON) "$(ROOT)/layers/check_layer.py" "$(LAYERS_DIR)"

# A maintainer step, not part of the build or CI (needs uv: pip install uv). uv reads no pip configuration: it
# resolves against its default index only. --overrides with never-true markers removes the runtime's packages from the
# resolution, and with them what only they need. An existing lock's pins are kept unless LOCK_FLAGS=--upgrade.
lock:
	cd "$(ROOT)" && $(UV) pip compile layers/requirements.txt layers/requirements-optional.txt \
		--overrides layers/runtime-provided.txt \
		--python-platform $(LAYER_ARCH)-manylinux_2_34 --python-version $(LAYER_PYTHON_VERSION) \
		--only-binary :all: --generate-hashes --custom-compile-command "make lock" \
		--output-file layers/requirements.lock $(LOCK_FLAGS)

openapi:
	cd "$(ROOT)" && PYTHONPATH="$(ROOT)/shared" $(PYTHON) -m babychain.api.openapi > docs/openapi.json.new && \
		mv docs/openapi.json.new docs/openapi.json

swagger-ui:
	tmp=$$(mktemp -d) && cd "$$tmp" && npm pack --silent "swagger-ui-dist@$(SWAGGER_UI_VERSION)" >/dev/null && \
	tar xzf swagger-ui-dist-*.tgz && mkdir -p "$(SWAGGER_UI_DIR)" && \
	(cd package && cp $(SWAGGER_UI_FILES) "$(SWAGGER_UI_DIR)/") && rm -rf "$$tmp"

.PHONY: build-SharedLayer build-DependenciesLayer layers layer-check lock openapi swagger-ui
