"""test_runner.py -- tests/run.sh holds every module to its plan.

Runs the runner on a throw-away tree of modules that misbehave, each in its
own way, and checks what it counts (tests/run.sh's header states the rules):
  - a unit test with no binary (no build): one failure;
  - a module that crashes midway (abort after its first case): the rest of
    its plan fails;
  - one that exits 0 early: its unrun cases fail;
  - one that hangs: killed after TEST_MODULE_TIMEOUT, its cases fail;
  - a skip: counted as a skip, not a pass;
  - a case that calls sys.exit(0): a failure (tcase.py);
  - a result outside the plan, and a module with no plan: failures;
  - TESTS_FILTER: the other cases are skips, announced;
  - nothing matching TESTS: exit status 1.
"""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "pylib"))
from tcase import case, main  # noqa: E402

PYLIB = os.path.join(REPO, "tests", "pylib")

MODULES = {
    "crash": "print('PLAN: a b c', flush=True)\nprint('PASS: a', flush=True)\n"
             "import os; os.abort()\n",
    "early": "print('PLAN: a b', flush=True)\nprint('PASS: a', flush=True)\n"
             "raise SystemExit(0)\n",
    "hang": "import time\nprint('PLAN: a', flush=True)\ntime.sleep(600)\n",
    "noplan": "print('PASS: a', flush=True)\n",
    "outside": "print('PLAN: a', flush=True)\nprint('PASS: a')\nprint('PASS: b')\n",
    "tcase": "import sys\nsys.path.insert(0, %r)\n"
             "from tcase import case, main, skip\n"
             "@case\ndef good():\n    assert 1 + 1 == 2\n"
             "@case\ndef bad():\n    assert 1 + 1 == 3\n"
             "@case\ndef leaves():\n    sys.exit(0)\n"
             "@case\ndef cannot_here():\n    skip('needs something absent')\n"
             "main()\n" % PYLIB,
}


def run_tree(modules, env_extra=None, unit=()):
    with tempfile.TemporaryDirectory() as root:
        for d in ("unit", "conformance"):
            os.makedirs(os.path.join(root, d))
        for name in unit:
            open(os.path.join(root, "unit", "test_%s.c" % name), "w").close()
        for name, src in modules.items():
            with open(os.path.join(root, "conformance", "test_%s.py" % name), "w") as f:
                f.write(src)
        env = dict(os.environ, TESTS_ROOT=root, BUILD=os.path.join(root, "build"),
                   TEST_MODULE_TIMEOUT="3")
        env.pop("TESTS", None)
        env.pop("TESTS_FILTER", None)
        env.update(env_extra or {})
        r = subprocess.run(["sh", os.path.join(REPO, "tests", "run.sh")], env=env,
                           capture_output=True, text=True, timeout=120)
    return r


def last(r):
    return r.stdout.rstrip("\n").split("\n")[-1]


@case
def each_misbehaving_module_is_counted():
    r = run_tree(MODULES, unit=("nobuild",))
    out = r.stdout
    # passes: crash a, early a, outside a, tcase good (noplan's and outside's
    #   "PASS: b" count for nothing)
    # fails: nobuild 1, crash b c 2 (its abort is told by them), early b 1,
    #   hang a 1 (killed), noplan 1, outside b 1, tcase bad leaves 2
    assert last(r) == "4 passed, 9 failed, 1 skipped", out
    assert r.returncode == 1, r.returncode
    for line in ("FAIL: unit/test_nobuild (no binary",
                 "FAIL: b (planned, never finished)", "FAIL: c (planned, never finished)",
                 "killed after 3s", "printed no PLAN line", "exited with status 134",
                 "FAIL: b (a result outside the plan)",
                 "FAIL: leaves (raised SystemExit)", "FAIL: bad",
                 "SKIP: cannot_here (needs something absent)", "PASS: good"):
        assert line in out, "%r not in:\n%s" % (line, out)


@case
def filter_skips_and_says_so():
    r = run_tree({"tcase": MODULES["tcase"]}, {"TESTS_FILTER": "good"})
    assert "note: TESTS_FILTER=good is set" in r.stdout, r.stdout
    assert last(r) == "1 passed, 0 failed, 3 skipped", r.stdout
    assert r.returncode == 0, r.stdout


@case
def clean_tree_passes_and_nothing_matched_fails():
    r = run_tree({"tcase": MODULES["tcase"].replace("3\n", "2\n")
                  .replace("    sys.exit(0)\n", "    pass\n")})
    assert last(r) == "3 passed, 0 failed, 1 skipped", r.stdout
    assert r.returncode == 0, r.stdout
    r = run_tree({"tcase": MODULES["tcase"]}, {"TESTS": "no-such-module"})
    assert last(r) == "0 passed, 0 failed, 0 skipped", r.stdout
    assert r.returncode == 1, "nothing ran, yet the runner succeeded"


if __name__ == "__main__":
    main()
