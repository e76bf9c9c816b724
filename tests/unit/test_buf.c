/* test_buf.c -- the growable text buffer (agent/buf.c). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "check.h"

CASE(appends_grow_and_stay_terminated)
{
	struct buf b = { 0 };
	char piece[100];
	size_t want = 0;

	CHECK(buf_put(&b, "", 0) == 0 && b.data && b.len == 0 && b.data[0] == 0);
	for (int i = 0; i < 500; i++) {         /* well past the first block */
		size_t n = (size_t)(i % 97) + 1;

		memset(piece, 'a' + i % 26, n);
		CHECK(buf_put(&b, piece, n) == 0);
		want += n;
		CHECK(b.len == want && b.data[b.len] == 0 && b.cap > b.len);
		CHECK(b.data[b.len - 1] == 'a' + i % 26 && b.data[b.len - n] == 'a' + i % 26);
	}
	CHECK(!b.oom);
	buf_free(&b);
	CHECK(!b.data && b.len == 0 && b.cap == 0);
}

CASE(reset_keeps_the_block)
{
	struct buf b = { 0 };
	char *block;

	CHECK(buf_str(&b, "hello") == 0 && strcmp(b.data, "hello") == 0);
	block = b.data;
	buf_reset(&b);
	CHECK(b.len == 0 && b.data == block && b.data[0] == 0);
	CHECK(buf_str(&b, "x") == 0 && strcmp(b.data, "x") == 0 && b.data == block);
	buf_free(&b);
}

CASE(failed_growth_sets_oom_and_drops_the_rest)
{
	struct buf b = { 0 };

	CHECK(buf_str(&b, "kept") == 0);
	/* no block this large: the pointer is never read */
	CHECK(buf_put(&b, "", SIZE_MAX - 8) == -1 && b.oom);
	CHECK(buf_str(&b, "dropped") == -1 && b.len == 4 && strcmp(b.data, "kept") == 0);
	buf_reset(&b);
	CHECK(!b.oom && buf_str(&b, "again") == 0 && strcmp(b.data, "again") == 0);
	buf_free(&b);
}

int main(void)
{
	RUN_ALL(appends_grow_and_stay_terminated, reset_keeps_the_block,
	        failed_growth_sets_oom_and_drops_the_rest);
	DONE();
}
