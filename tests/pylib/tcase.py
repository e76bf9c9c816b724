"""tcase.py -- Python side of the test protocol counted by tests/run.sh.

Decorate test functions with @case; call main() at the end of the module.
main() first prints "PLAN: name ..." (every case of the module), then each
case prints "PASS: name", "FAIL: name" (with the traceback on stderr) or
"SKIP: name (why)". A case is a plain function using assert; skip(why) ends
it as a skip, to be used only when what it needs cannot exist here (it is
counted apart, never as a pass). A case that raises anything, SystemExit
included, fails; a setup that fails fails every case. TESTS_FILTER=substring
runs a subset: the other cases print SKIP. FAILED lists the names of the
cases that failed so far (a teardown keeps its logs when it is not empty).
"""
import os
import sys
import traceback

_cases = []
FAILED = []


class Skip(Exception):
    """Raised by skip(): the case cannot run here."""


def case(fn):
    _cases.append(fn)
    return fn


def skip(why):
    raise Skip(why)


def main(setup=None, teardown=None, teardown_cases=()):
    """teardown_cases: names of the checks the teardown itself reports (a
    "PASS:"/"FAIL:" line each), so that they are in the plan too."""
    flt = os.environ.get("TESTS_FILTER", "")
    print("PLAN: %s" % " ".join([fn.__name__ for fn in _cases] + list(teardown_cases)),
          flush=True)
    failed = 0
    try:
        ctx = setup() if setup else None
    except BaseException:  # noqa: BLE001 -- every case fails, with the reason
        traceback.print_exc()
        for name in [fn.__name__ for fn in _cases] + list(teardown_cases):
            print("FAIL: %s (setup failed)" % name, flush=True)
        sys.exit(1)
    try:
        for fn in _cases:
            if flt and flt not in fn.__name__:
                print("SKIP: %s (TESTS_FILTER=%s)" % (fn.__name__, flt), flush=True)
                continue
            try:
                fn(ctx) if setup else fn()
                print("PASS: %s" % fn.__name__, flush=True)
            except Skip as e:
                print("SKIP: %s (%s)" % (fn.__name__, e), flush=True)
            except BaseException as e:  # noqa: BLE001 -- SystemExit is a failure too
                failed += 1
                FAILED.append(fn.__name__)
                traceback.print_exc()
                print("FAIL: %s%s" % (fn.__name__, " (raised SystemExit)"
                                      if isinstance(e, SystemExit) else ""), flush=True)
                if isinstance(e, KeyboardInterrupt):
                    raise
    finally:
        if teardown:
            teardown(ctx)
    sys.exit(1 if failed else 0)
