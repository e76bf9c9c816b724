/* sha256.h -- SHA-256 (libcrypto's), for comparing credentials by digest.
 *
 * Owns: the hash only. Consumer credentials are kept as digests from the
 * moment the configuration is loaded, so a presented key is hashed and
 * compared in constant time, and no plaintext credential stays in memory
 * longer than parsing it.
 */
#ifndef TOLLGATE_SHA256_H
#define TOLLGATE_SHA256_H
#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

/* 0, or -1 when libcrypto could not (out of memory): out is then unset. */
int sha256(const void *data, size_t len, uint8_t out[SHA256_LEN]);
/* 1 if equal; runs in time independent of where they differ. */
int digest_equal(const uint8_t a[SHA256_LEN], const uint8_t b[SHA256_LEN]);

#endif
