/* spop.h -- the SPOP codec: decode and encode frames, no I/O, no allocation.
 *
 * Owns: the byte-level protocol of HAProxy's doc/SPOE.txt section 3. The
 * agent's connection code (agent/spop_server.c) reads bytes into a buffer,
 * asks spop_frame_check() whether a whole frame is there, decodes it with
 * spop_decode_frame() and the iterators below, and writes replies with the
 * spop_enc_*() functions into a buffer it owns. Every read is bounds-checked;
 * every error names the SPOP status to send back (3.5).
 */
#ifndef TOLLGATE_SPOP_H
#define TOLLGATE_SPOP_H

#include "spop-t.h"

/* ---- 3.1 varints ---------------------------------------------------- */

/* Decode one varint at c->p. SPOP_OK and advances; SPOP_ERROR if the bytes
 * end before the varint does or it overflows 64 bits. */
int spop_get_varint(struct spop_cursor *c, uint64_t *out);
/* Encode; returns bytes written (1..10) or 0 if `cap` is too small. */
size_t spop_put_varint(uint8_t *p, size_t cap, uint64_t v);

/* ---- framing (3.2) ------------------------------------------------- */

/* Incremental framing: given the bytes received so far, say whether a whole
 * frame is present. Can be fed one byte at a time.
 *  SPOP_NEED_MORE: fewer than 4 bytes, or the frame is not complete yet;
 *                  *frame_len is set once the length prefix is known.
 *  SPOP_OK:        *frame_len bytes follow the 4-byte prefix.
 *  SPOP_ERROR:     the announced length is 0 or above max_frame_size;
 *                  *status = SPOP_ST_TOO_BIG (or INVALID for 0). Known from
 *                  the prefix alone, so the caller never buffers it. */
int spop_frame_check(const uint8_t *buf, size_t len, uint32_t max_frame_size,
                     uint32_t *frame_len, enum spop_status *status);

/* Decode the frame header (type, flags, stream-id, frame-id) of a complete
 * frame (the bytes after the 4-byte prefix). SPOP_OK or SPOP_ERROR with
 * *status = SPOP_ST_INVALID. */
int spop_decode_frame(const uint8_t *frame, size_t len, struct spop_frame *f,
                      enum spop_status *status);

/* ---- typed data and KV lists (3.1, 3.2) ---------------------------- */

/* Decode one TYPED-DATA. SPOP_OK or SPOP_ERROR (truncated, bad type, a
 * length running past the end, an INT32/UINT32 varint above 32 bits).
 * INT32 and INT64 travel as the varint of their 64-bit two's complement (as
 * HAProxy writes a sint), so an INT32 must read back in [INT32_MIN,
 * INT32_MAX]; UINT32 in [0, UINT32_MAX]. FLAGS bits other than BOOL's 0x10
 * are ignored. On error the cursor is left where it was. */
int spop_get_data(struct spop_cursor *c, struct spop_data *d);
/* Decode a <STRING> (varint length + bytes, no type byte). */
int spop_get_str(struct spop_cursor *c, struct spop_str *s);

/* Iterate a KV-LIST: SPOP_OK (one kv), SPOP_END (cursor empty), SPOP_ERROR. */
int spop_next_kv(struct spop_cursor *c, struct spop_kv *kv);

/* ---- HELLO / DISCONNECT (3.2.4, 3.2.8) ----------------------------- */

/* Parse a HAPROXY-HELLO payload. Unknown keys are ignored; a repeated key
 * keeps its last value. Strict types: max-frame-size must be UINT32,
 * healthcheck BOOL, the others STR. Returns SPOP_OK,
 * or SPOP_ERROR with *status: INVALID (malformed, or a known key with the
 * wrong type), NO_VSN, NO_FRAME_SIZE, NO_CAP (mandatory key missing). Checks
 * of the values (version, size bounds) are the caller's: see below. */
int spop_decode_hello(struct spop_cursor payload, struct spop_hello *h,
                      enum spop_status *status);
/* True if the comma/space separated list names major version 2 (e.g.
 * "2.0", " 1.0 , 2.0"). A token must be <digits>.<digits>; "2" alone or
 * "2.x" is not accepted. */
bool spop_versions_accept(struct spop_str versions);
/* True if the comma/space separated list contains exactly `cap`
 * (case-sensitive; an empty `cap` is never found). */
bool spop_caps_has(struct spop_str caps, const char *cap);

/* Parse a HAPROXY-DISCONNECT payload (3.2.8). SPOP_OK, or SPOP_ERROR with
 * *status = INVALID if it is malformed, a known key has the wrong type
 * ("status-code" UINT32, "message" STR) or one of them is missing; *d then
 * holds what was read before the error (status 0, empty message otherwise). */
int spop_decode_disconnect(struct spop_cursor payload, struct spop_disconnect *d,
                           enum spop_status *status);

/* ---- NOTIFY (3.2.6) ------------------------------------------------ */

/* Iterate LIST-OF-MESSAGES. SPOP_OK fills *m (use spop_next_arg on it; the
 * iterator skips any args the caller did not read), SPOP_END, SPOP_ERROR.
 * All nb_args KV of the message are validated before SPOP_OK, so once a
 * message is returned spop_next_arg() cannot fail on it. */
