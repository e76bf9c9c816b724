/* sha256.c -- see sha256.h. The hash is libcrypto's (OpenSSL: its SHA-256
 * uses the CPU's SHA extensions where there are any), the comparison
 * CRYPTO_memcmp(); this file only keeps one context for the agent's thread. */
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "sha256.h"

int sha256(const void *data, size_t len, uint8_t out[SHA256_LEN])
{
	/* fetched and made once, reused: the agent hashes on its loop's
	 * thread only (a key per request, the credentials at load) */
	static EVP_MD *md;
	static EVP_MD_CTX *ctx;
	unsigned int n = 0;

	if (!md && !(md = EVP_MD_fetch(NULL, "SHA256", NULL)))
		return -1;
	if (!ctx && !(ctx = EVP_MD_CTX_new()))
		return -1;
	if (!EVP_DigestInit_ex2(ctx, md, NULL) || !EVP_DigestUpdate(ctx, data, len) ||
	    !EVP_DigestFinal_ex(ctx, out, &n) || n != SHA256_LEN)
		return -1;
	return 0;
}

int digest_equal(const uint8_t a[SHA256_LEN], const uint8_t b[SHA256_LEN])
{
	return CRYPTO_memcmp(a, b, SHA256_LEN) == 0;
}
