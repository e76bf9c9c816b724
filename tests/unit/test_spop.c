/* test_spop.c -- unit tests of the SPOP codec (spoe/spop.c).
 *
 * Owns: the byte-level contract of spop.h, checked against vectors written by
 * hand from HAProxy's doc/SPOE.txt section 3 (varints 3.1, frames 3.2, HELLO
 * 3.2.4/3.2.5, NOTIFY 3.2.6, DISCONNECT 3.2.8/3.2.9, actions 3.4, statuses
 * 3.5), plus round trips and every error path.
 */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "spop.h"

/* A byte string literal as (pointer, length), without the final NUL. */
#define B(lit) (const uint8_t *)(lit), (sizeof(lit) - 1)
#define CUR(lit) ((struct spop_cursor){ (const uint8_t *)(lit), (const uint8_t *)(lit) + sizeof(lit) - 1 })
#define STREQ(s, lit) ((s).len == sizeof(lit) - 1 && memcmp((s).ptr, (lit), (s).len) == 0)

static int mem_is(const uint8_t *p, size_t n, const uint8_t *q, size_t m)
{
	return n == m && memcmp(p, q, n) == 0;
}

/* ---- 3.1 varints ---------------------------------------------------- */

struct vv { uint64_t v; const char *bytes; size_t len; };
#define VV(v, lit) { (v), (lit), sizeof(lit) - 1 }

static const struct vv varint_vectors[] = {
	VV(0, "\x00"),
	VV(1, "\x01"),
	VV(239, "\xEF"),
	VV(240, "\xF0\x00"),
	VV(241, "\xF1\x00"),
	VV(255, "\xFF\x00"),
	VV(256, "\xF0\x01"),
	VV(2287, "\xFF\x7F"),
	VV(2288, "\xF0\x80\x00"),
	VV(16380, "\xFC\xF0\x06"),
	VV(264431, "\xFF\xFF\x7F"),
	VV(264432, "\xF0\x80\x80\x00"),
	VV(33818863, "\xFF\xFF\xFF\x7F"),
	VV(33818864, "\xF0\x80\x80\x80\x00"),
	VV(2147483648u, "\xF0\xF1\xFE\xFE\x3E"),
	VV(4294967295u, "\xFF\xF0\xFE\xFE\x7E"),
	VV(1152921504606846976ull, "\xF0\xF1\xFE\xFE\xFE\xFE\xFE\xFE\x7E"),
	VV(9223372036854775808ull, "\xF0\xF1\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x06"),
	VV(UINT64_MAX - 1, "\xFE\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E"),
	VV(UINT64_MAX, "\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E"),
};

CASE(varint_vectors_encode)
{
	for (size_t i = 0; i < sizeof(varint_vectors) / sizeof(varint_vectors[0]); i++) {
		const struct vv *t = &varint_vectors[i];
		uint8_t out[16];
		size_t n = spop_put_varint(out, sizeof(out), t->v);

		CHECK(mem_is(out, n, (const uint8_t *)t->bytes, t->len));
		/* exactly enough room works, one byte less does not */
		CHECK(spop_put_varint(out, t->len, t->v) == t->len);
		CHECK(spop_put_varint(out, t->len - 1, t->v) == 0);
	}
}

CASE(varint_vectors_decode)
{
	for (size_t i = 0; i < sizeof(varint_vectors) / sizeof(varint_vectors[0]); i++) {
		const struct vv *t = &varint_vectors[i];
		const uint8_t *p = (const uint8_t *)t->bytes;
		struct spop_cursor c = { p, p + t->len };
		uint64_t v = 12345;

		CHECK(spop_get_varint(&c, &v) == SPOP_OK);
		CHECK(v == t->v);
		CHECK(c.p == p + t->len);
		/* every proper prefix is a truncation */
		for (size_t k = 0; k < t->len; k++) {
			struct spop_cursor s = { p, p + k };
			CHECK(spop_get_varint(&s, &v) == SPOP_ERROR);
			CHECK(s.p == p);
		}
	}
}

/* The byte count of 3.1's table, at every boundary, and round trips. */
CASE(varint_ranges_roundtrip)
{
	static const uint64_t bounds[] = { 240, 2288, 264432, 33818864, 4328786160ull };
	uint8_t out[16];
	uint64_t v;

	for (size_t i = 0; i < sizeof(bounds) / sizeof(bounds[0]); i++) {
		CHECK(spop_put_varint(out, sizeof(out), bounds[i] - 1) == i + 1);
		CHECK(spop_put_varint(out, sizeof(out), bounds[i]) == i + 2);
	}
	for (unsigned b = 0; b < 64; b++) {
		uint64_t base = (uint64_t)1 << b;
		uint64_t vals[3] = { base - 1, base, base + 1 };
		for (int k = 0; k < 3; k++) {
			size_t n = spop_put_varint(out, sizeof(out), vals[k]);
			struct spop_cursor c = { out, out + n };
			CHECK(n >= 1 && n <= SPOP_VARINT_MAX_LEN);
			CHECK(spop_get_varint(&c, &v) == SPOP_OK && v == vals[k] && c.p == out + n);
		}
	}
	/* a pseudo-random walk */
	uint64_t x = 0x9E3779B97F4A7C15ull;
	for (int i = 0; i < 10000; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		uint64_t val = x >> (i % 64);
		size_t n = spop_put_varint(out, sizeof(out), val);
		struct spop_cursor c = { out, out + n };
		CHECK(spop_get_varint(&c, &v) == SPOP_OK && v == val && c.p == out + n);
	}
}

CASE(varint_errors)
{
	uint64_t v = 7;
	struct spop_cursor c;
	const uint8_t *p;

	c = (struct spop_cursor){ NULL, NULL };
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	c = CUR("\xF0");
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	c = CUR("\xF0\x80\x80");
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	/* UINT64_MAX's encoding plus 16: the sum overflows */
	c = CUR("\xFF\xF1\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E");
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	/* plus 2^60 in the last group */
	c = CUR("\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0F");
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	/* a tenth byte carrying bits beyond 64 */
	c = CUR("\xF0\x80\x80\x80\x80\x80\x80\x80\x80\x10");
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	/* an eleventh byte, even a zero one */
	p = (const uint8_t *)"\xF0\x80\x80\x80\x80\x80\x80\x80\x80\x80\x00";
	c = (struct spop_cursor){ p, p + 11 };
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	CHECK(c.p == p);
	/* endless continuation bits */
	c = CUR("\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF");
	CHECK(spop_get_varint(&c, &v) == SPOP_ERROR);
	CHECK(v == 7);                  /* output untouched on error */
	/* no room at all */
	CHECK(spop_put_varint(NULL, 0, 0) == 0);
}

/* ---- 3.1 typed data ------------------------------------------------- */

static int enc_data_bytes(const struct spop_data *d, uint8_t *out, size_t cap, size_t *len)
{
	struct spop_wbuf w;

	spop_wbuf_init(&w, out, cap);
	spop_enc_data(&w, d);
	*len = w.len;
	return !w.err;
}

