/* json_scan.h -- JSON read in one pass, without building a tree.
 *
 * Owns: validating a JSON text (RFC 8259: strict numbers, escapes and
 * literals; nesting at most JSON_MAX_DEPTH) and walking the members of an
 * object as byte spans into the caller's buffer. A request body of several
 * megabytes is read for the few members the agent needs with no allocation
 * per value; strings, the bulk of a prompt, are crossed eight bytes at a
 * time. While it validates a value it can also estimate the tokens of the
 * prompt text in it (meter.h says how). Pure functions; nothing is copied.
 */
#ifndef TOLLGATE_JSON_SCAN_H
#define TOLLGATE_JSON_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 1000     /* cJSON's nesting limit: the same bodies pass */

/* A member name: the bytes between its quotes, escapes still in them. */
struct json_name {
	const char *p;
	size_t len;
	bool escaped;           /* holds a backslash */
};

/* The members of one object, in order. */
struct json_obj {
	const char *p, *end;    /* p: where the next member (or the '}') starts */
	bool first;
};

/* Past the whitespace at p (never beyond end). */
const char *json_ws(const char *p, const char *end);

/* Validate the value starting at p (no leading whitespace) and return the
 * byte after it, or NULL when it is not valid JSON or ends early. When est
 * is not NULL, add to *est the token estimate of the prompt text in it:
 * every string reached from the value through arrays and through object
 * members named "content", "text" or "input", at most 6 levels down, counts
 * as meter_estimate_text() counts its (unescaped) text, and every object so
 * reached below the top adds 4. */
const char *json_value_end(const char *p, const char *end, int64_t *est);

/* Start reading the object at p (which must be '{'): false if it is not one. */
bool json_obj_open(struct json_obj *o, const char *p, const char *end);

/* The next member's name: 1 and o->p at its value (the caller passes
 * json_value_end()'s answer back in o->p); 0 at the end of the object,
 * o->p past its '}'; -1 when the text is not valid there. */
int json_obj_key(struct json_obj *o, struct json_name *name);

/* Does the name read as lit (escapes decoded)? */
bool json_name_is(const struct json_name *n, const char *lit);

/* The text of the string value at p (its opening quote, already validated)
 * unescaped into out (NUL-terminated, cut at outlen - 1 bytes; a \u0000
 * ends it). Returns the number of bytes written. */
size_t json_string_copy(const char *p, const char *end, char *out, size_t outlen);

/* The name unescaped into out, as json_string_copy(). */
size_t json_name_copy(const struct json_name *n, char *out, size_t outlen);

/* The number at p (validated) as a double. */
double json_number(const char *p, const char *end);

#endif
