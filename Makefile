# peftc: C11 library (libpeftc.a, libpeftc.so) and the peftc command-line tool.
CC      ?= cc
OPT     ?= -O2
BLASDIR ?= /usr/lib/x86_64-linux-gnu/openblas-openmp
CFLAGS  += -std=c11 $(OPT) -g -Wall -Wextra -Werror -fopenmp -fPIC \
           -D_GNU_SOURCE -Iinclude -Isrc -I/usr/include/x86_64-linux-gnu/openblas-openmp
# OpenBLAS built for OpenMP shares our OpenMP runtime, so BLAS calls and our own
# parallel loops never oversubscribe the cores.
LDLIBS  += -L$(BLASDIR) -Wl,-rpath,$(BLASDIR) -lopenblas -lutf8proc -ljansson -lpcre2-8 -lm -fopenmp

# MPI (data-parallel `peftc train` under mpirun): on when OpenMPI's mpicc is
# found; `make MPI=0` builds without. Only the CLI's transport (src/cli/mpi.c)
# sees MPI: the library never links it.
MPI ?= $(shell command -v mpicc >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(MPI),1)
MPI_CFLAGS := -DPEFTC_MPI $(shell mpicc --showme:compile)
MPI_LIBS   := $(shell mpicc --showme:link)
endif

LIB_SRC := $(sort $(wildcard src/core/*.c src/io/*.c src/tokenizer/*.c src/kernels/*.c \
                              src/model/*.c src/peft/*.c src/train/*.c))
CLI_SRC := $(sort $(wildcard src/cli/*.c))
# B: the build directory (another one per compiler or sanitizer build:
# `make CC=clang B=build/clang`, make test-asan uses build/asan).
B ?= build
LIB_OBJ := $(LIB_SRC:%.c=$(B)/%.o)
CLI_OBJ := $(CLI_SRC:%.c=$(B)/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(B)/tests/%)
HDRS := include/peftc.h $(wildcard src/*/*.h)
FUZZ_SRC := tests/fuzz/targets.c
FUZZ_HDRS := tests/fuzz/fuzz.h
# the peftc binary sits at the top for the default build only
PEFTC_BIN := $(if $(filter build,$(B)),peftc,$(B)/peftc)

all: $(B)/libpeftc.a $(B)/libpeftc.so $(PEFTC_BIN)

$(B)/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -c $< -o $@

# rebuilt when MPI flips (the stamp holds the setting)
$(B)/mpi.stamp: FORCE
	@mkdir -p $(B)
	@echo "$(MPI)" | cmp -s - $@ || echo "$(MPI)" > $@

$(B)/src/cli/mpi.o: src/cli/mpi.c $(HDRS) $(B)/mpi.stamp
	@mkdir -p $(dir $@)
	@echo "CC $< (MPI=$(MPI))"
	@$(CC) $(CFLAGS) $(MPI_CFLAGS) -c $< -o $@

$(B)/libpeftc.a: $(LIB_OBJ)
	@rm -f $@
	@echo "AR $@"
	@ar rcs $@ $^

$(B)/libpeftc.so: $(LIB_OBJ)
	@echo "LD $@"
	@$(CC) $(CFLAGS) -shared -o $@ $^ $(LDLIBS)

$(PEFTC_BIN): $(CLI_OBJ) $(B)/libpeftc.a $(B)/mpi.stamp
	@echo "LD $@"
	@$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(B)/libpeftc.a $(LDLIBS) $(MPI_LIBS)

$(B)/tests/fuzz_replay: tests/fuzz/replay.c $(FUZZ_SRC) $(FUZZ_HDRS) $(B)/libpeftc.a $(HDRS)
	@mkdir -p $(B)/tests
	$(CC) $(CFLAGS) -Itests/fuzz -o $@ tests/fuzz/replay.c $(FUZZ_SRC) $(B)/libpeftc.a $(LDLIBS)

$(B)/tests/%: tests/%.c $(B)/libpeftc.a $(HDRS) tests/testlib.h
	@mkdir -p $(B)/tests
	$(CC) $(CFLAGS) -Itests -o $@ $< $(B)/libpeftc.a $(LDLIBS)

tests: $(TEST_BIN) $(B)/tests/fuzz_replay

# AddressSanitizer + UndefinedBehaviorSanitizer build (build/asan) of the
# library, the CLI and the unit tests; runs the unit tests, the fuzz replay
# and a few CLI checks (tests/run_asan.sh). LeakSanitizer is on (ASan's).
# (-O1 makes GCC's truncation analysis flag bounded snprintf messages that
# -O2 does not: truncation there is intended, so it is not an error here)
ASAN_FLAGS := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined -Wno-format-truncation
test-asan: test-asan-build
	bash tests/run_asan.sh
# LeakSanitizer (with ASan+UBSan, the same build) over the CLI's commands on
# the tiny BERT and tiny Llama fixtures, successful and failing (tests/run_lsan.sh)
test-lsan: test-asan-build
	bash tests/run_lsan.sh
test-asan-build:
	$(MAKE) B=build/asan OPT="$(ASAN_FLAGS)" LDLIBS="$(LDLIBS) -fsanitize=address,undefined" all tests

# libFuzzer targets (clang): each target of tests/fuzz/targets.c runs FUZZ_S
# seconds from the seed corpora tests/fuzz/make_seeds.sh makes from real
# files; findings land in build/fuzz/findings/<target>/ (copy each one, once
# fixed, to tests/fuzz/regress/<target>/ so tests/check_reliability.sh replays it).
FUZZ_S ?= 60
FUZZ_CC ?= clang
FUZZ_TARGETS := safetensors gguf config tokenizer adapter checkpoint data lm_data conll compose
FUZZ_FLAGS := -O1 -g -Wno-pass-failed -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
fuzz:
	$(MAKE) CC=$(FUZZ_CC) B=build/fuzz OPT="$(FUZZ_FLAGS)" build/fuzz/libpeftc.a
	bash tests/fuzz/make_seeds.sh build/fuzz/seeds
	@for t in $(FUZZ_TARGETS); do \
	    $(FUZZ_CC) -std=c11 $(FUZZ_FLAGS) -fsanitize=fuzzer -D_GNU_SOURCE -DFUZZ_TARGET=\"$$t\" -Iinclude -Isrc -Itests/fuzz \
	        -o build/fuzz/fuzz_$$t tests/fuzz/main.c $(FUZZ_SRC) build/fuzz/libpeftc.a $(LDLIBS) || exit 1; \
	done
	bash tests/fuzz/run.sh $(FUZZ_S) $(FUZZ_TARGETS)

# Installs Debian packages and fetches the models (idempotent).
setup:
	bash scripts/setup.sh

# Sets up what is missing (idempotent), builds, runs every test.
test:
	bash scripts/setup.sh
	$(MAKE) all tests
	bash tests/run.sh

# Sets up, builds, and runs the main job (LoRA on SST-2, eval, predict).
demo:
	bash scripts/demo.sh

# The sweep report rendered by headless Chromium, with a screenshot (needs
# Debian's chromium; not part of `make test`): a tiny sweep's (build/report.png),
# or with SWEEP=DIR that sweep's report (DIR/report.png).
test-report: all
	REPORT_PNG=$(if $(SWEEP),$(SWEEP)/report.png,build/report.png) REPORT_HEIGHT=$(if $(SWEEP),5200,3200) bash scripts/report_screenshot.sh $(SWEEP)

bench: all
	bash bench/run

clean:
	rm -rf build peftc

.PHONY: test-asan-build all setup test tests bench clean demo test-report test-asan test-lsan fuzz FORCE
FORCE:
