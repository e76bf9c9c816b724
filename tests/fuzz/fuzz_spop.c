/* fuzz_spop.c -- libFuzzer target for the SPOP codec (spoe/spop.c).
 *
 * Owns: the claim that no byte string makes the decoder read out of bounds,
 * loop, or hand back something the encoder would write differently. The
 * input is read as a stream of length-prefixed frames (SPOE.txt 3.2) and
 * each payload is walked through every view that could apply to it: KV list,
 * HELLO (3.2.4), DISCONNECT (3.2.8), LIST-OF-MESSAGES (3.2.6), actions (3.4)
 * and hdrs_bin. Everything decoded is re-encoded and compared (FUZZ_ASSERT,
 * active whatever NDEBUG says). The first input byte steers the choices
 * that are not in the protocol (frame size limit, how many args to read,
 * writer capacity), so the fuzzer explores them too.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined (tests/fuzz/run.sh).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spop.h"

#define FUZZ_ASSERT(cond) do { if (!(cond)) { \
	fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
	abort(); } } while (0)

static uint8_t steer;           /* first input byte */

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

/* A view must lie inside the cursor it came from. */
static void check_view(struct spop_str s, const uint8_t *lo, const uint8_t *hi)
{
	FUZZ_ASSERT(s.len == 0 || ((const uint8_t *)s.ptr >= lo && (const uint8_t *)s.ptr + s.len <= hi));
}

/* `orig` (olen bytes) is what the decoder consumed for d: our encoding must
 * be the same bytes, except the FLAGS nibble that only BOOL keeps (3.1). */
static void check_data_roundtrip(const struct spop_data *d, const uint8_t *orig, size_t olen)
{
	uint8_t out[32];
	struct spop_wbuf w;
	struct spop_cursor c;
	struct spop_data back;
	uint8_t first;

	FUZZ_ASSERT(olen >= 1);
	if (d->type == SPOP_DATA_STR || d->type == SPOP_DATA_BIN) {
		/* the bytes are a view: check the head only, without copying */
		uint8_t hdr[1 + SPOP_VARINT_MAX_LEN];
		size_t n = spop_put_varint(hdr + 1, SPOP_VARINT_MAX_LEN, d->u.str.len);
		FUZZ_ASSERT(n > 0);
		hdr[0] = (uint8_t)d->type;
		FUZZ_ASSERT(olen == 1 + n + d->u.str.len);
		FUZZ_ASSERT((orig[0] & 0x0F) == hdr[0]);
		FUZZ_ASSERT(memcmp(orig + 1, hdr + 1, n) == 0);
		FUZZ_ASSERT((const uint8_t *)d->u.str.ptr == orig + 1 + n || d->u.str.len == 0);
		return;
	}
	spop_wbuf_init(&w, out, sizeof(out));
	spop_enc_data(&w, d);
	FUZZ_ASSERT(!w.err);
	FUZZ_ASSERT(w.len == olen);
	first = (uint8_t)(orig[0] & 0x0F);
	if (d->type == SPOP_DATA_BOOL)
		first |= (uint8_t)(orig[0] & SPOP_DATA_FL_TRUE);
	FUZZ_ASSERT(out[0] == first);
	FUZZ_ASSERT(memcmp(out + 1, orig + 1, olen - 1) == 0);
	c = (struct spop_cursor){ out, out + w.len };
	FUZZ_ASSERT(spop_get_data(&c, &back) == SPOP_OK && c.p == c.end);
	FUZZ_ASSERT(data_eq(&back, d));
	/* every proper prefix of a good encoding is a truncation */
	c = (struct spop_cursor){ out, out + w.len - 1 };
	FUZZ_ASSERT(spop_get_data(&c, &back) == SPOP_ERROR && c.p == out);
}

