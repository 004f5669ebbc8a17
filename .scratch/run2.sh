#!/bin/bash
mkdir -p /tmp/blk/triton; echo 'raise ImportError("hidden")' > /tmp/blk/triton/__init__.py
for W in C D; do pip install -q --no-deps --target /tmp/w_$W dist/$W/*.whl > /dev/null 2>&1; done
T0=$(date +%s)
st() { echo "[$(( $(date +%s) - T0 ))s] $*" >> $OUT/steps.txt; }
st tests
PYTHONPATH=/tmp/w_D:/tmp/blk timeout 200 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests/test_gelu_dropout.py tests/test_rms_norm.py tests/test_specs.py > $OUT/tests.log 2>&1
st ptx
FUSEDAOT_ARCH=ptx PYTHONPATH=/tmp/w_D:/tmp/blk timeout 100 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests/test_gelu_dropout.py tests/test_rms_norm.py -k "many_wide_rows or forward or backward" >> $OUT/tests.log 2>&1
st gelu
for W in C D; do echo "=== wheel $W" >> $OUT/bench.log; PYTHONPATH=/tmp/w_$W timeout 100 python benchmarks/bench_elementwise.py --ops gelu_dropout --modes fwd,bwd --out $OUT/gelu_$W.jsonl >> $OUT/bench.log 2>&1; done
st rms
for W in C D; do echo "=== wheel $W" >> $OUT/bench.log; PYTHONPATH=/tmp/w_$W timeout 70 python benchmarks/bench_rms_norm.py --modes fwd --dtype bf16 --no-weight --shapes 1024x65536,4096x65536,1024x40000,4096x49152 --out $OUT/rms_nw_$W.jsonl >> $OUT/bench.log 2>&1; done
st reduce
echo "=== wheel D reduce" >> $OUT/bench.log
PYTHONPATH=/tmp/w_D timeout 170 python benchmarks/bench_elementwise.py --ops "reduce_sum_squared(0)" --modes bwd --shapes 4096x4096,16384x1024,1024x16384,2048x2048,8192x1024,4096x2048,512x16384,8192x8192 --out $OUT/reduce_bwd_D.jsonl >> $OUT/bench.log 2>&1
st end
grep -E "passed|failed|error" $OUT/tests.log | tail -5
cat $OUT/steps.txt