static int data_eq(const struct spop_data *a, const struct spop_data *b)
{
	if (a->type != b->type)
		return 0;
	switch (a->type) {
	case SPOP_DATA_NULL: return 1;
	case SPOP_DATA_BOOL: return a->u.b == b->u.b;
	case SPOP_DATA_INT32: return a->u.i32 == b->u.i32;
	case SPOP_DATA_UINT32: return a->u.u32 == b->u.u32;
	case SPOP_DATA_INT64: return a->u.i64 == b->u.i64;
	case SPOP_DATA_UINT64: return a->u.u64 == b->u.u64;
	case SPOP_DATA_IPV4: return memcmp(a->u.ipv4, b->u.ipv4, 4) == 0;
	case SPOP_DATA_IPV6: return memcmp(a->u.ipv6, b->u.ipv6, 16) == 0;
	case SPOP_DATA_STR:
	case SPOP_DATA_BIN:
		return a->u.str.len == b->u.str.len &&
		       (a->u.str.len == 0 || memcmp(a->u.str.ptr, b->u.str.ptr, a->u.str.len) == 0);
	}
	return 0;
}

struct dv { struct spop_data d; const char *bytes; size_t len; };

CASE(data_vectors)
{
	struct dv v[24];
	int n = 0;
	struct spop_data d;

#define ADD(data, lit) do { v[n].d = (data); v[n].bytes = (lit); v[n].len = sizeof(lit) - 1; n++; } while (0)
	d = (struct spop_data){ .type = SPOP_DATA_NULL };            ADD(d, "\x00");
	ADD(spop_bool_data(false), "\x01");
	ADD(spop_bool_data(true), "\x11");
	d = (struct spop_data){ .type = SPOP_DATA_INT32 }; d.u.i32 = 5;           ADD(d, "\x02\x05");
	d = (struct spop_data){ .type = SPOP_DATA_INT32 }; d.u.i32 = -1;
	ADD(d, "\x02\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E");
	d = (struct spop_data){ .type = SPOP_DATA_INT32 }; d.u.i32 = INT32_MAX;
	ADD(d, "\x02\xFF\xF0\xFE\xFE\x3E");
	d = (struct spop_data){ .type = SPOP_DATA_INT32 }; d.u.i32 = INT32_MIN;
	ADD(d, "\x02\xF0\xF1\xFE\xFE\xBE\xFE\xFE\xFE\xFE\x0E");
	ADD(spop_uint_data(0), "\x03\x00");
	ADD(spop_uint_data(240), "\x03\xF0\x00");
	ADD(spop_uint_data(UINT32_MAX), "\x03\xFF\xF0\xFE\xFE\x7E");
	ADD(spop_int_data(2288), "\x04\xF0\x80\x00");
	ADD(spop_int_data(-1), "\x04\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E");
	ADD(spop_int_data(INT64_MIN), "\x04\xF0\xF1\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x06");
	d = (struct spop_data){ .type = SPOP_DATA_UINT64 }; d.u.u64 = UINT64_MAX;
	ADD(d, "\x05\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E");
	d = (struct spop_data){ .type = SPOP_DATA_IPV4 };
	memcpy(d.u.ipv4, "\x7F\x00\x00\x01", 4);                    ADD(d, "\x06\x7F\x00\x00\x01");
	d = (struct spop_data){ .type = SPOP_DATA_IPV6 };
	memcpy(d.u.ipv6, "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01", 16);
	ADD(d, "\x07\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x01");
	ADD(spop_str_data("abc", 3), "\x08\x03" "abc");
	ADD(spop_str_data("", 0), "\x08\x00");
	ADD(spop_bin_data("\x00\xFF", 2), "\x09\x02\x00\xFF");
#undef ADD

	for (int i = 0; i < n; i++) {
		uint8_t out[64];
		size_t len;
		const uint8_t *p = (const uint8_t *)v[i].bytes;
		struct spop_cursor c = { p, p + v[i].len };
		struct spop_data back;

		CHECK(enc_data_bytes(&v[i].d, out, sizeof(out), &len));
		CHECK(mem_is(out, len, p, v[i].len));
		if (!mem_is(out, len, p, v[i].len))
			fprintf(stderr, "  vector %d differs\n", i);
		CHECK(spop_get_data(&c, &back) == SPOP_OK);
		CHECK(c.p == p + v[i].len);
		CHECK(data_eq(&back, &v[i].d));
		/* every truncation fails and leaves the cursor alone */
		for (size_t k = 0; k < v[i].len; k++) {
			struct spop_cursor s = { p, p + k };
			CHECK(spop_get_data(&s, &back) == SPOP_ERROR);
			CHECK(s.p == p);
		}
	}
}

CASE(data_string_views_point_into_buffer)
{
	static const uint8_t buf[] = "\x08\x05hello\x09\x00";
	struct spop_cursor c = { buf, buf + sizeof(buf) - 1 };
	struct spop_data d;

	CHECK(spop_get_data(&c, &d) == SPOP_OK);
	CHECK(d.type == SPOP_DATA_STR && d.u.str.ptr == (const char *)buf + 2 && d.u.str.len == 5);
	CHECK(spop_get_data(&c, &d) == SPOP_OK);
	CHECK(d.type == SPOP_DATA_BIN && d.u.str.len == 0);
	CHECK(c.p == c.end);
}

CASE(data_flags)
{
	struct spop_cursor c;
	struct spop_data d;

	/* BOOL: the first flag bit only */
	c = CUR("\x31");
	CHECK(spop_get_data(&c, &d) == SPOP_OK && d.type == SPOP_DATA_BOOL && d.u.b);
	c = CUR("\xE1");
	CHECK(spop_get_data(&c, &d) == SPOP_OK && d.type == SPOP_DATA_BOOL && !d.u.b);
	/* flags on other types are ignored */
	c = CUR("\xF3\x07");
	CHECK(spop_get_data(&c, &d) == SPOP_OK && d.type == SPOP_DATA_UINT32 && d.u.u32 == 7);
	c = CUR("\x10");
	CHECK(spop_get_data(&c, &d) == SPOP_OK && d.type == SPOP_DATA_NULL && c.p == c.end);
}

