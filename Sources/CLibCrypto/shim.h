#ifndef TCPAOD_CLIBCRYPTO_SHIM_H
#define TCPAOD_CLIBCRYPTO_SHIM_H
// The low-level SHA and AES-CBC entry points let one keyed context be re-used per segment
// with a plain struct copy: OpenSSL 3.0's EVP_MAC HMAC re-init duplicates its digest
// context on the heap for every message. They are deprecated, not removed, in 3.x.
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/sha.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#endif
