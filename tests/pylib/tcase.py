"""tcase.py -- Python side of the test protocol counted by tests/run.sh.

Decorate test functions with @case; call main() at the end of the module.
Each case prints "PASS: name" or "FAIL: name" (with the traceback on stderr).
A case is a plain function using assert. TESTS_FILTER=substring runs a subset.
FAILED lists the names of the cases that failed so far (a teardown keeps
its logs when it is not empty).
"""
import os
import sys
import traceback

_cases = []
FAILED = []


def case(fn):
    _cases.append(fn)
    return fn


def main(setup=None, teardown=None):
    flt = os.environ.get("TESTS_FILTER", "")
    failed = 0
    ctx = setup() if setup else None
    try:
        for fn in _cases:
            if flt and flt not in fn.__name__:
                continue
            try:
                fn(ctx) if setup else fn()
                print("PASS: %s" % fn.__name__, flush=True)
            except Exception:
                failed += 1
                FAILED.append(fn.__name__)
                traceback.print_exc()
                print("FAIL: %s" % fn.__name__, flush=True)
    finally:
        if teardown:
            teardown(ctx)
    sys.exit(1 if failed else 0)
