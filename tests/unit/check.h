/* check.h -- the smallest test harness: one "PASS: name" / "FAIL: name" line
 * per case, as tests/run.sh counts them.
 *
 *   CHECK(cond) inside a case records a failure (with file:line) and goes on;
 *   CASE(name) { ... } defines a case; RUN(name) runs it; DONE() exits 1 if
 *   any case failed.
 */
#ifndef TOLLGATE_CHECK_H
#define TOLLGATE_CHECK_H
#include <stdio.h>

static int check_case_failed, check_any_failed;

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
	check_case_failed = 1; } } while (0)
#define CASE(name) static void name(void)
#define RUN(name) do { check_case_failed = 0; name(); \
	printf("%s: %s\n", check_case_failed ? "FAIL" : "PASS", #name); \
	fflush(stdout); check_any_failed |= check_case_failed; } while (0)
#define DONE() return check_any_failed ? 1 : 0
#endif
