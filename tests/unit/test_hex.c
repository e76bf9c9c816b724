/* test_hex.c -- hex digits both ways (agent/hex.h), and the hashed part of a
 * rate-limit bucket's name (admit.c: the first 16 bytes of the value's
 * SHA-256 in lowercase hex), which must not change between versions: agents
 * of two versions on one Redis must name a key's bucket alike. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "hex.h"
#include "sha256.h"

CASE(encode_every_byte)
{
	unsigned char all[256];
	char out[2 * 256 + 1];

	for (int i = 0; i < 256; i++)
		all[i] = (unsigned char)i;
	memset(out, 'x', sizeof(out));
	hex_encode(all, 256, out);
	CHECK(strlen(out) == 512);
	CHECK(strncmp(out, "000102030405060708090a0b0c0d0e0f10", 34) == 0);
	CHECK(strcmp(out + 500, "fafbfcfdfeff") == 0);
	for (int i = 0; i < 256; i++)
		CHECK(hexval(out[2 * i]) * 16 + hexval(out[2 * i + 1]) == i);
	hex_encode(all, 0, out);
	CHECK(out[0] == '\0');
}

CASE(hexval_digits_only)
{
	CHECK(hexval('0') == 0 && hexval('9') == 9 && hexval('a') == 10 && hexval('F') == 15);
	CHECK(hexval('g') == -1 && hexval('/') == -1 && hexval(':') == -1 && hexval('@') == -1);
}

CASE(bucket_name_of_a_key_is_stable)
{
	uint8_t d[SHA256_LEN];
	char out[33];

	/* python3 -c "import hashlib; print(hashlib.sha256(b'bench-key').hexdigest()[:32])" */
	CHECK(sha256("bench-key", 9, d) == 0);
	hex_encode(d, 16, out);
	CHECK(strcmp(out, "b0962662e937d44c699c8305d90cbf19") == 0);
}

int main(void)
{
	RUN_ALL(encode_every_byte, hexval_digits_only, bucket_name_of_a_key_is_stable);
	DONE();
}