CASE(data_errors)
{
	struct spop_cursor c;
	struct spop_data d;
	uint8_t b[2];

	/* types 10..15 are reserved, with any flags */
	for (int t = 10; t <= 15; t++) {
		for (int f = 0; f < 16; f++) {
			b[0] = (uint8_t)(f << 4 | t);
			b[1] = 0;
			c = (struct spop_cursor){ b, b + 2 };
			CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
			CHECK(c.p == b);
		}
	}
	c = (struct spop_cursor){ b, b };
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* INT32 above INT32_MAX (2^31) and below INT32_MIN (-2^31 - 1) */
	c = CUR("\x02\xF0\xF1\xFE\xFE\x3E");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	c = CUR("\x02\xFF\xF0\xFE\xFE\xBE\xFE\xFE\xFE\xFE\x0E");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* INT32 as a 32-bit pattern (0xFFFFFFFF) is out of range too */
	c = CUR("\x02\xFF\xF0\xFE\xFE\x7E");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* UINT32 of 2^32 */
	c = CUR("\x03\xF0\xF1\xFE\xFE\x7E");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* varints overflowing 64 bits in INT64 / UINT64 */
	c = CUR("\x04\xFF\xF1\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	c = CUR("\x05\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x8E\x00");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* short addresses */
	c = CUR("\x06\x01\x02\x03");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	c = CUR("\x07\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0A\x0B\x0C\x0D\x0E\x0F");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* lengths running past the end */
	c = CUR("\x08\x04" "abc");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	c = CUR("\x09\xF0\x00" "abc");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	/* a huge length (UINT64_MAX) */
	c = CUR("\x08\xFF\xF0\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E" "abc");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
	c = CUR("\x08");
	CHECK(spop_get_data(&c, &d) == SPOP_ERROR);
}

CASE(str_decode)
{
	struct spop_cursor c = CUR("\x03" "abc" "\x00" "\x05" "ab");
	struct spop_str s;

	CHECK(spop_get_str(&c, &s) == SPOP_OK && STREQ(s, "abc"));
	CHECK(spop_get_str(&c, &s) == SPOP_OK && s.len == 0);
	const uint8_t *before = c.p;
	CHECK(spop_get_str(&c, &s) == SPOP_ERROR && c.p == before);
	c.p = c.end;
	CHECK(spop_get_str(&c, &s) == SPOP_ERROR);
}

/* ---- KV lists (3.2) ------------------------------------------------- */

CASE(kv_list)
{
	struct spop_cursor c = CUR("\x01" "a" "\x03\x07" "\x02" "bb" "\x08\x02" "xy" "\x00" "\x00");
	struct spop_kv kv;

	CHECK(spop_next_kv(&c, &kv) == SPOP_OK);
	CHECK(STREQ(kv.name, "a") && kv.val.type == SPOP_DATA_UINT32 && kv.val.u.u32 == 7);
	CHECK(spop_next_kv(&c, &kv) == SPOP_OK);
	CHECK(STREQ(kv.name, "bb") && kv.val.type == SPOP_DATA_STR && STREQ(kv.val.u.str, "xy"));
	CHECK(spop_next_kv(&c, &kv) == SPOP_OK);     /* empty name, NULL value */
	CHECK(kv.name.len == 0 && kv.val.type == SPOP_DATA_NULL);
	CHECK(spop_next_kv(&c, &kv) == SPOP_END);
	CHECK(spop_next_kv(&c, &kv) == SPOP_END);

	c = (struct spop_cursor){ NULL, NULL };
	CHECK(spop_next_kv(&c, &kv) == SPOP_END);
}

CASE(kv_list_errors)
{
	struct spop_cursor c;
	struct spop_kv kv;
	const uint8_t *before;

	c = CUR("\x01" "a" "\x03\x07" "\x01" "b");      /* name without value */
	CHECK(spop_next_kv(&c, &kv) == SPOP_OK);
	before = c.p;
	CHECK(spop_next_kv(&c, &kv) == SPOP_ERROR && c.p == before);
	c = CUR("\x05" "ab");                            /* name past the end */
	CHECK(spop_next_kv(&c, &kv) == SPOP_ERROR);
	c = CUR("\x01" "a" "\x0B");                      /* reserved type */
	CHECK(spop_next_kv(&c, &kv) == SPOP_ERROR);
}

/* ---- framing (3.2) -------------------------------------------------- */

static const uint8_t notify_frame[] =
	"\x00\x00\x00\x2C"              /* length 44 */
	"\x03"                          /* NOTIFY */
	"\x00\x00\x00\x01"              /* FIN */
	"\xF0\x00"                      /* stream-id 240 */
	"\x07"                          /* frame-id 7 */
	/* message "check" with 2 args: ip=IPV4 10.0.0.1, n=INT64 5 */
	"\x05" "check" "\x02"
	"\x02" "ip" "\x06\x0A\x00\x00\x01"
	"\x01" "n" "\x04\x05"
	/* message "none" with 0 args */
	"\x04" "none" "\x00"
	/* message "hdr" with 1 arg: h=BIN(empty header block) */
	"\x03" "hdr" "\x01" "\x01" "h" "\x09\x02\x00\x00";

CASE(frame_check_one_byte_at_a_time)
{
	size_t total = sizeof(notify_frame) - 1;
	uint32_t flen = 0;
	enum spop_status st = SPOP_ST_NONE;

	CHECK(total == 4 + 44);
	for (size_t n = 0; n <= total; n++) {
		int rc = spop_frame_check(notify_frame, n, 16384, &flen, &st);
		if (n < total)
			CHECK(rc == SPOP_NEED_MORE);
		else
			CHECK(rc == SPOP_OK);
		if (n >= 4)
			CHECK(flen == 44);
	}
	/* more bytes than the frame (the next frame's start) still say OK */
	uint8_t two[2 * sizeof(notify_frame)];
	memcpy(two, notify_frame, total);
	memcpy(two + total, notify_frame, total);
	CHECK(spop_frame_check(two, 2 * total, 16384, &flen, &st) == SPOP_OK && flen == 44);
	CHECK(spop_frame_check(two + 4 + flen, total, 16384, &flen, &st) == SPOP_OK);
	CHECK(st == SPOP_ST_NONE);
}

CASE(frame_check_too_big_and_zero)
{
	uint32_t flen = 0;
	enum spop_status st = SPOP_ST_NONE;

	/* decided on the prefix alone */
	CHECK(spop_frame_check(B("\x00\x00\x01\x01"), 256, &flen, &st) == SPOP_ERROR);
	CHECK(st == SPOP_ST_TOO_BIG && flen == 257);
	st = SPOP_ST_NONE;
	CHECK(spop_frame_check(B("\xFF\xFF\xFF\xFF"), UINT32_MAX - 1, &flen, &st) == SPOP_ERROR);
	CHECK(st == SPOP_ST_TOO_BIG);
	st = SPOP_ST_NONE;
	CHECK(spop_frame_check(B("\x00\x00\x01\x00"), 256, &flen, &st) == SPOP_NEED_MORE);
	CHECK(flen == 256 && st == SPOP_ST_NONE);
	CHECK(spop_frame_check(B("\x00\x00\x00\x00"), 256, &flen, &st) == SPOP_ERROR);
	CHECK(st == SPOP_ST_INVALID && flen == 0);
	/* fewer than 4 bytes: nothing known yet */
	flen = 99;
	CHECK(spop_frame_check(B("\xFF\xFF\xFF"), 256, &flen, &st) == SPOP_NEED_MORE);
	CHECK(spop_frame_check(NULL, 0, 256, &flen, &st) == SPOP_NEED_MORE);
	CHECK(flen == 99);
}

CASE(frame_decode_notify)
{
	struct spop_frame f;
	enum spop_status st = SPOP_ST_NONE;

	CHECK(spop_decode_frame(notify_frame + 4, 44, &f, &st) == SPOP_OK);
	CHECK(f.type == SPOP_FRM_NOTIFY && f.flags == SPOP_FLAG_FIN);
	CHECK(f.stream_id == 240 && f.frame_id == 7);
	CHECK(f.payload.p == notify_frame + 4 + 8 && f.payload.end == notify_frame + 48);
	CHECK(st == SPOP_ST_NONE);
}

CASE(frame_decode_every_type)
{
	static const uint8_t types[] = { 0, 1, 2, 3, 101, 102, 103, 4, 100, 104, 255 };
	uint8_t fr[32];
	struct spop_frame f;
	enum spop_status st;

	for (size_t i = 0; i < sizeof(types); i++) {
		struct spop_wbuf w;
		spop_wbuf_init(&w, fr, sizeof(fr));
		spop_enc_frame_begin(&w, types[i], SPOP_FLAG_FIN | SPOP_FLAG_ABORT | 0x80000000u,
		                     UINT64_MAX, 2288);
		spop_enc_str(&w, "x", 1);
		CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
		CHECK(spop_frame_check(fr, w.len, 256, &(uint32_t){0}, &st) == SPOP_OK);
		CHECK(spop_decode_frame(fr + 4, w.len - 4, &f, &st) == SPOP_OK);
		CHECK(f.type == types[i]);
		CHECK(f.flags == (SPOP_FLAG_FIN | SPOP_FLAG_ABORT | 0x80000000u));
		CHECK(f.stream_id == UINT64_MAX && f.frame_id == 2288);
		CHECK(f.payload.end - f.payload.p == 2 && f.payload.p[1] == 'x');
	}
}

CASE(frame_decode_errors)
{
	struct spop_frame f;
	enum spop_status st;
	static const uint8_t hdr[] = "\x01\x00\x00\x00\x01\xF0\x80\x00\xF0\x80\x00";
	size_t full = sizeof(hdr) - 1;

	/* the header alone, with an empty payload, is fine */
	CHECK(spop_decode_frame(hdr, full, &f, &st) == SPOP_OK);
	CHECK(f.stream_id == 2288 && f.frame_id == 2288 && f.payload.p == f.payload.end);
	for (size_t n = 0; n < full; n++) {
		st = SPOP_ST_NONE;
		CHECK(spop_decode_frame(hdr, n, &f, &st) == SPOP_ERROR);
		CHECK(st == SPOP_ST_INVALID);
	}
	/* an overflowing stream-id */
	st = SPOP_ST_NONE;
	CHECK(spop_decode_frame(B("\x03\x00\x00\x00\x01\xFF\xF1\xFE\xFE\xFE\xFE\xFE\xFE\xFE\x0E\x00"),
	                        &f, &st) == SPOP_ERROR && st == SPOP_ST_INVALID);
}

/* ---- NOTIFY messages (3.2.6) ---------------------------------------- */

CASE(notify_messages_and_args)
{
	struct spop_frame f;
	enum spop_status st;
	struct spop_msg m;
	struct spop_kv kv;
	struct spop_cursor c;

	CHECK(spop_decode_frame(notify_frame + 4, 44, &f, &st) == SPOP_OK);
	c = f.payload;
	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(STREQ(m.name, "check") && m.nb_args == 2 && m.args_left == 2);
	CHECK(spop_next_arg(&m, &kv) == SPOP_OK);
	CHECK(STREQ(kv.name, "ip") && kv.val.type == SPOP_DATA_IPV4);
	CHECK(memcmp(kv.val.u.ipv4, "\x0A\x00\x00\x01", 4) == 0);
	CHECK(spop_next_arg(&m, &kv) == SPOP_OK);
	CHECK(STREQ(kv.name, "n") && kv.val.type == SPOP_DATA_INT64 && kv.val.u.i64 == 5);
	CHECK(spop_next_arg(&m, &kv) == SPOP_END);
	CHECK(spop_next_arg(&m, &kv) == SPOP_END);

	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(STREQ(m.name, "none") && m.nb_args == 0);
	CHECK(spop_next_arg(&m, &kv) == SPOP_END);

	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(STREQ(m.name, "hdr") && m.nb_args == 1);
	CHECK(spop_next_arg(&m, &kv) == SPOP_OK && kv.val.type == SPOP_DATA_BIN);
	CHECK(spop_next_msg(&c, &m) == SPOP_END);
	CHECK(spop_next_msg(&c, &m) == SPOP_END);
}

CASE(notify_skip_unread_args)
{
	struct spop_cursor c = { notify_frame + 12, notify_frame + 48 };
	struct spop_msg m;
	struct spop_kv kv;

	/* read nothing of "check" */
	CHECK(spop_next_msg(&c, &m) == SPOP_OK && STREQ(m.name, "check"));
	CHECK(spop_next_msg(&c, &m) == SPOP_OK && STREQ(m.name, "none"));
	/* read one of two args of a message, then move on */
	c = (struct spop_cursor){ notify_frame + 12, notify_frame + 48 };
	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(spop_next_arg(&m, &kv) == SPOP_OK && STREQ(kv.name, "ip"));
	CHECK(spop_next_msg(&c, &m) == SPOP_OK && STREQ(m.name, "none"));
	CHECK(spop_next_msg(&c, &m) == SPOP_OK && STREQ(m.name, "hdr"));
	CHECK(spop_next_msg(&c, &m) == SPOP_END);
}

CASE(notify_empty_and_errors)
{
	struct spop_cursor c;
	struct spop_msg m;
	const uint8_t *before;

	c = (struct spop_cursor){ notify_frame, notify_frame };
	CHECK(spop_next_msg(&c, &m) == SPOP_END);                /* zero messages */
	c = CUR("\x03" "abc");                                    /* no NB-ARGS */
	CHECK(spop_next_msg(&c, &m) == SPOP_ERROR);
	c = CUR("\x03" "abc" "\x02" "\x01" "a" "\x00");           /* 1 arg of 2 */
	before = c.p;
	CHECK(spop_next_msg(&c, &m) == SPOP_ERROR && c.p == before);
	c = CUR("\x03" "abc" "\x01" "\x01" "a" "\x0C");           /* reserved type */
	CHECK(spop_next_msg(&c, &m) == SPOP_ERROR);
	c = CUR("\x09" "abc");                                    /* name past end */
	CHECK(spop_next_msg(&c, &m) == SPOP_ERROR);
	c = CUR("\x01" "a" "\x01" "\x01" "b" "\x08\x05" "xy");    /* STR past end */
	CHECK(spop_next_msg(&c, &m) == SPOP_ERROR);
	/* a good message followed by a bad one */
	c = CUR("\x01" "a" "\x00" "\x01");
	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(spop_next_msg(&c, &m) == SPOP_ERROR);
	/* NB-ARGS is one byte: 255 args */
	{
		uint8_t buf[3 + 255 * 3];
		size_t n = 0;
		struct spop_kv kv;
		unsigned got = 0;
		buf[n++] = 1; buf[n++] = 'm'; buf[n++] = 255;
		for (int i = 0; i < 255; i++) { buf[n++] = 1; buf[n++] = 'k'; buf[n++] = 0; }
		c = (struct spop_cursor){ buf, buf + n };
		CHECK(spop_next_msg(&c, &m) == SPOP_OK && m.nb_args == 255);
		while (spop_next_arg(&m, &kv) == SPOP_OK)
			got++;
		CHECK(got == 255 && c.p == c.end);
	}
}

/* ---- HELLO (3.2.4) -------------------------------------------------- */

#define KV_VSN    "\x12" "supported-versions" "\x08\x03" "2.0"
#define KV_MFS    "\x0E" "max-frame-size" "\x03\xFC\xF0\x06"       /* 16380 */
#define KV_CAPS   "\x0C" "capabilities" "\x08\x0A" "pipelining"
#define KV_HC     "\x0B" "healthcheck" "\x11"
#define KV_ENGINE "\x09" "engine-id" "\x08\x04" "e-42"

CASE(hello_good)
{
	struct spop_hello h;
	enum spop_status st = SPOP_ST_NONE;

	CHECK(spop_decode_hello(CUR(KV_VSN KV_MFS KV_CAPS), &h, &st) == SPOP_OK);
	CHECK(h.has_versions && h.has_frame_size && h.has_caps);
	CHECK(STREQ(h.versions, "2.0") && h.max_frame_size == 16380 && STREQ(h.caps, "pipelining"));
	CHECK(!h.healthcheck && h.engine_id.len == 0);
	CHECK(st == SPOP_ST_NONE);

	/* any order, optional keys, unknown keys (of any type) ignored */
	CHECK(spop_decode_hello(CUR(KV_ENGINE "\x03" "foo" "\x06\x01\x02\x03\x04" KV_CAPS KV_HC
	                            KV_MFS KV_VSN "\x07" "unknown" "\x00"), &h, &st) == SPOP_OK);
	CHECK(h.healthcheck && STREQ(h.engine_id, "e-42") && h.max_frame_size == 16380);
	/* healthcheck false, empty capabilities */
	CHECK(spop_decode_hello(CUR(KV_VSN KV_MFS "\x0C" "capabilities" "\x08\x00"
	                            "\x0B" "healthcheck" "\x01"), &h, &st) == SPOP_OK);
	CHECK(!h.healthcheck && h.has_caps && h.caps.len == 0);
	/* a repeated key keeps the last value */
	CHECK(spop_decode_hello(CUR(KV_VSN KV_MFS KV_CAPS "\x0E" "max-frame-size" "\x03\xF0\x80\x00"),
	                        &h, &st) == SPOP_OK && h.max_frame_size == 2288);
}

CASE(hello_missing_fields)
{
	struct spop_hello h;
	enum spop_status st;

	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(KV_MFS KV_CAPS), &h, &st) == SPOP_ERROR && st == SPOP_ST_NO_VSN);
	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(KV_VSN KV_CAPS), &h, &st) == SPOP_ERROR && st == SPOP_ST_NO_FRAME_SIZE);
	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(KV_VSN KV_MFS KV_HC), &h, &st) == SPOP_ERROR && st == SPOP_ST_NO_CAP);
	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(""), &h, &st) == SPOP_ERROR && st == SPOP_ST_NO_VSN);
	/* the first missing one in the order of 3.2.4 wins */
	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(KV_CAPS), &h, &st) == SPOP_ERROR && st == SPOP_ST_NO_VSN);
	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(KV_VSN), &h, &st) == SPOP_ERROR && st == SPOP_ST_NO_FRAME_SIZE);
	/* a key name that only starts like a mandatory one is unknown */
	st = SPOP_ST_NONE;
	CHECK(spop_decode_hello(CUR(KV_VSN KV_MFS "\x0B" "capabilitie" "\x08\x00"), &h, &st) == SPOP_ERROR
	      && st == SPOP_ST_NO_CAP);
}

