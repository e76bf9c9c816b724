/* spop.c -- the SPOP codec (HAProxy doc/SPOE.txt, section 3).
 *
 * Owns: turning bytes into frames, typed data, KV lists, messages, HELLO and
 * DISCONNECT fields, and back. No I/O, no allocation: decoded strings are
 * views into the caller's buffer, encoding writes into a caller-owned
 * struct spop_wbuf. Every read goes through a bounds check against the end of
 * the cursor; decoders leave the caller's cursor untouched on error. The
 * contract of each function is in spop.h.
 */
#include <string.h>

#include "spop.h"

/* Compare a decoded view against a string literal (no strlen). */
#define STR_IS(s, lit) ((s).len == sizeof(lit) - 1 && memcmp((s).ptr, (lit), sizeof(lit) - 1) == 0)

static inline size_t cur_left(const struct spop_cursor *c)
{
	return (size_t)(c->end - c->p);
}

/* ---- 3.1 varints ---------------------------------------------------- */

/* Peers encoding (3.1). X < 240 is one byte. Otherwise the first byte carries
 * the low 4 bits of X with the high nibble set (X | 0xF0) and X becomes
 * (X - 240) >> 4; then 7-bit groups follow, each with the continuation bit
 * 0x80 while X >= 128, X becoming (X - 128) >> 7, and a last byte < 128.
 * Decoding adds each byte shifted by 4, 11, 18, ... to the first one: the
 * 240/128 that encoding subtracted are the high bits of those bytes. Every
 * byte string thus decodes to exactly one value and every value has exactly
 * one encoding, 1 to 10 bytes long for 64 bits. */
int spop_get_varint(struct spop_cursor *c, uint64_t *out)
{
	const uint8_t *p = c->p;
	uint64_t v, term;
	unsigned shift = 4;

	if (p >= c->end)
		return SPOP_ERROR;
	v = *p++;
	if (v < 240) {
		c->p = p;
		*out = v;
		return SPOP_OK;
	}
	for (;;) {
		uint8_t b;

		if (p >= c->end)
			return SPOP_ERROR;              /* truncated */
		b = *p++;
		if (shift >= 64 || (shift > 56 && (b >> (64 - shift)) != 0))
			return SPOP_ERROR;              /* bits beyond 64 */
		term = (uint64_t)b << shift;
		if (v > UINT64_MAX - term)
			return SPOP_ERROR;              /* sum beyond 64 bits */
		v += term;
		if (b < 128)
			break;
		shift += 7;
	}
	c->p = p;
	*out = v;
	return SPOP_OK;
}

size_t spop_put_varint(uint8_t *p, size_t cap, uint64_t v)
{
	uint8_t tmp[SPOP_VARINT_MAX_LEN];
	size_t n = 0;

	if (v < 240) {
		tmp[n++] = (uint8_t)v;
	}
	else {
		tmp[n++] = (uint8_t)(v | 0xF0);
		v = (v - 240) >> 4;
		while (v >= 128) {
			tmp[n++] = (uint8_t)(v | 0x80);
			v = (v - 128) >> 7;
		}
		tmp[n++] = (uint8_t)v;
	}
	if (n > cap)
		return 0;
	memcpy(p, tmp, n);
	return n;
}

/* ---- framing (3.2) ------------------------------------------------- */

static inline uint32_t read_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void write_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

int spop_frame_check(const uint8_t *buf, size_t len, uint32_t max_frame_size,
                     uint32_t *frame_len, enum spop_status *status)
{
	uint32_t flen;

	if (len < SPOP_FRAME_HDR_LEN)
		return SPOP_NEED_MORE;
	flen = read_be32(buf);
	*frame_len = flen;
	if (flen == 0) {
		*status = SPOP_ST_INVALID;
		return SPOP_ERROR;
	}
	if (flen > max_frame_size) {
		*status = SPOP_ST_TOO_BIG;
		return SPOP_ERROR;
	}
	if (len - SPOP_FRAME_HDR_LEN < flen)
		return SPOP_NEED_MORE;
	return SPOP_OK;
}

/* 3.2: <FRAME-TYPE:1 byte> <FLAGS:4 bytes> <STREAM-ID:varint> <FRAME-ID:varint> */
int spop_decode_frame(const uint8_t *frame, size_t len, struct spop_frame *f,
                      enum spop_status *status)
{
	struct spop_cursor c = { frame, frame + len };

