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
 * length running past the end, an INT32/UINT32 varint above 32 bits). */
int spop_get_data(struct spop_cursor *c, struct spop_data *d);
/* Decode a <STRING> (varint length + bytes, no type byte). */
int spop_get_str(struct spop_cursor *c, struct spop_str *s);

/* Iterate a KV-LIST: SPOP_OK (one kv), SPOP_END (cursor empty), SPOP_ERROR. */
int spop_next_kv(struct spop_cursor *c, struct spop_kv *kv);

/* ---- HELLO / DISCONNECT (3.2.4, 3.2.8) ----------------------------- */

/* Parse a HAPROXY-HELLO payload. Unknown keys are ignored. Returns SPOP_OK,
 * or SPOP_ERROR with *status: INVALID (malformed, or a known key with the
 * wrong type), NO_VSN, NO_FRAME_SIZE, NO_CAP (mandatory key missing). Checks
 * of the values (version, size bounds) are the caller's: see below. */
int spop_decode_hello(struct spop_cursor payload, struct spop_hello *h,
                      enum spop_status *status);
/* True if the comma/space separated list names major version 2 (e.g.
 * "2.0", " 1.0 , 2.0"). */
bool spop_versions_accept(struct spop_str versions);
/* True if the comma/space separated list contains exactly `cap`. */
bool spop_caps_has(struct spop_str caps, const char *cap);

int spop_decode_disconnect(struct spop_cursor payload, struct spop_disconnect *d,
                           enum spop_status *status);

/* ---- NOTIFY (3.2.6) ------------------------------------------------ */

/* Iterate LIST-OF-MESSAGES. SPOP_OK fills *m (use spop_next_arg on it; the
 * iterator skips any args the caller did not read), SPOP_END, SPOP_ERROR. */
int spop_next_msg(struct spop_cursor *c, struct spop_msg *m);
/* Next argument of a message: SPOP_OK, SPOP_END after nb_args, SPOP_ERROR. */
int spop_next_arg(struct spop_msg *m, struct spop_kv *kv);

/* ---- req.hdrs_bin / res.hdrs_bin ----------------------------------- */

/* HAProxy's binary header block: <STRING name><STRING value> pairs ended by
 * two empty strings. SPOP_OK (one header), SPOP_END (terminator reached, or
 * the block simply ends), SPOP_ERROR (truncated). */
int spop_next_header(struct spop_cursor *c, struct spop_str *name,
                     struct spop_str *value);

/* ---- encoding ------------------------------------------------------ */

void spop_wbuf_init(struct spop_wbuf *w, uint8_t *buf, size_t cap);

/* Begin a frame: reserves the length prefix, writes type, flags (FIN is the
 * caller's to pass), stream-id, frame-id. */
void spop_enc_frame_begin(struct spop_wbuf *w, uint8_t type, uint32_t flags,
                          uint64_t stream_id, uint64_t frame_id);
/* Patch the length prefix. Returns SPOP_OK, or SPOP_ERROR if the buffer
 * overflowed or the frame exceeds max_frame_size (then w->len is rolled back
 * to the frame's start so nothing partial is ever sent). */
int spop_enc_frame_end(struct spop_wbuf *w, uint32_t max_frame_size);

void spop_enc_str(struct spop_wbuf *w, const char *p, size_t len);  /* <STRING> */
void spop_enc_data(struct spop_wbuf *w, const struct spop_data *d); /* TYPED-DATA */
void spop_enc_kv(struct spop_wbuf *w, const char *name, const struct spop_data *d);

/* Convenience builders for whole frames the agent sends. */
int spop_enc_agent_hello(struct spop_wbuf *w, uint32_t max_frame_size,
                         const char *caps);
int spop_enc_agent_disconnect(struct spop_wbuf *w, uint32_t max_frame_size,
                              enum spop_status status, const char *message);

/* Actions inside an ACK payload (3.4). Between frame_begin(ACK) and end. */
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