CASE(hello_wrong_types)
{
	struct spop_hello h;
	enum spop_status st;

#define WRONG(payload) do { st = SPOP_ST_NONE; \
	CHECK(spop_decode_hello(CUR(payload), &h, &st) == SPOP_ERROR && st == SPOP_ST_INVALID); } while (0)
	WRONG("\x12" "supported-versions" "\x09\x03" "2.0" KV_MFS KV_CAPS);     /* BIN */
	WRONG("\x12" "supported-versions" "\x00" KV_MFS KV_CAPS);               /* NULL */
	WRONG(KV_VSN "\x0E" "max-frame-size" "\x08\x05" "16380" KV_CAPS);       /* STR */
	WRONG(KV_VSN "\x0E" "max-frame-size" "\x05\xFC\xF0\x06" KV_CAPS);       /* UINT64 */
	WRONG(KV_VSN "\x0E" "max-frame-size" "\x02\xFC\xF0\x06" KV_CAPS);       /* INT32 */
	WRONG(KV_VSN KV_MFS "\x0C" "capabilities" "\x03\x00");                  /* UINT32 */
	WRONG(KV_VSN KV_MFS KV_CAPS "\x0B" "healthcheck" "\x03\x01");          /* UINT32 */
	WRONG(KV_VSN KV_MFS KV_CAPS "\x09" "engine-id" "\x01");                 /* BOOL */
	/* malformed: truncated KV, bad type, overflowing UINT32 */
	WRONG(KV_VSN KV_MFS KV_CAPS "\x05" "abc");
	WRONG(KV_VSN KV_MFS KV_CAPS "\x03" "abc");
	WRONG(KV_VSN KV_MFS KV_CAPS "\x03" "abc" "\x0F");
	WRONG(KV_VSN "\x0E" "max-frame-size" "\x03\xF0\xF1\xFE\xFE\x7E" KV_CAPS);
	/* a wrong type wins over a missing key */
	WRONG("\x0E" "max-frame-size" "\x08\x00");
