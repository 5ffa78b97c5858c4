# vit: build, demo, tests, lint, benchmarks.
# `make demo` builds and classifies sample photos; `make test` runs every test.

CARGO       ?= cargo
SHARED      ?= $(or $(VIT_SHARED_DIR),../shared)
HUB_MODEL   ?= google/vit-base-patch16-224
SAMPLES     := assets/samples
VIT         := target/release/vit
PYTHON      ?= python3
VENV        := .venv

.PHONY: build demo samples test lint fmt clean

build:
	$(CARGO) build --release

# Sample photos from scikit-image's wheel on PyPI (BSD-licensed test images).
samples: $(SAMPLES)/.done
$(SAMPLES)/.done:
	@mkdir -p $(SAMPLES) target/samples-wheel
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: \
		--dest target/samples-wheel "scikit-image==0.24.0"
	cd $(SAMPLES) && unzip -o -j -q ../../target/samples-wheel/scikit_image-*.whl \
		'skimage/data/chelsea.png' 'skimage/data/coffee.png' 'skimage/data/rocket.jpg' \
		'skimage/data/astronaut.png' 'skimage/data/motorcycle_left.png'
	@touch $@

# The main job: classify the sample photos with the hub model when the hub is reachable,
# else VIT_MODEL, else the shared DeiT-Tiny; says which it used.
demo: build samples
	@if [ -n "$$VIT_MODEL" ]; then model="$$VIT_MODEL"; why="from VIT_MODEL"; \
	elif curl -s -f -m 5 -o /dev/null "https://huggingface.co/api/models/$(HUB_MODEL)"; then \
		model="$(HUB_MODEL)"; why="the hub default"; \
	elif [ -d "$(SHARED)/models/deit-tiny-patch16-224" ]; then \
		model="$(SHARED)/models/deit-tiny-patch16-224"; why="local: the hub is unreachable"; \
	else echo "demo: the hub is unreachable and no local model: set VIT_MODEL to a model folder" >&2; exit 2; fi; \
	echo "demo: model $$model ($$why)" >&2; \
	$(VIT) classify --model "$$model" --top-k 3 $(SAMPLES)

test:
	$(CARGO) test --release --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(SAMPLES)

# --- GPU builds ---
# Checks of the CUDA build that need no GPU and no CUDA toolkit installed (README, "GPU builds").
# Each uses its own target dir, so the CPU build above is never touched.
#   check-gpu-types  type-check and lint every CUDA and flash-attention code path, with a
#                    stand-in nvcc (.ci/fake-nvcc) and an empty CUTLASS: target/gpu-check
#   check-cuda       compile candle's CUDA kernels with the real nvcc of PyPI's CUDA 13.4 wheels
#                    (installed on first use into target/cuda-venv) and link the cuda build of
#                    vit (dev profile: 60% of a release build's CPU time): target/cuda/debug/vit
#   cuda-smoke       run that binary here and show what it does on a machine without a GPU

GPU_CHECK_FEATURES ?= cuda,flash-attn

.PHONY: check-gpu-types check-cuda cuda-smoke

check-gpu-types:
	sh .ci/gpu-env.sh fake $(CARGO) clippy --all-targets --features $(GPU_CHECK_FEATURES) -- -D warnings

check-cuda:
	sh .ci/gpu-env.sh wheels $(CARGO) build --features cuda --bins

cuda-smoke: check-cuda
	sh .ci/gpu-env.sh wheels sh .ci/cuda-smoke.sh target/cuda/debug/vit
