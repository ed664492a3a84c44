/*
 * shim_socket.c: containerd's shim socket address rule (shim_socket.h),
 * with OpenSSL's SHA-256.
 */
#include "cmd/shim_socket.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/sha.h>

int lm_containerd_shim_socket(const char *address, const char *ns, const char *id, char *out,
			      size_t len)
{
	char joined[PATH_MAX * 2];
	/* filepath.Join cleans: our inputs are plain, only avoid "//" */
	const char *addr = address ? address : "";
	size_t al = strlen(addr);
	while (al > 1 && addr[al - 1] == '/')
		al--;
	int k;
	if (al)
		k = snprintf(joined, sizeof(joined), "%.*s/%s/%s", (int)al, addr, ns, id);
	else
		k = snprintf(joined, sizeof(joined), "%s/%s", ns, id);
	if (k < 0 || (size_t)k >= sizeof(joined))
		return -ENAMETOOLONG;
	uint8_t d[SHA256_DIGEST_LENGTH];
	SHA256((const unsigned char *)joined, (size_t)k, d);
	int n = snprintf(out, len, "%s/", LM_CONTAINERD_SOCKET_ROOT);
	for (int i = 0; i < SHA256_DIGEST_LENGTH && n > 0 && (size_t)n + 3 < len; i++)
		n += snprintf(out + n, len - (size_t)n, "%02x", d[i]);
	return n > 0 && (size_t)n == strlen(LM_CONTAINERD_SOCKET_ROOT) + 1 + 2 * SHA256_DIGEST_LENGTH
		       ? 0 : -ENAMETOOLONG;
}
