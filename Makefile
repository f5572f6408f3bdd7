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
LIB_OBJ := $(LIB_SRC:%.c=build/%.o)
CLI_OBJ := $(CLI_SRC:%.c=build/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=build/tests/%)
HDRS := include/peftc.h $(wildcard src/*/*.h)

all: build/libpeftc.a build/libpeftc.so peftc

build/%.o: %.c $(HDRS)
	@mkdir -p $(dir $@)
	@echo "CC $<"
	@$(CC) $(CFLAGS) -c $< -o $@

# rebuilt when MPI flips (the stamp holds the setting)
build/mpi.stamp: FORCE
	@mkdir -p build
	@echo "$(MPI)" | cmp -s - $@ || echo "$(MPI)" > $@

build/src/cli/mpi.o: src/cli/mpi.c $(HDRS) build/mpi.stamp
	@mkdir -p $(dir $@)
	@echo "CC $< (MPI=$(MPI))"
	@$(CC) $(CFLAGS) $(MPI_CFLAGS) -c $< -o $@

build/libpeftc.a: $(LIB_OBJ)
	@rm -f $@
	@echo "AR $@"
	@ar rcs $@ $^

build/libpeftc.so: $(LIB_OBJ)
	@echo "LD $@"
	@$(CC) -shared -o $@ $^ $(LDLIBS)

peftc: $(CLI_OBJ) build/libpeftc.a build/mpi.stamp
	@echo "LD $@"
	@$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) build/libpeftc.a $(LDLIBS) $(MPI_LIBS)

build/tests/%: tests/%.c build/libpeftc.a $(HDRS) tests/testlib.h
	@mkdir -p build/tests
	$(CC) $(CFLAGS) -Itests -o $@ $< build/libpeftc.a $(LDLIBS)

tests: $(TEST_BIN)

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
# Debian's chromium; not part of `make test`).
test-report: all
	bash scripts/report_screenshot.sh

bench: all
	bash bench/run

clean:
	rm -rf build peftc

.PHONY: all setup test tests bench clean demo test-report FORCE
FORCE:
