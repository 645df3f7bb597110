# `sam build` calls build-SharedLayer for the layer (BuildMethod: makefile).
# The layer carries the babychain package from shared/ and the runtime dependencies from layers/requirements.txt.
build-SharedLayer:
	mkdir -p "$(ARTIFACTS_DIR)/python"
	cp -r shared/babychain "$(ARTIFACTS_DIR)/python/"
	python -m pip install -r layers/requirements.txt -t "$(ARTIFACTS_DIR)/python" \
		--platform manylinux2014_aarch64 --implementation cp --python-version 3.13 --only-binary=:all:

.PHONY: build-SharedLayer