	if (len < 1 + 4)
		goto invalid;
	f->type = frame[0];
	f->flags = read_be32(frame + 1);
	c.p += 5;
	if (spop_get_varint(&c, &f->stream_id) != SPOP_OK ||
	    spop_get_varint(&c, &f->frame_id) != SPOP_OK)
		goto invalid;
	f->payload = c;
	return SPOP_OK;
 invalid:
	*status = SPOP_ST_INVALID;
	return SPOP_ERROR;
}

/* ---- typed data and KV lists (3.1, 3.2) ---------------------------- */

int spop_get_str(struct spop_cursor *c, struct spop_str *s)
{
	struct spop_cursor t = *c;
	uint64_t n;

	if (spop_get_varint(&t, &n) != SPOP_OK || n > cur_left(&t))
		return SPOP_ERROR;
	s->ptr = (const char *)t.p;
	s->len = (size_t)n;
	c->p = t.p + n;
	return SPOP_OK;
}

/* 3.1: <TYPE:4 bits><FLAGS:4 bits><DATA>. The type is the low nibble, the
 * flags the high one; only BOOL gives a meaning to a flag (0x10 = true), the
 * others are ignored as HAProxy does. */
int spop_get_data(struct spop_cursor *c, struct spop_data *d)
{
	struct spop_cursor t = *c;
	uint64_t v;
	uint8_t tb;

	if (t.p >= t.end)
		return SPOP_ERROR;
	tb = *t.p++;
	memset(d, 0, sizeof(*d));
	d->type = (enum spop_data_type)(tb & 0x0F);
	switch (tb & 0x0F) {
	case SPOP_DATA_NULL:
		break;
	case SPOP_DATA_BOOL:
		d->u.b = (tb & SPOP_DATA_FL_TRUE) != 0;
		break;
	case SPOP_DATA_INT32:
		/* A signed value travels as its 64-bit two's complement (what
		 * HAProxy reads back as a sint), so it must fit in int32_t. */
		if (spop_get_varint(&t, &v) != SPOP_OK)
			return SPOP_ERROR;
		if ((int64_t)v < INT32_MIN || (int64_t)v > INT32_MAX)
			return SPOP_ERROR;
		d->u.i32 = (int32_t)(int64_t)v;
		break;
	case SPOP_DATA_UINT32:
		if (spop_get_varint(&t, &v) != SPOP_OK || v > UINT32_MAX)
			return SPOP_ERROR;
		d->u.u32 = (uint32_t)v;
		break;
	case SPOP_DATA_INT64:
		if (spop_get_varint(&t, &v) != SPOP_OK)
			return SPOP_ERROR;
		d->u.i64 = (int64_t)v;
		break;
	case SPOP_DATA_UINT64:
		if (spop_get_varint(&t, &v) != SPOP_OK)
			return SPOP_ERROR;
		d->u.u64 = v;
		break;
	case SPOP_DATA_IPV4:
		if (cur_left(&t) < 4)
			return SPOP_ERROR;
		memcpy(d->u.ipv4, t.p, 4);
		t.p += 4;
		break;
	case SPOP_DATA_IPV6:
		if (cur_left(&t) < 16)
			return SPOP_ERROR;
		memcpy(d->u.ipv6, t.p, 16);
		t.p += 16;
		break;
	case SPOP_DATA_STR:
	case SPOP_DATA_BIN:
		if (spop_get_str(&t, &d->u.str) != SPOP_OK)
			return SPOP_ERROR;
		break;
	default:                                /* 10..15: reserved */
		return SPOP_ERROR;
	}
	c->p = t.p;
	return SPOP_OK;
}

/* 3.2: KV-LIST : [ <KV-NAME:STRING> <KV-VALUE:TYPED-DATA> ... ] */
int spop_next_kv(struct spop_cursor *c, struct spop_kv *kv)
{
	struct spop_cursor t = *c;

	if (t.p >= t.end)
		return SPOP_END;
	if (spop_get_str(&t, &kv->name) != SPOP_OK ||
	    spop_get_data(&t, &kv->val) != SPOP_OK)
		return SPOP_ERROR;
	*c = t;
	return SPOP_OK;
}

/* ---- HELLO / DISCONNECT (3.2.4, 3.2.8) ----------------------------- */

int spop_decode_hello(struct spop_cursor payload, struct spop_hello *h,
                      enum spop_status *status)
{
	struct spop_kv kv;
	int rc;