int spop_next_msg(struct spop_cursor *c, struct spop_msg *m);
/* Next argument of a message: SPOP_OK, SPOP_END after nb_args, SPOP_ERROR. */
int spop_next_arg(struct spop_msg *m, struct spop_kv *kv);

/* Iterate the LIST-OF-ACTIONS of an ACK (3.4): SPOP_OK, SPOP_END, or
 * SPOP_ERROR (truncated, scope above 4, an action other than SET-VAR with 3
 * args or UNSET-VAR with 2). The agent never reads ACKs; tests and tools do. */
int spop_next_action(struct spop_cursor *c, struct spop_action *a);

/* ---- req.hdrs_bin / res.hdrs_bin ----------------------------------- */

/* HAProxy's binary header block: <STRING name><STRING value> pairs ended by
 * two empty strings. SPOP_OK (one header), SPOP_END (terminator reached, or
 * the block simply ends), SPOP_ERROR (truncated). The terminator moves the
 * cursor to its end: bytes after it are ignored. An empty name with a
 * non-empty value is a header, not the end. */
int spop_next_header(struct spop_cursor *c, struct spop_str *name,
                     struct spop_str *value);

/* ---- encoding ------------------------------------------------------ */

void spop_wbuf_init(struct spop_wbuf *w, uint8_t *buf, size_t cap);

/* Begin a frame: reserves the length prefix, writes type, flags (FIN is the
 * caller's to pass), stream-id, frame-id. */
void spop_enc_frame_begin(struct spop_wbuf *w, uint8_t type, uint32_t flags,
                          uint64_t stream_id, uint64_t frame_id);
/* Bytes of the frame being written, without its 4-byte prefix: compare with
 * the negotiated size before frame_end to drop what does not fit. */
static inline size_t spop_enc_frame_len(const struct spop_wbuf *w)
{ return w->len - w->frame_start >= SPOP_FRAME_HDR_LEN ? w->len - w->frame_start - SPOP_FRAME_HDR_LEN : 0; }
/* Undo the writes since `mark` (a w->len saved earlier in the same frame)
 * and clear w->err: drops one action that overflowed, keeps the frame. */
static inline void spop_wbuf_rewind(struct spop_wbuf *w, size_t mark)
{ if (mark >= w->frame_start && mark <= w->len) { w->len = mark; w->err = false; } }

/* Patch the length prefix. Returns SPOP_OK, or SPOP_ERROR if the buffer
 * overflowed or the frame exceeds max_frame_size (then w->len is rolled back
 * to the frame's start so nothing partial is ever sent, and w->err is
 * cleared: frames before it are intact and the buffer can take another). */
int spop_enc_frame_end(struct spop_wbuf *w, uint32_t max_frame_size);

void spop_enc_str(struct spop_wbuf *w, const char *p, size_t len);  /* <STRING> */
/* TYPED-DATA; INT32/INT64 as the varint of their 64-bit two's complement.
 * A type outside 0..9 sets w->err. */
void spop_enc_data(struct spop_wbuf *w, const struct spop_data *d);
void spop_enc_kv(struct spop_wbuf *w, const char *name, const struct spop_data *d);

/* Convenience builders for whole frames the agent sends (FIN, stream 0,
 * frame 0; KV in the order of 3.2.5 / 3.2.9). The frame is checked against
 * max_frame_size. AGENT-DISCONNECT cuts `message` (may be NULL) so that the
 * frame fits when max_frame_size >= SPOP_MIN_FRAME_SIZE. */
int spop_enc_agent_hello(struct spop_wbuf *w, uint32_t max_frame_size,
                         const char *caps);
int spop_enc_agent_disconnect(struct spop_wbuf *w, uint32_t max_frame_size,
                              enum spop_status status, const char *message);

/* Actions inside an ACK payload (3.4). Between frame_begin(ACK) and end.
 * A scope above SPOP_SCOPE_RES sets w->err. */
void spop_enc_set_var(struct spop_wbuf *w, enum spop_scope scope,
                      const char *name, size_t name_len, const struct spop_data *d);
void spop_enc_unset_var(struct spop_wbuf *w, enum spop_scope scope,
                        const char *name, size_t name_len);

/* Data constructors, for readable call sites. */
static inline struct spop_data spop_str_data(const char *p, size_t len)
{ struct spop_data d = { .type = SPOP_DATA_STR }; d.u.str.ptr = p; d.u.str.len = len; return d; }
static inline struct spop_data spop_bin_data(const char *p, size_t len)
{ struct spop_data d = { .type = SPOP_DATA_BIN }; d.u.str.ptr = p; d.u.str.len = len; return d; }
static inline struct spop_data spop_int_data(int64_t v)
{ struct spop_data d = { .type = SPOP_DATA_INT64 }; d.u.i64 = v; return d; }
static inline struct spop_data spop_uint_data(uint32_t v)
{ struct spop_data d = { .type = SPOP_DATA_UINT32 }; d.u.u32 = v; return d; }
static inline struct spop_data spop_bool_data(bool v)
{ struct spop_data d = { .type = SPOP_DATA_BOOL }; d.u.b = v; return d; }

/* Human-readable name of a status code, for logs and DISCONNECT messages. */
const char *spop_status_str(enum spop_status st);

#endif