/* A KV as read by spop_next_kv from [start, end): name then data. */
static void check_kv_roundtrip(const struct spop_kv *kv, const uint8_t *start, const uint8_t *end)
{
	uint8_t hdr[SPOP_VARINT_MAX_LEN];
	size_t n = spop_put_varint(hdr, sizeof(hdr), kv->name.len);

	check_view(kv->name, start, end);
	FUZZ_ASSERT(n > 0 && (size_t)(end - start) > n + kv->name.len);
	FUZZ_ASSERT(memcmp(start, hdr, n) == 0);
	FUZZ_ASSERT((const uint8_t *)kv->name.ptr == start + n || kv->name.len == 0);
	check_data_roundtrip(&kv->val, start + n + kv->name.len, (size_t)(end - start) - n - kv->name.len);
	if (kv->val.type == SPOP_DATA_STR || kv->val.type == SPOP_DATA_BIN)
		check_view(kv->val.u.str, start, end);
}

static void walk_kv_list(struct spop_cursor c)
{
	struct spop_kv kv;
	const uint8_t *start = c.p;
	int rc;

	while ((rc = spop_next_kv(&c, &kv)) == SPOP_OK) {
		FUZZ_ASSERT(c.p > start && c.p <= c.end);
		check_kv_roundtrip(&kv, start, c.p);
		start = c.p;
	}
	FUZZ_ASSERT(c.p == start);              /* untouched on END / ERROR */
	FUZZ_ASSERT(rc == SPOP_ERROR || c.p == c.end);
}

static void walk_headers(struct spop_cursor c)
{
	struct spop_str n, v;
	const uint8_t *lo = c.p, *hi = c.end;
	int rc, guard = 0;

	while ((rc = spop_next_header(&c, &n, &v)) == SPOP_OK) {
		check_view(n, lo, hi);
		check_view(v, lo, hi);
		FUZZ_ASSERT(n.len != 0 || v.len != 0);
		FUZZ_ASSERT(++guard < 100000);
	}
	FUZZ_ASSERT(rc == SPOP_END || rc == SPOP_ERROR);
	if (rc == SPOP_END)
		FUZZ_ASSERT(c.p == c.end);
}

/* Build the HELLO the fields describe and parse it again. */
static void check_hello_roundtrip(const struct spop_hello *h)
{
	static uint8_t buf[3 * 4096 + 256];
	struct spop_wbuf w;
	struct spop_data d;
	struct spop_frame f;
	struct spop_hello h2;
	enum spop_status st;

	spop_wbuf_init(&w, buf, sizeof(buf));
	spop_enc_frame_begin(&w, SPOP_FRM_HAPROXY_HELLO, SPOP_FLAG_FIN, 0, 0);
	d = spop_str_data(h->versions.ptr, h->versions.len);
	spop_enc_kv(&w, "supported-versions", &d);
	d = spop_uint_data(h->max_frame_size);
	spop_enc_kv(&w, "max-frame-size", &d);
	d = spop_str_data(h->caps.ptr, h->caps.len);
	spop_enc_kv(&w, "capabilities", &d);
	d = spop_bool_data(h->healthcheck);
	spop_enc_kv(&w, "healthcheck", &d);
	d = spop_str_data(h->engine_id.ptr, h->engine_id.len);
	spop_enc_kv(&w, "engine-id", &d);
	FUZZ_ASSERT(spop_enc_frame_end(&w, UINT32_MAX) == SPOP_OK);
	FUZZ_ASSERT(spop_decode_frame(buf + 4, w.len - 4, &f, &st) == SPOP_OK);
	FUZZ_ASSERT(spop_decode_hello(f.payload, &h2, &st) == SPOP_OK);
	FUZZ_ASSERT(h2.max_frame_size == h->max_frame_size && h2.healthcheck == h->healthcheck);
	FUZZ_ASSERT(h2.versions.len == h->versions.len && h2.caps.len == h->caps.len &&
	            h2.engine_id.len == h->engine_id.len);
	FUZZ_ASSERT(spop_versions_accept(h2.versions) == spop_versions_accept(h->versions));
}

