/* buf.h -- a growable text buffer.
 *
 * Owns: appending bytes to one heap block that doubles as it fills, kept
 * NUL-terminated. A failed allocation sets `oom` and every later append is
 * dropped, so a builder checks once at the end (or each return value).
 * Used where a text is built piece by piece: the metrics exposition
 * (metrics.c), the mock provider's answers (mock_provider.c), the Redis
 * store's batch arguments (store_redis.c). I/O buffers with a read or
 * write offset (spop_server.c, http_server.c) and the YAML loader's arena
 * strings (config_yaml.c) keep their own.
 */
#ifndef TOLLGATE_BUF_H
#define TOLLGATE_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct buf {
	char *data;     /* NULL until the first append */
	size_t len, cap;
	bool oom;       /* an allocation failed: the content is incomplete */
};

/* Appends n bytes of p. 0, or -1 (and oom) when the buffer cannot grow. */
int buf_put(struct buf *b, const void *p, size_t n);

static inline int buf_str(struct buf *b, const char *s)
{
	return buf_put(b, s, strlen(s));
}

/* Empties the buffer for reuse, keeping its block. */
static inline void buf_reset(struct buf *b)
{
	b->len = 0;
	b->oom = false;
	if (b->data)
		b->data[0] = 0;
}

void buf_free(struct buf *b);

#endif