#undef WRONG
}

CASE(hello_versions)
{
#define V(lit) spop_versions_accept((struct spop_str){ (lit), sizeof(lit) - 1 })
	CHECK(V("2.0"));
	CHECK(V("2.1"));
	CHECK(V(" 1.0 , 2.0"));
	CHECK(V("2.0, 1.5"));
	CHECK(V("1.0,2.0"));
	CHECK(V("1.0 2.0"));
	CHECK(V("\t2.0\t"));
	CHECK(V("2.10"));
	CHECK(V("02.0"));
	CHECK(V(",,2.0,,"));
	CHECK(!V(""));
	CHECK(!V(" , "));
	CHECK(!V("1.0"));
	CHECK(!V("3.0"));
	CHECK(!V("1.0, 3.0"));
	CHECK(!V("20.0"));
	CHECK(!V("12.0"));
	CHECK(!V("2"));
	CHECK(!V("2."));
	CHECK(!V(".0"));
	CHECK(!V("2.0a"));
	CHECK(!V("a2.0"));
	CHECK(!V("2.x"));
	CHECK(!V("2,0"));
	CHECK(!V("99999999999999999999.0"));
	CHECK(!V("2 .0"));
#undef V
}

CASE(hello_capabilities)
{
#define C(lit, cap) spop_caps_has((struct spop_str){ (lit), sizeof(lit) - 1 }, (cap))
	CHECK(C("pipelining", "pipelining"));
	CHECK(C("pipelining,async", "async"));
	CHECK(C("pipelining,async", "pipelining"));
	CHECK(C(" pipelining , async ", "async"));
	CHECK(C("fragmentation async pipelining", "pipelining"));
	CHECK(C(",pipelining,", "pipelining"));
	CHECK(!C("pipelining", "pipe"));
	CHECK(!C("pipeliningx", "pipelining"));
	CHECK(!C("xpipelining", "pipelining"));
	CHECK(!C("Pipelining", "pipelining"));
	CHECK(!C("", "pipelining"));
	CHECK(!C("pipelining", ""));
	CHECK(!C(" , ", ""));
	CHECK(!C("async", "pipelining"));
#undef C
}

/* ---- DISCONNECT (3.2.8) --------------------------------------------- */

CASE(disconnect_decode)
{
	struct spop_disconnect d;
	enum spop_status st;

	st = SPOP_ST_NONE;
	CHECK(spop_decode_disconnect(CUR("\x0B" "status-code" "\x03\x02" "\x07" "message" "\x08\x02" "to"),
	                             &d, &st) == SPOP_OK);
	CHECK(d.status == 2 && STREQ(d.message, "to") && st == SPOP_ST_NONE);
	/* order, unknown keys */
	CHECK(spop_decode_disconnect(CUR("\x07" "message" "\x08\x00" "\x01" "x" "\x11"
	                                 "\x0B" "status-code" "\x03\x63"), &d, &st) == SPOP_OK);
	CHECK(d.status == 99 && d.message.len == 0);
#define BAD(payload) do { st = SPOP_ST_NONE; \
	CHECK(spop_decode_disconnect(CUR(payload), &d, &st) == SPOP_ERROR && st == SPOP_ST_INVALID); } while (0)
	BAD("");
	BAD("\x07" "message" "\x08\x00");
	BAD("\x0B" "status-code" "\x03\x02");
	BAD("\x0B" "status-code" "\x04\x02" "\x07" "message" "\x08\x00");
	BAD("\x0B" "status-code" "\x03\x02" "\x07" "message" "\x09\x00");
	BAD("\x0B" "status-code" "\x03\x02" "\x07" "message" "\x08\x05" "ab");