static void walk_hello(struct spop_cursor payload)
{
	struct spop_hello h;
	enum spop_status st = SPOP_ST_NONE;
	uint8_t out[512];
	struct spop_wbuf w;

	if (spop_decode_hello(payload, &h, &st) != SPOP_OK) {
		FUZZ_ASSERT(st == SPOP_ST_INVALID || st == SPOP_ST_NO_VSN ||
		            st == SPOP_ST_NO_FRAME_SIZE || st == SPOP_ST_NO_CAP);
		return;
	}
	FUZZ_ASSERT(h.has_versions && h.has_frame_size && h.has_caps);
	check_view(h.versions, payload.p, payload.end);
	check_view(h.caps, payload.p, payload.end);
	check_view(h.engine_id, payload.p, payload.end);
	(void)spop_versions_accept(h.versions);
	(void)spop_caps_has(h.caps, "pipelining");
	(void)spop_caps_has(h.caps, "async");
	(void)spop_caps_has(h.caps, "fragmentation");
	check_hello_roundtrip(&h);

	/* the answer, as the agent builds it */
	spop_wbuf_init(&w, out, sizeof(out));
	if (h.max_frame_size >= SPOP_MIN_FRAME_SIZE) {
		uint32_t mfs = h.max_frame_size < 16380 ? h.max_frame_size : 16380;
		uint32_t flen;
		FUZZ_ASSERT(spop_enc_agent_hello(&w, mfs, "pipelining") == SPOP_OK);
		FUZZ_ASSERT(spop_frame_check(out, w.len, mfs, &flen, &st) == SPOP_OK && flen + 4 == w.len);
	}
}

static void walk_disconnect(struct spop_cursor payload)
{
	struct spop_disconnect d;
	enum spop_status st = SPOP_ST_NONE;
	char msg[600];
	uint8_t out[700];
	struct spop_wbuf w;
	struct spop_frame f;
	struct spop_disconnect back;
	uint32_t mfs = SPOP_MIN_FRAME_SIZE + steer;
	size_t mlen;

	if (spop_decode_disconnect(payload, &d, &st) != SPOP_OK) {
		FUZZ_ASSERT(st == SPOP_ST_INVALID);
		return;
	}
	check_view(d.message, payload.p, payload.end);
	/* echo it back through AGENT-DISCONNECT: always fits, cut if needed */
	mlen = d.message.len < sizeof(msg) - 1 ? d.message.len : sizeof(msg) - 1;
	if (mlen)
		memcpy(msg, d.message.ptr, mlen);
	msg[mlen] = 0;
	mlen = strlen(msg);                     /* an embedded NUL ends it */
	spop_wbuf_init(&w, out, sizeof(out));
	FUZZ_ASSERT(spop_enc_agent_disconnect(&w, mfs, (enum spop_status)d.status, msg) == SPOP_OK);
	FUZZ_ASSERT(w.len - 4 <= mfs);
	FUZZ_ASSERT(spop_decode_frame(out + 4, w.len - 4, &f, &st) == SPOP_OK);
	FUZZ_ASSERT(f.type == SPOP_FRM_AGENT_DISCONNECT && f.flags == SPOP_FLAG_FIN);
	FUZZ_ASSERT(spop_decode_disconnect(f.payload, &back, &st) == SPOP_OK);
	FUZZ_ASSERT(back.status == d.status && back.message.len <= mlen);
	FUZZ_ASSERT(back.message.len == 0 || memcmp(back.message.ptr, msg, back.message.len) == 0);
}

/* Echo every argument as set-var / unset-var (like tollgate-echo) into an
 * ACK, in a writer whose size the input chooses, then read the ACK back. */