	memset(h, 0, sizeof(*h));
	while ((rc = spop_next_kv(&payload, &kv)) == SPOP_OK) {
		if (STR_IS(kv.name, "supported-versions")) {
			if (kv.val.type != SPOP_DATA_STR)
				goto invalid;
			h->versions = kv.val.u.str;
			h->has_versions = true;
		}
		else if (STR_IS(kv.name, "max-frame-size")) {
			if (kv.val.type != SPOP_DATA_UINT32)
				goto invalid;
			h->max_frame_size = kv.val.u.u32;
			h->has_frame_size = true;
		}
		else if (STR_IS(kv.name, "capabilities")) {
			if (kv.val.type != SPOP_DATA_STR)
				goto invalid;
			h->caps = kv.val.u.str;
			h->has_caps = true;
		}
		else if (STR_IS(kv.name, "healthcheck")) {
			if (kv.val.type != SPOP_DATA_BOOL)
				goto invalid;
			h->healthcheck = kv.val.u.b;
		}
		else if (STR_IS(kv.name, "engine-id")) {
			if (kv.val.type != SPOP_DATA_STR)
				goto invalid;
			h->engine_id = kv.val.u.str;
		}
		/* 3.2.4 names no other key: unknown ones are ignored */
	}
	if (rc != SPOP_END)
		goto invalid;
	if (!h->has_versions) {
		*status = SPOP_ST_NO_VSN;
		return SPOP_ERROR;
	}
	if (!h->has_frame_size) {
		*status = SPOP_ST_NO_FRAME_SIZE;
		return SPOP_ERROR;
	}
	if (!h->has_caps) {
		*status = SPOP_ST_NO_CAP;
		return SPOP_ERROR;
	}
	return SPOP_OK;
 invalid:
	*status = SPOP_ST_INVALID;
	return SPOP_ERROR;
}

static inline bool is_list_sep(char ch)
{
	return ch == ',' || ch == ' ' || ch == '\t';
}

/* Calls back on each token of a comma/space separated list (3.2.4: "Spaces
 * must be ignored"); stops when cb returns true. */
static bool list_any(struct spop_str list, bool (*cb)(const char *p, size_t len, const void *arg),
                     const void *arg)
{
	size_t i = 0, start;

	while (i < list.len) {
		while (i < list.len && is_list_sep(list.ptr[i]))
			i++;
		start = i;
		while (i < list.len && !is_list_sep(list.ptr[i]))
			i++;
		if (i > start && cb(list.ptr + start, i - start, arg))
			return true;
	}
	return false;
}

/* A "Major.Minor" token whose major is 2 (leading zeros allowed). */
static bool version_is_2(const char *p, size_t len, const void *arg)
{
	size_t i = 0, digits;
	unsigned major = 0;

	(void)arg;
	for (digits = 0; i < len && p[i] >= '0' && p[i] <= '9'; i++, digits++) {
		if (major > 2)                  /* stop growing: not 2 anyway */
			continue;
		major = major * 10 + (unsigned)(p[i] - '0');
	}
	if (digits == 0 || major != 2 || i >= len || p[i] != '.')
		return false;
	for (i++, digits = 0; i < len && p[i] >= '0' && p[i] <= '9'; i++, digits++)
		;
	return digits > 0 && i == len;
}

bool spop_versions_accept(struct spop_str versions)
{
	return list_any(versions, version_is_2, NULL);
}

struct cap_arg {
	const char *cap;
	size_t len;
};

static bool cap_is(const char *p, size_t len, const void *arg)
{
	const struct cap_arg *a = arg;

	return len == a->len && memcmp(p, a->cap, len) == 0;
}

bool spop_caps_has(struct spop_str caps, const char *cap)
{
	struct cap_arg a = { cap, strlen(cap) };  /* caller's C-string constant */

	if (a.len == 0)
		return false;
	return list_any(caps, cap_is, &a);
}

/* 3.2.8: "status-code" <UINT32>, "message" <STRING>, both mandatory. */
int spop_decode_disconnect(struct spop_cursor payload, struct spop_disconnect *d,
                           enum spop_status *status)
{
	struct spop_kv kv;
	bool has_status = false, has_message = false;
	int rc;