#undef BAD
	/* what was read before the error is kept */
	CHECK(spop_decode_disconnect(CUR("\x0B" "status-code" "\x03\x05"), &d, &st) == SPOP_ERROR);
	CHECK(d.status == 5 && d.message.len == 0);
}

/* ---- req.hdrs_bin ---------------------------------------------------- */

CASE(hdrs_bin)
{
	static const char blk[] = "\x04" "host" "\x07" "example"
	                          "\x0D" "authorization" "\x09" "Bearer xy"
	                          "\x00" "\x05" "empty"    /* empty name, not the end */
	                          "\x01" "x" "\x00"        /* empty value */
	                          "\x00\x00"               /* terminator */
	                          "\x03" "ign" "\x00";     /* after it: ignored */
	struct spop_cursor c = CUR(blk);
	struct spop_str n, v;

	CHECK(spop_next_header(&c, &n, &v) == SPOP_OK && STREQ(n, "host") && STREQ(v, "example"));
	CHECK(spop_next_header(&c, &n, &v) == SPOP_OK && STREQ(n, "authorization") && STREQ(v, "Bearer xy"));
	CHECK(spop_next_header(&c, &n, &v) == SPOP_OK && n.len == 0 && STREQ(v, "empty"));
	CHECK(spop_next_header(&c, &n, &v) == SPOP_OK && STREQ(n, "x") && v.len == 0);
	CHECK(spop_next_header(&c, &n, &v) == SPOP_END);
	CHECK(c.p == c.end);
	CHECK(spop_next_header(&c, &n, &v) == SPOP_END);

	/* a block that simply ends */
	c = CUR("\x01" "a" "\x01" "b");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_OK);
	CHECK(spop_next_header(&c, &n, &v) == SPOP_END);
	c = CUR("");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_END);
	/* truncations */
	c = CUR("\x01" "a");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_ERROR);
	c = CUR("\x01" "a" "\x03" "bc");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_ERROR);
	c = CUR("\x00");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_ERROR);
	c = CUR("\xF0");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_ERROR);
	c = CUR("\x01" "a" "\x01" "b" "\x05" "ab");
	CHECK(spop_next_header(&c, &n, &v) == SPOP_OK);
	const uint8_t *before = c.p;
	CHECK(spop_next_header(&c, &n, &v) == SPOP_ERROR && c.p == before);
}

/* hdrs_bin as it arrives: BIN data of a NOTIFY argument */
CASE(hdrs_bin_in_notify)
{
	struct spop_cursor c = { notify_frame + 12, notify_frame + 48 };
	struct spop_msg m;
	struct spop_kv kv;
	struct spop_str n, v;

	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(spop_next_msg(&c, &m) == SPOP_OK);
	CHECK(spop_next_msg(&c, &m) == SPOP_OK && spop_next_arg(&m, &kv) == SPOP_OK);
	c = (struct spop_cursor){ (const uint8_t *)kv.val.u.str.ptr,
	                          (const uint8_t *)kv.val.u.str.ptr + kv.val.u.str.len };
	CHECK(spop_next_header(&c, &n, &v) == SPOP_END);
}

/* ---- encoding --------------------------------------------------------- */

CASE(enc_agent_hello_bytes)
{
	static const char want[] =
		"\x00\x00\x00\x40" "\x65" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x07" "version" "\x08\x03" "2.0"
		"\x0E" "max-frame-size" "\x03\xFC\xF0\x06"
		"\x0C" "capabilities" "\x08\x0A" "pipelining";
	uint8_t buf[128];
	struct spop_wbuf w;

	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_hello(&w, 16380, "pipelining") == SPOP_OK);
	CHECK(mem_is(buf, w.len, B(want)));
	CHECK(!w.err);

	/* decodes back as a HELLO-shaped KV list */
	struct spop_frame f;
	enum spop_status st;
	struct spop_kv kv;
	CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK && f.type == SPOP_FRM_AGENT_HELLO);
	CHECK(spop_next_kv(&f.payload, &kv) == SPOP_OK && STREQ(kv.name, "version"));

	/* too small a buffer: nothing written, ERROR */
	spop_wbuf_init(&w, buf, 40);
	CHECK(spop_enc_agent_hello(&w, 16380, "pipelining") == SPOP_ERROR);
	CHECK(w.len == 0 && !w.err);
	/* below 240 the size is a 1-byte varint: the frame is 62 bytes */
	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_hello(&w, 61, "pipelining") == SPOP_ERROR && w.len == 0);
	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_hello(&w, 62, "pipelining") == SPOP_OK && w.len == 4 + 62);
	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_hello(&w, 52, "") == SPOP_OK && w.len == 4 + 52);
}

CASE(enc_agent_disconnect_bytes)
{
	static const char want[] =
		"\x00\x00\x00\x26" "\x66" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x0B" "status-code" "\x03\x04"
		"\x07" "message" "\x08\x07" "invalid";
	uint8_t buf[1024];
	struct spop_wbuf w;
	struct spop_frame f;
	struct spop_disconnect d;
	enum spop_status st;

	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_disconnect(&w, 256, SPOP_ST_INVALID, "invalid") == SPOP_OK);
	CHECK(mem_is(buf, w.len, B(want)));

	/* readable by our own DISCONNECT parser (same KV as 3.2.8) */
	CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
	CHECK(f.type == SPOP_FRM_AGENT_DISCONNECT && f.flags == SPOP_FLAG_FIN);
	CHECK(spop_decode_disconnect(f.payload, &d, &st) == SPOP_OK);
	CHECK(d.status == SPOP_ST_INVALID && STREQ(d.message, "invalid"));

	/* a message longer than the frame allows is cut to fit */
	char longmsg[600];
	memset(longmsg, 'm', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = 0;
	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_disconnect(&w, SPOP_MIN_FRAME_SIZE, SPOP_ST_UNKNOWN, longmsg) == SPOP_OK);
	CHECK(w.len - 4 <= SPOP_MIN_FRAME_SIZE);
	CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
	CHECK(spop_decode_disconnect(f.payload, &d, &st) == SPOP_OK);
	CHECK(d.status == 99 && d.message.len > 200 && d.message.len < 256);
	/* a size below the fixed part cannot hold any DISCONNECT */
	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_disconnect(&w, 30, SPOP_ST_IO, "io") == SPOP_ERROR && w.len == 0);
	/* NULL message */
	spop_wbuf_init(&w, buf, sizeof(buf));
	CHECK(spop_enc_agent_disconnect(&w, 256, SPOP_ST_NONE, NULL) == SPOP_OK);
	CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
	CHECK(spop_decode_disconnect(f.payload, &d, &st) == SPOP_OK && d.status == 0 && d.message.len == 0);
	/* every status code fits, UINT32 */
	for (int s = 0; s <= 99; s++) {
		spop_wbuf_init(&w, buf, sizeof(buf));
		CHECK(spop_enc_agent_disconnect(&w, 256, (enum spop_status)s, spop_status_str((enum spop_status)s)) == SPOP_OK);
		CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
		CHECK(spop_decode_disconnect(f.payload, &d, &st) == SPOP_OK && d.status == (uint32_t)s);
	}
}