static void walk_messages(struct spop_cursor payload, uint64_t sid, uint64_t fid)
{
	static uint8_t out[8192];
	struct spop_cursor c = payload;
	struct spop_msg m;
	struct spop_kv kv;
	struct spop_wbuf w;
	size_t cap = (size_t)steer * 32 + 16;
	uint32_t mfs = SPOP_MIN_FRAME_SIZE + (uint32_t)steer * 16;
	unsigned nacts = 0;
	int rc, msgs = 0;

	spop_wbuf_init(&w, out, cap < sizeof(out) ? cap : sizeof(out));
	spop_enc_frame_begin(&w, SPOP_FRM_ACK, SPOP_FLAG_FIN, sid, fid);
	while ((rc = spop_next_msg(&c, &m)) == SPOP_OK) {
		const uint8_t *start = m.args.p;
		unsigned want = (steer & 1) ? m.nb_args : m.nb_args / 2;   /* sometimes skip some */
		unsigned got = 0;

		check_view(m.name, payload.p, payload.end);
		FUZZ_ASSERT(m.args.p >= payload.p && m.args.end <= c.p && c.p <= payload.end);
		FUZZ_ASSERT(m.args_left == m.nb_args && m.nb_args <= 255);
		while (got < want && spop_next_arg(&m, &kv) == SPOP_OK) {
			check_kv_roundtrip(&kv, start, m.args.p);
			start = m.args.p;
			got++;
			if (kv.val.type == SPOP_DATA_BIN) {
				struct spop_cursor h = { (const uint8_t *)kv.val.u.str.ptr,
				                         (const uint8_t *)kv.val.u.str.ptr + kv.val.u.str.len };
				walk_headers(h);
			}
			if (kv.val.type == SPOP_DATA_NULL)
				spop_enc_unset_var(&w, SPOP_SCOPE_TXN, kv.name.ptr, kv.name.len);
			else
				spop_enc_set_var(&w, (enum spop_scope)(got % 5), kv.name.ptr, kv.name.len, &kv.val);
			nacts++;
		}
		/* once a message is returned, its args cannot fail */
		FUZZ_ASSERT(got == want);
		if (want == m.nb_args) {
			FUZZ_ASSERT(spop_next_arg(&m, &kv) == SPOP_END);
			FUZZ_ASSERT(m.args.p == m.args.end);
		}
		FUZZ_ASSERT(++msgs < 100000);
	}
	FUZZ_ASSERT(rc == SPOP_END || rc == SPOP_ERROR);

	if (spop_enc_frame_end(&w, mfs) != SPOP_OK) {
		FUZZ_ASSERT(w.len == 0 && !w.err);    /* rolled back whole */
		return;
	}
	/* the ACK is a valid frame and its actions read back */
	{
		uint32_t flen;
		enum spop_status st;
		struct spop_frame f;
		struct spop_action a;
		unsigned n = 0;

		FUZZ_ASSERT(spop_frame_check(out, w.len, mfs, &flen, &st) == SPOP_OK && flen + 4 == w.len);
		FUZZ_ASSERT(spop_decode_frame(out + 4, flen, &f, &st) == SPOP_OK);
		FUZZ_ASSERT(f.type == SPOP_FRM_ACK && f.stream_id == sid && f.frame_id == fid);
		while ((rc = spop_next_action(&f.payload, &a)) == SPOP_OK)
			n++;
		FUZZ_ASSERT(rc == SPOP_END && n == nacts);
	}
}

/* An ACK-shaped payload: actions must re-encode to the same bytes. */
static void walk_actions(struct spop_cursor c)
{
	uint8_t out[64];
	struct spop_action a;
	const uint8_t *start = c.p;

	while (spop_next_action(&c, &a) == SPOP_OK) {
		size_t olen = (size_t)(c.p - start);
		uint8_t vsn[1 + SPOP_VARINT_MAX_LEN];
		size_t n = spop_put_varint(vsn, sizeof(vsn), a.name.len);

		FUZZ_ASSERT(a.scope <= SPOP_SCOPE_RES);
		FUZZ_ASSERT(olen >= 3 + n + a.name.len);
		FUZZ_ASSERT(start[0] == a.type && start[1] == a.nb_args && start[2] == a.scope);
		FUZZ_ASSERT(memcmp(start + 3, vsn, n) == 0);
		if (a.type == SPOP_ACT_SET_VAR)
			check_data_roundtrip(&a.val, start + 3 + n + a.name.len, olen - 3 - n - a.name.len);
		else
			FUZZ_ASSERT(olen == 3 + n + a.name.len);
		/* and the encoder agrees, when it fits our small buffer */
		if (olen <= sizeof(out)) {
			struct spop_wbuf w;
			spop_wbuf_init(&w, out, sizeof(out));
			if (a.type == SPOP_ACT_SET_VAR)
				spop_enc_set_var(&w, (enum spop_scope)a.scope, a.name.ptr, a.name.len, &a.val);
			else
				spop_enc_unset_var(&w, (enum spop_scope)a.scope, a.name.ptr, a.name.len);
			FUZZ_ASSERT(!w.err && w.len == olen);
			FUZZ_ASSERT(memcmp(out, start, 3 + n + a.name.len) == 0);
		}
		start = c.p;
	}
	FUZZ_ASSERT(c.p == start);
}

