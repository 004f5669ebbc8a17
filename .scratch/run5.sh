#!/bin/bash
mkdir -p /tmp/blk/triton; echo 'raise ImportError("hidden")' > /tmp/blk/triton/__init__.py
pip install -q --no-deps --target /tmp/w_E dist/E/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/w_E:/tmp/blk timeout 150 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests/test_reduce.py tests/test_add_relu.py > $OUT/tests.log 2>&1
FUSEDAOT_ARCH=ptx PYTHONPATH=/tmp/w_E:/tmp/blk timeout 60 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests/test_reduce.py -k backward >> $OUT/tests.log 2>&1
PYTHONPATH=/tmp/w_E timeout 150 python benchmarks/bench_elementwise.py --ops "reduce_sum_squared(0),reduce_mean_abs(0)" --modes bwd --shapes 4096x4096,16384x1024,1024x16384,8192x8192,65536x4096,2048x2048,8192x1024,512x16384 --out $OUT/reduce_bwd_E.jsonl > $OUT/bench.log 2>&1
grep -E "passed|failed" $OUT/tests.log
grep -E "fusedaot \||compile \||^summary" $OUT/bench.log
