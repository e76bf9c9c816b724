/* spop-t.h -- types of the SPOP codec (HAProxy doc/SPOE.txt, section 3).
 *
 * Owns: every constant and struct of the wire protocol. Functions are in
 * spop.h. Nothing here allocates: decoded strings are (pointer, length) views
 * into the caller's frame buffer and live as long as that buffer.
 */
#ifndef TOLLGATE_SPOP_T_H
#define TOLLGATE_SPOP_T_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPOP_VERSION          "2.0"
#define SPOP_MIN_FRAME_SIZE   256u      /* 3.2: both peers must accept >= 256 */
#define SPOP_FRAME_HDR_LEN    4u        /* <FRAME-LENGTH:4 bytes> prefix */
#define SPOP_VARINT_MAX_LEN   10u       /* 3.1: a 64-bit varint takes 1..10 bytes */

/* 3.2.2 frame types */
enum spop_frame_type {
	SPOP_FRM_UNSET              = 0,
	SPOP_FRM_HAPROXY_HELLO      = 1,
	SPOP_FRM_HAPROXY_DISCONNECT = 2,
	SPOP_FRM_NOTIFY             = 3,
	SPOP_FRM_AGENT_HELLO        = 101,
	SPOP_FRM_AGENT_DISCONNECT   = 102,
	SPOP_FRM_ACK                = 103,
};

/* 3.2 metadata flags */
#define SPOP_FLAG_FIN    0x00000001u
#define SPOP_FLAG_ABORT  0x00000002u

/* 3.5 status codes, sent in AGENT-DISCONNECT */
enum spop_status {
	SPOP_ST_NONE           = 0,
	SPOP_ST_IO             = 1,
	SPOP_ST_TIMEOUT        = 2,
	SPOP_ST_TOO_BIG        = 3,
	SPOP_ST_INVALID        = 4,
	SPOP_ST_NO_VSN         = 5,
	SPOP_ST_NO_FRAME_SIZE  = 6,
	SPOP_ST_NO_CAP         = 7,
	SPOP_ST_BAD_VSN        = 8,
	SPOP_ST_BAD_FRAME_SIZE = 9,
	SPOP_ST_FRAG_NOT_SUPP  = 10,
	SPOP_ST_INTERLACED     = 11,
	SPOP_ST_FRAMEID_NOTFND = 12,
	SPOP_ST_RES            = 13,
	SPOP_ST_UNKNOWN        = 99,
};

/* 3.1 typed data */
enum spop_data_type {
	SPOP_DATA_NULL   = 0,
	SPOP_DATA_BOOL   = 1,
	SPOP_DATA_INT32  = 2,
	SPOP_DATA_UINT32 = 3,
	SPOP_DATA_INT64  = 4,
	SPOP_DATA_UINT64 = 5,
	SPOP_DATA_IPV4   = 6,
	SPOP_DATA_IPV6   = 7,
	SPOP_DATA_STR    = 8,
	SPOP_DATA_BIN    = 9,
};
#define SPOP_DATA_FL_TRUE 0x10          /* BOOL: first bit of the FLAGS nibble */

/* 3.4 variable scopes for set-var / unset-var */
enum spop_scope {
	SPOP_SCOPE_PROC = 0,
	SPOP_SCOPE_SESS = 1,
	SPOP_SCOPE_TXN  = 2,
	SPOP_SCOPE_REQ  = 3,
	SPOP_SCOPE_RES  = 4,
};

enum spop_action_type {
	SPOP_ACT_SET_VAR   = 1,
	SPOP_ACT_UNSET_VAR = 2,
};

/* Result of a decoding step. Negative values are errors; the matching SPOP
 * status to send in AGENT-DISCONNECT is returned separately (see spop.h). */
enum spop_rc {
	SPOP_OK        = 0,    /* one item decoded / frame complete */
	SPOP_END       = 1,    /* iterator: nothing left */
	SPOP_NEED_MORE = 2,    /* frame reader: not enough bytes yet */
	SPOP_ERROR     = -1,   /* malformed or refused; see the status */
};

/* A length-counted view of bytes (like HAProxy's struct ist). */
struct spop_str {
	const char *ptr;
	size_t len;
};

struct spop_data {
	enum spop_data_type type;
	union {
		bool b;
		int32_t i32;
		uint32_t u32;
		int64_t i64;
		uint64_t u64;
		uint8_t ipv4[4];
		uint8_t ipv6[16];
		struct spop_str str;    /* STR and BIN */
	} u;
};

struct spop_kv {
	struct spop_str name;
	struct spop_data val;
};

/* One action of an ACK payload (3.4), as read back by spop_next_action()
 * (tests, fuzzing, tools: the agent only writes actions). */
struct spop_action {
	uint8_t type;                 /* enum spop_action_type */
	uint8_t nb_args;              /* 3 for SET-VAR, 2 for UNSET-VAR */
	uint8_t scope;                /* enum spop_scope */
	struct spop_str name;
	struct spop_data val;         /* SET-VAR only; NULL for UNSET-VAR */
};

/* A bounded read position inside a decoded frame. */
struct spop_cursor {
	const uint8_t *p;
	const uint8_t *end;
};

/* A complete frame, decoded header; payload is a view into the buffer. */
struct spop_frame {
	uint8_t type;                 /* enum spop_frame_type (unknown kept as is) */
	uint32_t flags;
	uint64_t stream_id;
	uint64_t frame_id;
	struct spop_cursor payload;
};

/* One message of a NOTIFY: its name and a cursor over its nb_args KV. */
struct spop_msg {
	struct spop_str name;
	unsigned nb_args;
	struct spop_cursor args;      /* iterate with spop_next_arg() */
	unsigned args_left;
};

/* Fields of a HAPROXY-HELLO that the agent needs. */
struct spop_hello {
	bool has_versions, has_frame_size, has_caps;
	struct spop_str versions;     /* "supported-versions" */
	uint32_t max_frame_size;      /* "max-frame-size" */
	struct spop_str caps;         /* "capabilities" */
	bool healthcheck;             /* "healthcheck" */
	struct spop_str engine_id;    /* "engine-id" */
};

/* Fields of a HAPROXY-DISCONNECT. */
struct spop_disconnect {
	uint32_t status;
	struct spop_str message;
};

/* A writer over a caller-owned buffer. On overflow `err` is set and every
 * later write is a no-op, so callers check once at the end. */
struct spop_wbuf {
	uint8_t *buf;
	size_t cap;
	size_t len;
	size_t frame_start;           /* offset of the current frame's length prefix */
	bool err;
};

#endif