CASE(enc_ack_set_var_every_scope)
{
	static const char want[] =
		"\x00\x00\x00\x0E" "\x67" "\x00\x00\x00\x01" "\x05" "\x09"
		"\x01\x03\x02" "\x01" "a" "\x03\x07";
	uint8_t buf[512];
	struct spop_wbuf w;
	struct spop_data d = spop_uint_data(7);

	spop_wbuf_init(&w, buf, sizeof(buf));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 5, 9);
	spop_enc_set_var(&w, SPOP_SCOPE_TXN, "a", 1, &d);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
	CHECK(mem_is(buf, w.len, B(want)));

	for (int s = SPOP_SCOPE_PROC; s <= SPOP_SCOPE_RES; s++) {
		struct spop_frame f;
		enum spop_status st;
		struct spop_action a;
		struct spop_data vals[3] = { spop_str_data("v", 1), spop_int_data(-3), spop_bool_data(true) };

		spop_wbuf_init(&w, buf, sizeof(buf));
		spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 2);
		for (int i = 0; i < 3; i++)
			spop_enc_set_var(&w, (enum spop_scope)s, "var_name", 8, &vals[i]);
		CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
		CHECK(buf[4 + 7] == SPOP_ACT_SET_VAR && buf[4 + 8] == 3 && buf[4 + 9] == s);
		CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
		for (int i = 0; i < 3; i++) {
			CHECK(spop_next_action(&f.payload, &a) == SPOP_OK);
			CHECK(a.type == SPOP_ACT_SET_VAR && a.nb_args == 3 && a.scope == s);
			CHECK(STREQ(a.name, "var_name") && data_eq(&a.val, &vals[i]));
		}
		CHECK(spop_next_action(&f.payload, &a) == SPOP_END);
	}
}

CASE(enc_ack_unset_var_every_scope)
{
	static const char want[] =
		"\x00\x00\x00\x0F" "\x67" "\x00\x00\x00\x01" "\x00" "\x00"
		"\x02\x02\x04" "\x04" "name";
	uint8_t buf[256];
	struct spop_wbuf w;

	spop_wbuf_init(&w, buf, sizeof(buf));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 0, 0);
	spop_enc_unset_var(&w, SPOP_SCOPE_RES, "name", 4);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
	CHECK(mem_is(buf, w.len, B(want)));

	for (int s = SPOP_SCOPE_PROC; s <= SPOP_SCOPE_RES; s++) {
		struct spop_cursor c;
		struct spop_action a;

		spop_wbuf_init(&w, buf, sizeof(buf));
		spop_enc_unset_var(&w, (enum spop_scope)s, "x", 1);
		CHECK(!w.err && w.len == 5);
		CHECK(mem_is(buf, 3, (const uint8_t[]){ 2, 2, (uint8_t)s }, 3));
		c = (struct spop_cursor){ buf, buf + w.len };
		CHECK(spop_next_action(&c, &a) == SPOP_OK);
		CHECK(a.type == SPOP_ACT_UNSET_VAR && a.nb_args == 2 && a.scope == s && STREQ(a.name, "x"));
		CHECK(a.val.type == SPOP_DATA_NULL);
		CHECK(spop_next_action(&c, &a) == SPOP_END);
	}
	/* an invalid scope is an encoding error, reported at frame_end */
	spop_wbuf_init(&w, buf, sizeof(buf));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 0, 0);
	spop_enc_unset_var(&w, (enum spop_scope)5, "x", 1);
	CHECK(w.err);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_ERROR && w.len == 0 && !w.err);
	spop_enc_set_var(&w, (enum spop_scope)200, "x", 1, &(struct spop_data){ .type = SPOP_DATA_NULL });
	CHECK(w.err && w.len == 0);
}

CASE(enc_ack_empty)
{
	uint8_t buf[32];
	struct spop_wbuf w;

	spop_wbuf_init(&w, buf, sizeof(buf));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 240, 2287);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
	CHECK(mem_is(buf, w.len, B("\x00\x00\x00\x09" "\x67" "\x00\x00\x00\x01" "\xF0\x00" "\xFF\x7F")));
}

CASE(enc_overflow_and_rollback)
{
	uint8_t buf[64];
	struct spop_wbuf w;
	struct spop_data d;
	size_t first;

	memset(buf, 0xAA, sizeof(buf));
	spop_wbuf_init(&w, buf, sizeof(buf));
	/* a first, complete frame */
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
	first = w.len;
	CHECK(first == 11);
	/* a second one that overflows the buffer */
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 2, 2);
	d = spop_str_data("0123456789012345678901234567890123456789012345678901234567890123", 64);
	spop_enc_set_var(&w, SPOP_SCOPE_TXN, "big", 3, &d);
	CHECK(w.err);
	size_t at_err = w.len;
	/* later writes are no-ops */
	spop_enc_unset_var(&w, SPOP_SCOPE_TXN, "a", 1);
	spop_enc_str(&w, "", 0);
	CHECK(w.len == at_err && w.err);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_ERROR);
	CHECK(w.len == first && !w.err);
	/* the first frame is intact and the buffer takes another */
	CHECK(mem_is(buf, 11, B("\x00\x00\x00\x07" "\x67" "\x00\x00\x00\x01" "\x01\x01")));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 3, 3);
	spop_enc_unset_var(&w, SPOP_SCOPE_TXN, "a", 1);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK);
	CHECK(w.len == 11 + 11 + 5);

	/* a frame above max_frame_size, the buffer being large enough */
	uint8_t big[1024];
	char name[300];
	memset(name, 'n', sizeof(name));
	spop_wbuf_init(&w, big, sizeof(big));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);
	spop_enc_unset_var(&w, SPOP_SCOPE_TXN, name, sizeof(name));
	CHECK(!w.err);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_ERROR && w.len == 0);
	/* the limit is on the frame without its 4-byte prefix: exactly 256 is fine */
	spop_wbuf_init(&w, big, sizeof(big));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);   /* 7 bytes */
	spop_enc_unset_var(&w, SPOP_SCOPE_TXN, name, 256 - 7 - 3 - 2);  /* 3 + 2 + len */
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK && w.len == 4 + 256);
	spop_wbuf_init(&w, big, sizeof(big));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);
	spop_enc_unset_var(&w, SPOP_SCOPE_TXN, name, 256 - 7 - 3 - 2 + 1);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_ERROR && w.len == 0);

	/* overflow inside the frame header itself, and at each byte */
	for (size_t cap = 0; cap < 11; cap++) {
		spop_wbuf_init(&w, buf, cap);
		spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);
		CHECK(w.err);
		CHECK(spop_enc_frame_end(&w, 256) == SPOP_ERROR && w.len == 0);
	}
	spop_wbuf_init(&w, buf, 11);
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_OK && w.len == 11);
	/* an overflow in a varint's middle */
	spop_wbuf_init(&w, buf, 14);
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, UINT64_MAX, 1);
	CHECK(w.err && w.len <= 14);
	CHECK(spop_enc_frame_end(&w, 256) == SPOP_ERROR && w.len == 0);
}