static void check_frame_header(const uint8_t *frame, const struct spop_frame *f)
{
	uint8_t out[4 + 5 + 2 * SPOP_VARINT_MAX_LEN];
	struct spop_wbuf w;
	size_t hlen = (size_t)(f->payload.p - frame);

	spop_wbuf_init(&w, out, sizeof(out));
	spop_enc_frame_begin(&w, f->type, f->flags, f->stream_id, f->frame_id);
	FUZZ_ASSERT(!w.err && w.len == 4 + hlen);
	FUZZ_ASSERT(memcmp(out + 4, frame, hlen) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint32_t max_frame_size;
	const uint8_t *p;
	size_t left;

	if (size < 1)
		return 0;
	steer = data[0];
	/* a limit between 0 and 4095, or no practical limit */
	max_frame_size = (steer & 0x80) ? UINT32_MAX : (uint32_t)steer * 32;
	p = data + 1;
	left = size - 1;

	/* the first bytes as a bare varint */
	{
		struct spop_cursor c = { p, p + left };
		uint64_t v;
		uint8_t out[SPOP_VARINT_MAX_LEN];
		if (spop_get_varint(&c, &v) == SPOP_OK) {
			size_t n = spop_put_varint(out, sizeof(out), v);
			FUZZ_ASSERT(n == (size_t)(c.p - p) && memcmp(out, p, n) == 0);
		}
		else
			FUZZ_ASSERT(c.p == p);
	}
	/* the whole input as a hdrs_bin block */
	walk_headers((struct spop_cursor){ p, p + left });

	while (left > 0) {
		uint32_t flen = 0, flen2 = 0;
		enum spop_status st = SPOP_ST_NONE, st2 = SPOP_ST_NONE;
		struct spop_frame f;
		int rc = spop_frame_check(p, left, max_frame_size, &flen, &st);

		/* incremental framing: a shorter read never says more */
		if (left > 4) {
			int rc2 = spop_frame_check(p, left - 1, max_frame_size, &flen2, &st2);
			FUZZ_ASSERT(flen2 == flen);
			if (rc == SPOP_ERROR)
				FUZZ_ASSERT(rc2 == SPOP_ERROR && st2 == st);
			else if (rc2 == SPOP_OK)
				FUZZ_ASSERT(rc == SPOP_OK);
		}
		if (rc == SPOP_NEED_MORE) {
			FUZZ_ASSERT(left < 4 || (size_t)flen > left - 4);
			break;
		}
		if (rc == SPOP_ERROR) {
			FUZZ_ASSERT((flen == 0 && st == SPOP_ST_INVALID) ||
			            (flen > max_frame_size && st == SPOP_ST_TOO_BIG));
			break;
		}
		FUZZ_ASSERT(flen >= 1 && flen <= max_frame_size && (size_t)flen <= left - 4);

		const uint8_t *frame = p + 4;
		if (spop_decode_frame(frame, flen, &f, &st) == SPOP_OK) {
			FUZZ_ASSERT(f.payload.p >= frame + 7 && f.payload.end == frame + flen);
			check_frame_header(frame, &f);
			walk_kv_list(f.payload);
			switch (f.type) {
			case SPOP_FRM_HAPROXY_HELLO:
			case SPOP_FRM_AGENT_HELLO:
				walk_hello(f.payload);
				break;
			case SPOP_FRM_HAPROXY_DISCONNECT:
			case SPOP_FRM_AGENT_DISCONNECT:
				walk_disconnect(f.payload);
				break;
			case SPOP_FRM_NOTIFY:
			case SPOP_FRM_UNSET:
				walk_messages(f.payload, f.stream_id, f.frame_id);
				break;
			case SPOP_FRM_ACK:
				walk_actions(f.payload);
				break;
			default:                /* unknown: every view, for coverage */
				walk_hello(f.payload);
				walk_disconnect(f.payload);
				walk_messages(f.payload, f.stream_id, f.frame_id);
				walk_actions(f.payload);
				walk_headers(f.payload);
				break;
			}
		}
		else
			FUZZ_ASSERT(st == SPOP_ST_INVALID);
		p += 4 + flen;
		left -= 4 + flen;
	}
	return 0;
}
