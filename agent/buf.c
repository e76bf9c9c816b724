/* buf.c -- a growable text buffer: see buf.h. */
#include <stdint.h>
#include <stdlib.h>

#include "buf.h"

#define BUF_FIRST 1024

int buf_put(struct buf *b, const void *p, size_t n)
{
	if (b->oom)
		return -1;
	if (b->cap - b->len < n + 1) {
		size_t cap = b->cap ? b->cap : BUF_FIRST;
		char *d;

		while (cap - b->len < n + 1) {
			if (cap > SIZE_MAX / 2)
				goto oom;
			cap *= 2;
		}
		if (!(d = realloc(b->data, cap)))
			goto oom;
		b->data = d;
		b->cap = cap;
	}
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = 0;
	return 0;
oom:
	b->oom = true;
	return -1;
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
	b->oom = false;
}