	memset(d, 0, sizeof(*d));
	while ((rc = spop_next_kv(&payload, &kv)) == SPOP_OK) {
		if (STR_IS(kv.name, "status-code")) {
			if (kv.val.type != SPOP_DATA_UINT32)
				goto invalid;
			d->status = kv.val.u.u32;
			has_status = true;
		}
		else if (STR_IS(kv.name, "message")) {
			if (kv.val.type != SPOP_DATA_STR)
				goto invalid;
			d->message = kv.val.u.str;
			has_message = true;
		}
	}
	if (rc != SPOP_END || !has_status || !has_message)
		goto invalid;
	return SPOP_OK;
 invalid:
	*status = SPOP_ST_INVALID;
	return SPOP_ERROR;
}

/* ---- NOTIFY (3.2.6) ------------------------------------------------ */

/* LIST-OF-MESSAGES : [ <MESSAGE-NAME:STRING> <NB-ARGS:1 byte> <KV-LIST> ... ]
 * The KV-LIST of a message has no length of its own: its end is found by
 * walking its nb_args KV, which also validates them all before the caller
 * sees the message. c then points after them, whatever the caller reads. */
int spop_next_msg(struct spop_cursor *c, struct spop_msg *m)
{
	struct spop_cursor t = *c;
	const uint8_t *args;
	struct spop_kv kv;
	unsigned i, nb;

	if (t.p >= t.end)
		return SPOP_END;
	if (spop_get_str(&t, &m->name) != SPOP_OK || t.p >= t.end)
		return SPOP_ERROR;
	nb = *t.p++;
	args = t.p;
	for (i = 0; i < nb; i++) {
		if (spop_next_kv(&t, &kv) != SPOP_OK)
			return SPOP_ERROR;      /* bad KV, or fewer than announced */
	}
	m->nb_args = nb;
	m->args_left = nb;
	m->args.p = args;
	m->args.end = t.p;
	c->p = t.p;
	return SPOP_OK;
}

int spop_next_arg(struct spop_msg *m, struct spop_kv *kv)
{
	if (m->args_left == 0)
		return SPOP_END;
	if (spop_next_kv(&m->args, kv) != SPOP_OK)
		return SPOP_ERROR;
	m->args_left--;
	return SPOP_OK;
}

/* ---- 3.4 actions, read back ---------------------------------------- */

/* <ACTION-TYPE:1 byte><NB-ARGS:1 byte><VAR-SCOPE:1 byte><VAR-NAME:STRING>
 * [<VAR-VALUE:TYPED-DATA>] */
int spop_next_action(struct spop_cursor *c, struct spop_action *a)
{
	struct spop_cursor t = *c;

	if (t.p >= t.end)
		return SPOP_END;
	if (cur_left(&t) < 3)
		return SPOP_ERROR;
	memset(a, 0, sizeof(*a));
	a->type = t.p[0];
	a->nb_args = t.p[1];
	a->scope = t.p[2];
	t.p += 3;
	if (a->scope > SPOP_SCOPE_RES)
		return SPOP_ERROR;
	if (spop_get_str(&t, &a->name) != SPOP_OK)
		return SPOP_ERROR;
	if (a->type == SPOP_ACT_SET_VAR && a->nb_args == 3) {
		if (spop_get_data(&t, &a->val) != SPOP_OK)
			return SPOP_ERROR;
	}
	else if (a->type == SPOP_ACT_UNSET_VAR && a->nb_args == 2) {
		a->val.type = SPOP_DATA_NULL;
	}
	else
		return SPOP_ERROR;
	*c = t;
	return SPOP_OK;
}

/* ---- req.hdrs_bin / res.hdrs_bin ----------------------------------- */

int spop_next_header(struct spop_cursor *c, struct spop_str *name,
                     struct spop_str *value)
{
	struct spop_cursor t = *c;

	if (t.p >= t.end)
		return SPOP_END;
	if (spop_get_str(&t, name) != SPOP_OK || spop_get_str(&t, value) != SPOP_OK)
		return SPOP_ERROR;
	if (name->len == 0 && value->len == 0) {
		c->p = c->end;                  /* terminator: nothing after it counts */
		return SPOP_END;
	}
	*c = t;
	return SPOP_OK;
}

/* ---- encoding ------------------------------------------------------ */

void spop_wbuf_init(struct spop_wbuf *w, uint8_t *buf, size_t cap)
{
	w->buf = buf;
	w->cap = cap;
	w->len = 0;
	w->frame_start = 0;
	w->err = false;
}

