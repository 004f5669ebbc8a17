#!/bin/bash
mkdir -p /tmp/blk/triton; echo 'raise ImportError("hidden")' > /tmp/blk/triton/__init__.py
pip install -q --no-deps --target /tmp/w_D dist/D/*.whl > /dev/null 2>&1
PYTHONPATH=/tmp/w_D timeout 120 python .scratch/prof/prof.py $OUT/prof.txt > $OUT/prof.log 2>&1
PYTHONPATH=/tmp/w_D:/tmp/blk timeout 400 python -m pytest -q -n 16 -p no:cacheprovider -o pythonpath= tests > $OUT/tests_full.log 2>&1
tail -3 $OUT/tests_full.log