/* Dropping one action that does not fit, keeping the ACK (tx_set_var). */
CASE(enc_rewind_one_action)
{
	uint8_t buf[40];
	struct spop_wbuf w;
	struct spop_data d = spop_str_data("0123456789", 10);
	size_t mark;
	struct spop_frame f;
	struct spop_action a;
	enum spop_status st;

	spop_wbuf_init(&w, buf, sizeof(buf));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 1, 1);
	CHECK(spop_enc_frame_len(&w) == 7);
	spop_enc_unset_var(&w, SPOP_SCOPE_TXN, "a", 1);
	CHECK(spop_enc_frame_len(&w) == 12);
	mark = w.len;
	spop_enc_set_var(&w, SPOP_SCOPE_TXN, "big", 3, &d);      /* 19 bytes each: too many */
	spop_enc_set_var(&w, SPOP_SCOPE_TXN, "big", 3, &d);
	CHECK(w.err);
	spop_wbuf_rewind(&w, mark);
	CHECK(!w.err && w.len == mark);
	/* a size limit, checked before frame_end */
	spop_enc_set_var(&w, SPOP_SCOPE_TXN, "big", 3, &d);
	CHECK(!w.err && spop_enc_frame_len(&w) == 12 + 19);
	if (spop_enc_frame_len(&w) > 20)
		spop_wbuf_rewind(&w, mark);
	CHECK(spop_enc_frame_end(&w, 20) == SPOP_OK && w.len == 4 + 12);
	CHECK(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
	CHECK(spop_next_action(&f.payload, &a) == SPOP_OK && a.type == SPOP_ACT_UNSET_VAR);
	CHECK(spop_next_action(&f.payload, &a) == SPOP_END);
	/* a mark outside the frame is refused */
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, 2, 2);
	size_t l = w.len;
	spop_wbuf_rewind(&w, 0);
	CHECK(w.len == l);
}

CASE(enc_data_every_type_roundtrip)
{
	uint8_t buf[512];
	struct spop_wbuf w;
	struct spop_data in[10], out;
	struct spop_cursor c;

	memset(in, 0, sizeof(in));
	in[0].type = SPOP_DATA_NULL;
	in[1] = spop_bool_data(true);
	in[2].type = SPOP_DATA_INT32; in[2].u.i32 = -123456;
	in[3] = spop_uint_data(4000000000u);
	in[4] = spop_int_data(-9000000000000000000ll);
	in[5].type = SPOP_DATA_UINT64; in[5].u.u64 = 18000000000000000000ull;
	in[6].type = SPOP_DATA_IPV4; memcpy(in[6].u.ipv4, "\xC0\xA8\x01\x02", 4);
	in[7].type = SPOP_DATA_IPV6; memset(in[7].u.ipv6, 0xFE, 16);
	in[8] = spop_str_data("h\0llo", 5);
	in[9] = spop_bin_data(NULL, 0);

	spop_wbuf_init(&w, buf, sizeof(buf));
	for (int i = 0; i < 10; i++)
		spop_enc_kv(&w, "k", &in[i]);
	CHECK(!w.err);
	c = (struct spop_cursor){ buf, buf + w.len };
	for (int i = 0; i < 10; i++) {
		struct spop_kv kv;
		CHECK(spop_next_kv(&c, &kv) == SPOP_OK && STREQ(kv.name, "k") && data_eq(&kv.val, &in[i]));
	}
	CHECK(spop_next_kv(&c, &(struct spop_kv){0}) == SPOP_END);

	/* a type outside 3.1 cannot be encoded */
	spop_wbuf_init(&w, buf, sizeof(buf));
	out.type = (enum spop_data_type)10;
	spop_enc_data(&w, &out);
	CHECK(w.err && w.len == 0);
}

CASE(action_decode_errors)
{
	struct spop_cursor c;
	struct spop_action a;

	c = CUR("\x01\x03");
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR);
	c = CUR("\x01\x03\x05\x01" "a" "\x00");          /* scope 5 */
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR);
	c = CUR("\x01\x02\x02\x01" "a" "\x00");          /* SET-VAR with 2 args */
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR);
	c = CUR("\x02\x03\x02\x01" "a");                  /* UNSET-VAR with 3 args */
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR);
	c = CUR("\x03\x02\x02\x01" "a");                  /* unknown action */
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR);
	c = CUR("\x01\x03\x02\x01" "a");                  /* missing value */
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR);
	c = CUR("\x02\x02\x02\x02" "a");                  /* name past end */
	const uint8_t *before = c.p;
	CHECK(spop_next_action(&c, &a) == SPOP_ERROR && c.p == before);
}

/* A whole exchange through the API, as the agent drives it. */
CASE(full_hello_exchange)
{
	uint8_t in[256], out[256];
	struct spop_wbuf w;
	uint32_t flen;
	enum spop_status st = SPOP_ST_NONE;
	struct spop_frame f;
	struct spop_hello h;

	/* HAProxy's HELLO, built with our encoder */
	spop_wbuf_init(&w, in, sizeof(in));
	spop_enc_frame_begin(&w, SPOP_FRM_HAPROXY_HELLO, SPOP_FLAG_FIN, 0, 0);
	struct spop_data d = spop_str_data("2.0", 3);
	spop_enc_kv(&w, "supported-versions", &d);
	d = spop_uint_data(16380);
	spop_enc_kv(&w, "max-frame-size", &d);
	d = spop_str_data("pipelining,async", 16);
	spop_enc_kv(&w, "capabilities", &d);
	d = spop_str_data("2B1C", 4);
	spop_enc_kv(&w, "engine-id", &d);
	CHECK(spop_enc_frame_end(&w, 16380) == SPOP_OK);

	CHECK(spop_frame_check(in, w.len, 16380, &flen, &st) == SPOP_OK);
	CHECK(spop_decode_frame(in + 4, flen, &f, &st) == SPOP_OK && f.type == SPOP_FRM_HAPROXY_HELLO);
	CHECK(spop_decode_hello(f.payload, &h, &st) == SPOP_OK);
	CHECK(spop_versions_accept(h.versions) && spop_caps_has(h.caps, "pipelining"));
	CHECK(h.max_frame_size == 16380 && STREQ(h.engine_id, "2B1C"));

	spop_wbuf_init(&w, out, sizeof(out));
	CHECK(spop_enc_agent_hello(&w, h.max_frame_size < 16380 ? h.max_frame_size : 16380,
	                           "pipelining") == SPOP_OK);
	CHECK(spop_frame_check(out, w.len, 16380, &flen, &st) == SPOP_OK && flen + 4 == w.len);
}

CASE(status_strings)
{
	for (int s = 0; s <= 13; s++) {
		const char *t = spop_status_str((enum spop_status)s);
		CHECK(t != NULL && t[0] != 0 && strcmp(t, "unknown status") != 0);
	}
	CHECK(strcmp(spop_status_str(SPOP_ST_UNKNOWN), "an unknown error occurred") == 0);
	CHECK(strcmp(spop_status_str(SPOP_ST_TOO_BIG), "frame is too big") == 0);
	CHECK(strcmp(spop_status_str((enum spop_status)50), "unknown status") == 0);
}

int main(void)
{
	RUN_ALL(varint_vectors_encode, varint_vectors_decode, varint_ranges_roundtrip, varint_errors,
	        data_vectors, data_string_views_point_into_buffer, data_flags, data_errors,
	        str_decode, kv_list, kv_list_errors, frame_check_one_byte_at_a_time,
	        frame_check_too_big_and_zero, frame_decode_notify, frame_decode_every_type,
	        frame_decode_errors, notify_messages_and_args, notify_skip_unread_args,
	        notify_empty_and_errors, hello_good, hello_missing_fields, hello_wrong_types,
	        hello_versions, hello_capabilities, disconnect_decode, hdrs_bin, hdrs_bin_in_notify,
	        enc_agent_hello_bytes, enc_agent_disconnect_bytes, enc_ack_set_var_every_scope,
	        enc_ack_unset_var_every_scope, enc_ack_empty, enc_overflow_and_rollback,
	        enc_rewind_one_action, enc_data_every_type_roundtrip, action_decode_errors,
	        full_hello_exchange, status_strings);
	DONE();
}
