#!/usr/bin/env bash
# One-time, idempotent set-up of a fresh Debian machine for peftc:
#   1. the Debian packages that build peftc (compiler, OpenBLAS, utf8proc, jansson,
#      OpenMPI for data-parallel training; PEFTC_NO_MPI=1 leaves it out);
#   2. the reference stack the tests use as an independent oracle (PyTorch from
#      Debian; HF tokenizers and safetensors from PyPI) unless PEFTC_NO_ORACLE=1;
#   3. the models (scripts/fetch_models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

BUILD_PKGS="build-essential clang libopenblas-openmp-dev libutf8proc-dev libjansson-dev libpcre2-dev python3-pip unzip"
ORACLE_PKGS="python3-torch python3-numpy python3-venv"
MPI_PKGS="libopenmpi-dev openmpi-bin"
want="$BUILD_PKGS"
[ "${PEFTC_NO_MPI:-0}" = 1 ] || want="$want $MPI_PKGS"
[ "${PEFTC_NO_ORACLE:-0}" = 1 ] || want="$want $ORACLE_PKGS"

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ "${PEFTC_NO_ORACLE:-0}" != 1 ]; then
    if ! /usr/bin/python3 -c "import tokenizers, safetensors, gguf, transformers, jinja2" 2>/dev/null; then
        echo "setup: installing the test oracles' PyPI packages (tokenizers, safetensors, gguf, transformers, jinja2)"
        /usr/bin/python3 -m pip install -q --break-system-packages tokenizers safetensors gguf transformers jinja2
    fi
    # HF PEFT (the oracle of the adapter formats and of AdaLoRA); it brings
    # PyPI's torch (>= 2.6, which transformers' models need), which then
    # shadows Debian's older python3-torch for /usr/bin/python3.
    if ! /usr/bin/python3 -c "import peft, torch, transformers.models.llama" 2>/dev/null; then
        echo "setup: installing HF peft (and PyPI torch) for the test oracles"
        /usr/bin/python3 -m pip install -q --break-system-packages peft
    fi
    # seqeval (entity F1 of token classification) and scipy (Pearson / Spearman):
    # the oracles of tests/check_tasks.sh. seqeval ships only an sdist whose
    # setup_requires pulls the newest setuptools_scm, which no longer builds
    # there: an older setuptools_scm first, then no build isolation.
    if ! /usr/bin/python3 -c "import seqeval, scipy" 2>/dev/null; then
        echo "setup: installing seqeval and scipy for the token-classification and regression oracles"
        /usr/bin/python3 -m pip install -q --break-system-packages scipy 'setuptools_scm<9'
        /usr/bin/python3 -m pip install -q --break-system-packages --no-build-isolation seqeval
    fi
    # sentence-transformers: its Pooling(mean) and MultipleNegativesRankingLoss
    # are the oracle of --task embedding (tests/check_embedding.sh)
    if ! /usr/bin/python3 -c "import sentence_transformers" 2>/dev/null; then
        echo "setup: installing sentence-transformers for the embedding-task oracle"
        /usr/bin/python3 -m pip install -q --break-system-packages sentence-transformers
    fi
    # bitsandbytes (its CPU backend): the oracle of NF4 and double quantisation
    if ! /usr/bin/python3 -c "import bitsandbytes" 2>/dev/null; then
        echo "setup: installing bitsandbytes for the NF4 test oracle"
        /usr/bin/python3 -m pip install -q --break-system-packages --no-deps bitsandbytes
    fi
    # Google's rouge-score (with NLTK's Porter stemmer) and sacreBLEU: the
    # oracles of peftc score's ROUGE and BLEU (tests/check_metrics.sh)
    if ! /usr/bin/python3 -c "import rouge_score, sacrebleu, nltk" 2>/dev/null; then
        echo "setup: installing rouge-score and sacrebleu for the metric test oracles"
        /usr/bin/python3 -m pip install -q --break-system-packages rouge-score sacrebleu
    fi
    # AdapterHub's adapters (the oracle of the AdapterHub format,
    # tests/check_adapterhub.sh): adapters 1.3.0 requires transformers ~= 4.57,
    # which the system Python's transformers 5 cannot share, so it lives in a
    # venv of its own under build/ over the system site packages (torch,
    # safetensors, numpy come from there). A failed install does not stop the
    # set-up: check_adapterhub.sh then fails saying the venv is missing.
    AHUB_VENV=build/ahub-venv
    if ! "$AHUB_VENV/bin/python" -c "import adapters, transformers, sys; sys.exit(adapters.__version__ != '1.3.0' or not transformers.__version__.startswith('4.57.'))" 2>/dev/null; then
        echo "setup: making $AHUB_VENV (adapters 1.3.0, transformers 4.57) for the AdapterHub oracle"
        rm -rf "$AHUB_VENV"
        mkdir -p build
        if ! { /usr/bin/python3 -m venv --system-site-packages "$AHUB_VENV" &&
               "$AHUB_VENV/bin/pip" install -q --disable-pip-version-check adapters==1.3.0 'transformers==4.57.*'; }; then
            echo "setup: could not make $AHUB_VENV: tests/check_adapterhub.sh will fail"
            rm -rf "$AHUB_VENV"
        fi
    fi
fi

bash scripts/fetch_models.sh
echo "setup: done"
