/*
 * tlskit.h: certificates for the tests of the migration link's TLS
 * (actors/tls_link.h), made with OpenSSL's API in a test's temp folder:
 * a CA, and TLS directories signed by it (or by another CA, expired, or
 * with a certificate of the wrong role). Header-only; test code.
 */
#ifndef LM_TESTS_TLSKIT_H
#define LM_TESTS_TLSKIT_H

#include <stdbool.h>
#include <stdio.h>
#include <sys/stat.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

struct tk_ca {
	EVP_PKEY *key;
	X509 *cert;
};

static long tk_serial = 1;

static inline int tk_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v;
	X509V3_set_ctx_nodb(&v);
	X509V3_set_ctx(&v, issuer, x, NULL, NULL, 0);
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v, nid, value);
	if (!e)
		return -1;
	int rc = X509_add_ext(x, e, -1) == 1 ? 0 : -1;
	X509_EXTENSION_free(e);
	return rc;
}

/* A certificate for key k named cn, signed by ca (NULL: self-signed CA),
 * valid from from_s to to_s seconds from now; eku: "serverAuth",
 * "clientAuth", or NULL for a CA. NULL on failure. */
static inline X509 *tk_cert(EVP_PKEY *k, const char *cn, const struct tk_ca *ca, const char *eku, long from_s,
		     long to_s)
{
	X509 *x = X509_new();
	if (!x)
		return NULL;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), tk_serial++);
	X509_gmtime_adj(X509_getm_notBefore(x), from_s);
	X509_gmtime_adj(X509_getm_notAfter(x), to_s);
	X509_set_pubkey(x, k);
	X509_NAME *n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(x, ca ? X509_get_subject_name(ca->cert) : n);
	X509 *issuer = ca ? ca->cert : x;
	int bad = tk_ext(x, issuer, NID_basic_constraints, ca ? "critical,CA:FALSE" : "critical,CA:TRUE") ||
		  tk_ext(x, issuer, NID_key_usage, ca ? "critical,digitalSignature"
						      : "critical,keyCertSign,cRLSign") ||
		  tk_ext(x, issuer, NID_subject_key_identifier, "hash") ||
		  (eku && tk_ext(x, issuer, NID_ext_key_usage, eku));
	if (bad || !X509_sign(x, ca ? ca->key : k, EVP_sha256())) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static inline bool tk_ca_make(struct tk_ca *ca, const char *cn)
{
	ca->key = EVP_EC_gen("P-256");
	ca->cert = ca->key ? tk_cert(ca->key, cn, NULL, NULL, -60, 86400) : NULL;
	return ca->cert != NULL;
}

static inline void tk_ca_free(struct tk_ca *ca)
{
	X509_free(ca->cert);
	EVP_PKEY_free(ca->key);
}

static inline bool tk_write(const char *dir, const char *name, X509 *x, EVP_PKEY *k)
{
	char p[600];
	snprintf(p, sizeof p, "%s/%s", dir, name);
	FILE *f = fopen(p, "w");
	if (!f)
		return false;
	bool ok = x ? PEM_write_X509(f, x) == 1 : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;
	return fclose(f) == 0 && ok;
}

/* A migration TLS directory: ca-cert.pem is `trust`; server and client
 * certificates signed by `signer` (their roles swapped when
 * wrong_role; valid until to_s seconds from now, negative: expired). */
static inline bool tk_dir(const char *dir, const struct tk_ca *trust, const struct tk_ca *signer, bool wrong_role,
		   long to_s)
{
	mkdir(dir, 0700);
	EVP_PKEY *sk = EVP_EC_gen("P-256"), *ck = EVP_EC_gen("P-256");
	long from = to_s < 0 ? to_s - 86400 : -60;
	X509 *s = sk ? tk_cert(sk, "lmshim destination", signer, wrong_role ? "clientAuth" : "serverAuth",
			       from, to_s) : NULL;
	X509 *c = ck ? tk_cert(ck, "lmshim source", signer, wrong_role ? "serverAuth" : "clientAuth", from,
			       to_s) : NULL;
	bool ok = s && c && tk_write(dir, "ca-cert.pem", trust->cert, NULL) &&
		  tk_write(dir, "server-cert.pem", s, NULL) && tk_write(dir, "server-key.pem", NULL, sk) &&
		  tk_write(dir, "client-cert.pem", c, NULL) && tk_write(dir, "client-key.pem", NULL, ck);
	X509_free(s);
	X509_free(c);
	EVP_PKEY_free(sk);
	EVP_PKEY_free(ck);
	return ok;
}

#endif
