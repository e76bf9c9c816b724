/* answer.c -- the answers the agent gives in HAProxy's place.
 *
 * Owns: the verdict variables HAProxy turns into an `http-request return`
 * (doc/gateway.md): `decision` (deny: a refusal; admin: an answer of the
 * agent's own), `status`, `ctype` and `body`, and the OpenAI error shape of
 * every refusal. Callers: gateway.c (auth, routing, admission), quota_admin.c
 * (the ai-quota admin API), models.c (/v1/models).
 */
#include <stdio.h>
#include <string.h>

#include "answer.h"

void answer_json_escape(char *out, size_t outlen, const char *s)
{
	size_t o = 0;

	for (; *s && o + 7 < outlen; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20) {
			o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = 0;
}

void answer_error(struct spop_tx *tx, int status, const char *type, const char *code,
                  const char *message)
{
	char msg[512], body[768];
	int n;

	answer_json_escape(msg, sizeof(msg), message);
	n = snprintf(body, sizeof(body),
	             "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"code\":\"%s\"}}",
	             msg, type, code);
	tx_set_str(tx, "decision", "deny", 4);
	tx_set_int(tx, "status", status);
	tx_set_str(tx, "ctype", "json", 4);
	tx_set_str(tx, "body", body, (size_t)n);
}

void answer_model_not_found(struct spop_tx *tx, const char *model)
{
	char m[256];

	snprintf(m, sizeof(m), "The model `%s` does not exist or you do not have access to it.",
	         model);
	answer_error(tx, 404, "invalid_request_error", "model_not_found", m);
}

void answer_body(struct spop_tx *tx, int status, const char *ctype, const char *body,
                 size_t len)
{
	tx_set_str(tx, "decision", "admin", 5);
	tx_set_int(tx, "status", status);
	tx_set_str(tx, "ctype", ctype, strlen(ctype));
	tx_set_str(tx, "body", body, len);
}