static void put_bytes(struct spop_wbuf *w, const void *p, size_t n)
{
	if (w->err)
		return;
	if (n > w->cap - w->len) {
		w->err = true;
		return;
	}
	if (n)
		memcpy(w->buf + w->len, p, n);
	w->len += n;
}

static inline void put_byte(struct spop_wbuf *w, uint8_t b)
{
	put_bytes(w, &b, 1);
}

static void put_varint(struct spop_wbuf *w, uint64_t v)
{
	size_t n;

	if (w->err)
		return;
	if (w->len == w->cap) {
		w->err = true;
		return;
	}
	n = spop_put_varint(w->buf + w->len, w->cap - w->len, v);
	if (n == 0)
		w->err = true;
	else
		w->len += n;
}

void spop_enc_frame_begin(struct spop_wbuf *w, uint8_t type, uint32_t flags,
                          uint64_t stream_id, uint64_t frame_id)
{
	uint8_t hdr[SPOP_FRAME_HDR_LEN + 5];

	w->frame_start = w->len;
	memset(hdr, 0, SPOP_FRAME_HDR_LEN);     /* length, patched by frame_end */
	hdr[SPOP_FRAME_HDR_LEN] = type;
	write_be32(hdr + SPOP_FRAME_HDR_LEN + 1, flags);
	put_bytes(w, hdr, sizeof(hdr));
	put_varint(w, stream_id);
	put_varint(w, frame_id);
}

int spop_enc_frame_end(struct spop_wbuf *w, uint32_t max_frame_size)
{
	size_t flen;

	if (w->err || w->len < w->frame_start + SPOP_FRAME_HDR_LEN)
		goto rollback;
	flen = w->len - w->frame_start - SPOP_FRAME_HDR_LEN;
	if (flen > max_frame_size)
		goto rollback;
	write_be32(w->buf + w->frame_start, (uint32_t)flen);
	return SPOP_OK;
 rollback:
	if (w->frame_start <= w->len)
		w->len = w->frame_start;
	w->err = false;                         /* the buffer is whole again */
	return SPOP_ERROR;
}

void spop_enc_str(struct spop_wbuf *w, const char *p, size_t len)
{
	put_varint(w, len);
	put_bytes(w, p, len);
}

void spop_enc_data(struct spop_wbuf *w, const struct spop_data *d)
{
	switch (d->type) {
	case SPOP_DATA_NULL:
		put_byte(w, SPOP_DATA_NULL);
		break;
	case SPOP_DATA_BOOL:
		put_byte(w, SPOP_DATA_BOOL | (d->u.b ? SPOP_DATA_FL_TRUE : 0));
		break;
	case SPOP_DATA_INT32:
		put_byte(w, SPOP_DATA_INT32);
		put_varint(w, (uint64_t)(int64_t)d->u.i32);
		break;
	case SPOP_DATA_UINT32:
		put_byte(w, SPOP_DATA_UINT32);
		put_varint(w, d->u.u32);
		break;
	case SPOP_DATA_INT64:
		put_byte(w, SPOP_DATA_INT64);
		put_varint(w, (uint64_t)d->u.i64);
		break;
	case SPOP_DATA_UINT64:
		put_byte(w, SPOP_DATA_UINT64);
		put_varint(w, d->u.u64);
		break;
	case SPOP_DATA_IPV4:
		put_byte(w, SPOP_DATA_IPV4);
		put_bytes(w, d->u.ipv4, 4);
		break;
	case SPOP_DATA_IPV6:
		put_byte(w, SPOP_DATA_IPV6);
		put_bytes(w, d->u.ipv6, 16);
		break;
	case SPOP_DATA_STR:
	case SPOP_DATA_BIN:
		put_byte(w, (uint8_t)d->type);
		spop_enc_str(w, d->u.str.ptr, d->u.str.len);
		break;
	default:                                /* not a type of 3.1 */
		w->err = true;
		break;
	}
}

void spop_enc_kv(struct spop_wbuf *w, const char *name, const struct spop_data *d)
{
	spop_enc_str(w, name, strlen(name));    /* caller's C-string constant */
	spop_enc_data(w, d);
}

