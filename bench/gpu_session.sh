#!/usr/bin/env bash
# One call on a lent GPU machine (no network): install the carried wheels (.whl/), record the
# machine, then run the steps named in $1, comma-separated, each under its own time limit:
#   tests            the GPU tests (flex gradients) and the model tests
#   bench:<a+b+..>   python -m bench --sections a,b,.. --update $BENCH_JSON (created if absent)
#   headline[:runs]  python -m bench.headline (experiment=winft_b16_384; runs gpu+ddp by default)
#   probe            python -m bench.flex_probe (why compiled flex is slow: fwd/bwd, profiler, options)
# Logs and JSON go to $OUT. The inductor/Triton cache travels in .indcache/ (tar parts).
set -u
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
BENCH_JSON=${BENCH_JSON:-bench/results/bench_gpu.json}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >/dev/null 2>&1 || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind TRITON_CACHE_DIR=/tmp/ind/triton
if [ -d .indcache ] && [ ! -d /tmp/ind ]; then cat .indcache/ind.tgz.* | tar xz -C / ; fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, timm, lightning, hydra, webdataset; print('torch', torch.__version__,
'cuda', torch.version.cuda, 'timm', timm.__version__, 'lightning', lightning.__version__)"
for step in ${1//,/ }; do
  echo "=== $step $(date +%T)"
  case $step in
    tests) timeout ${TESTS_S:-200} python3 -m pytest -q -n 4 -p no:cacheprovider \
             tests/models/test_models_awd.py tests/models/test_models_sparse.py \
             tests/models/test_models_winft.py \
             2>&1 | tail -25 ;;
    bench:*) [ -f "$BENCH_JSON" ] || echo '{}' > "$BENCH_JSON"
             timeout ${BENCH_S:-400} python3 -m bench --sections "$(echo "${step#bench:}" | tr + ,)" \
               --update "$BENCH_JSON"; cp "$BENCH_JSON" "$OUT/" ;;
    headline*) runs=${step#headline}; runs=${runs#:}; timeout ${HEADLINE_S:-330} \
             python3 -m bench.headline --out "$OUT/headline.json" --runs "${runs:-gpu+ddp}" ;;
    probe) timeout ${PROBE_S:-280} python3 -m bench.flex_probe --out "$OUT/flex_probe.json" \
             --budget $(( ${PROBE_S:-280} - 60 )) ;;
  esac
done
echo "=== cache $(date +%T)"
tar czf /tmp/ind.tgz -C / tmp/ind 2>/dev/null
if [ "$(stat -c %s /tmp/ind.tgz)" -lt 45000000 ]; then split -b 15M /tmp/ind.tgz "$OUT/ind.tgz."; fi
ls -la "$OUT"
