/* check.h -- the smallest test harness, speaking tests/run.sh's protocol:
 * "PLAN: name ..." first, then one "PASS: name" / "FAIL: name" line per case.
 *
 *   CHECK(cond) inside a case records a failure (with file:line) and goes on;
 *   CASE(name) { ... } defines a case; RUN_ALL(a, b, ...) prints the plan and
 *   runs the cases in order; DONE() exits 1 if any case failed. A case that
 *   crashes leaves the rest of the plan unfinished, which the runner counts as
 *   failed.
 */
#ifndef TOLLGATE_CHECK_H
#define TOLLGATE_CHECK_H
#include <stdio.h>
#include <string.h>

static int check_case_failed, check_any_failed;

#define CHECK(cond) do { if (!(cond)) { \
	fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
	check_case_failed = 1; } } while (0)
#define CASE(name) static void name(void)
#define RUN_ALL(...) do { \
	void (*check_fns_[])(void) = { __VA_ARGS__ }; \
	check_run_all(#__VA_ARGS__, check_fns_, sizeof(check_fns_) / sizeof(*check_fns_)); \
	} while (0)
#define DONE() return check_any_failed ? 1 : 0

/* names: the stringified list "a, b, c" (whitespace already collapsed). */
__attribute__((unused))
static void check_run_all(const char *names, void (**fns)(void), size_t n)
{
	char list[16384], *save = NULL, *tok;
	const char *name[1024];
	size_t k = 0;

	snprintf(list, sizeof(list), "%s", names);
	for (tok = strtok_r(list, ", \t\n", &save); tok && k < 1024;
	     tok = strtok_r(NULL, ", \t\n", &save))
		name[k++] = tok;
	if (k != n) {                   /* cannot happen with plain identifiers */
		printf("FAIL: plan (%zu names for %zu cases)\n", k, n);
		check_any_failed = 1;
		return;
	}
	printf("PLAN:");
	for (size_t i = 0; i < n; i++)
		printf(" %s", name[i]);
	printf("\n");
	fflush(stdout);
	for (size_t i = 0; i < n; i++) {
		check_case_failed = 0;
		fns[i]();
		printf("%s: %s\n", check_case_failed ? "FAIL" : "PASS", name[i]);
		fflush(stdout);
		check_any_failed |= check_case_failed;
	}
}
#endif