/* 3.2.5: "version" <STRING>, "max-frame-size" <UINT32>, "capabilities" <STRING>. */
int spop_enc_agent_hello(struct spop_wbuf *w, uint32_t max_frame_size,
                         const char *caps)
{
	struct spop_data d;

	spop_enc_frame_begin(w, SPOP_FRM_AGENT_HELLO, SPOP_FLAG_FIN, 0, 0);
	d = spop_str_data(SPOP_VERSION, sizeof(SPOP_VERSION) - 1);
	spop_enc_kv(w, "version", &d);
	d = spop_uint_data(max_frame_size);
	spop_enc_kv(w, "max-frame-size", &d);
	d = spop_str_data(caps, strlen(caps));
	spop_enc_kv(w, "capabilities", &d);
	return spop_enc_frame_end(w, max_frame_size);
}

/* Bytes of an AGENT-DISCONNECT besides the message's bytes, at most:
 * type 1 + flags 4 + ids 2, "status-code" 12 + UINT32 6, "message" 8 +
 * type 1 + length varint 5. */
#define DISCONNECT_OVERHEAD 39u

/* 3.2.9: "status-code" <UINT32>, "message" <STRING>. The message is cut so
 * that the frame fits max_frame_size: a DISCONNECT is never refused for its
 * text. */
int spop_enc_agent_disconnect(struct spop_wbuf *w, uint32_t max_frame_size,
                              enum spop_status status, const char *message)
{
	struct spop_data d;
	size_t mlen = message ? strlen(message) : 0;

	if (max_frame_size <= DISCONNECT_OVERHEAD)
		mlen = 0;
	else if (mlen > max_frame_size - DISCONNECT_OVERHEAD)
		mlen = max_frame_size - DISCONNECT_OVERHEAD;
	spop_enc_frame_begin(w, SPOP_FRM_AGENT_DISCONNECT, SPOP_FLAG_FIN, 0, 0);
	d = spop_uint_data((uint32_t)status);
	spop_enc_kv(w, "status-code", &d);
	d = spop_str_data(message ? message : "", mlen);
	spop_enc_kv(w, "message", &d);
	return spop_enc_frame_end(w, max_frame_size);
}

/* 3.4: ACTION-SET-VAR : <1><3><VAR-SCOPE:1 byte><VAR-NAME:STRING><TYPED-DATA> */
void spop_enc_set_var(struct spop_wbuf *w, enum spop_scope scope,
                      const char *name, size_t name_len, const struct spop_data *d)
{
	if ((unsigned)scope > SPOP_SCOPE_RES) {
		w->err = true;
		return;
	}
	put_byte(w, SPOP_ACT_SET_VAR);
	put_byte(w, 3);
	put_byte(w, (uint8_t)scope);
	spop_enc_str(w, name, name_len);
	spop_enc_data(w, d);
}

/* 3.4: ACTION-UNSET-VAR : <2><2><VAR-SCOPE:1 byte><VAR-NAME:STRING> */
void spop_enc_unset_var(struct spop_wbuf *w, enum spop_scope scope,
                        const char *name, size_t name_len)
{
	if ((unsigned)scope > SPOP_SCOPE_RES) {
		w->err = true;
		return;
	}
	put_byte(w, SPOP_ACT_UNSET_VAR);
	put_byte(w, 2);
	put_byte(w, (uint8_t)scope);
	spop_enc_str(w, name, name_len);
}

/* 3.5 */
const char *spop_status_str(enum spop_status st)
{
	switch (st) {
	case SPOP_ST_NONE:           return "normal";
	case SPOP_ST_IO:             return "I/O error";
	case SPOP_ST_TIMEOUT:        return "a timeout occurred";
	case SPOP_ST_TOO_BIG:        return "frame is too big";
	case SPOP_ST_INVALID:        return "invalid frame received";
	case SPOP_ST_NO_VSN:         return "version value not found";
	case SPOP_ST_NO_FRAME_SIZE:  return "max-frame-size value not found";
	case SPOP_ST_NO_CAP:         return "capabilities value not found";
	case SPOP_ST_BAD_VSN:        return "unsupported version";
	case SPOP_ST_BAD_FRAME_SIZE: return "max-frame-size too big or too small";
	case SPOP_ST_FRAG_NOT_SUPP:  return "payload fragmentation is not supported";
	case SPOP_ST_INTERLACED:     return "invalid interlaced frames";
	case SPOP_ST_FRAMEID_NOTFND: return "frame-id not found";
	case SPOP_ST_RES:            return "resource allocation error";
	case SPOP_ST_UNKNOWN:        return "an unknown error occurred";
	}
	return "unknown status";
}
