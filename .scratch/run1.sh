#!/bin/bash
# device run 1: install wheels B (this tree) and C (c1184f9), sweep gelu_dropout, bench, test
mkdir -p /tmp/blk/triton; echo 'raise ImportError("hidden")' > /tmp/blk/triton/__init__.py
for W in B C; do pip install -q --no-deps --target /tmp/w_$W dist/$W/*.whl 2>&1 | tail -1; done
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/gpu.txt
T0=$(date +%s)
st() { echo "[$(( $(date +%s) - T0 ))s] $*" >> $OUT/steps.txt; }
st sweep
PYTHONPATH=/tmp/w_B:/tmp/blk timeout 150 python .scratch/gd/time_gd.py $OUT/gd_sweep.jsonl > $OUT/gd_sweep.log 2>&1
st tests
PYTHONPATH=/tmp/w_B:/tmp/blk timeout 150 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests/test_gelu_dropout.py tests/test_rms_norm.py -k "not compile and not opcheck" > $OUT/tests_sm90.log 2>&1
st ptx
FUSEDAOT_ARCH=ptx PYTHONPATH=/tmp/w_B:/tmp/blk timeout 90 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests/test_gelu_dropout.py tests/test_rms_norm.py -k "many_wide_rows or forward" > $OUT/tests_ptx.log 2>&1
st rms
for W in C B; do PYTHONPATH=/tmp/w_$W:/tmp/blk timeout 80 python benchmarks/bench_rms_norm.py --modes fwd --dtype bf16 --no-weight --shapes 1024x65536,4096x65536,16384x65536,1024x40000,4096x49152 --out $OUT/rms_nw_$W.jsonl > $OUT/rms_nw_$W.log 2>&1; done
st reduce
PYTHONPATH=/tmp/w_B:/tmp/blk timeout 150 python benchmarks/bench_elementwise.py --ops reduce_sum_squared --modes bwd --shapes 4096x4096,16384x1024,1024x16384,2048x2048,8192x1024,4096x2048,512x16384,8192x8192 --out $OUT/reduce_bwd_B.jsonl > $OUT/reduce_bwd_B.log 2>&1
st end
tail -3 $OUT/tests_sm90.log $OUT/tests_ptx.log
cat $OUT/steps.txt
