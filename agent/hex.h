/* hex.h -- hexadecimal digits: one digit's value, for the parsers that
 * decode escapes (URLs, forms, JSON strings), and bytes written as
 * lowercase hex (a hashed key's name). */
#ifndef TOLLGATE_HEX_H
#define TOLLGATE_HEX_H

#include <stddef.h>

/* 0..15, or -1 when c is not a hex digit. */
static inline int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* n bytes as 2n lowercase hex digits and a NUL: out holds 2n + 1. */
static inline void hex_encode(const unsigned char *d, size_t n, char *out)
{
	static const char digit[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digit[d[i] >> 4];
		out[2 * i + 1] = digit[d[i] & 15];
	}
	out[2 * n] = '\0';
}

#endif
