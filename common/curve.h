/* curve.h - CurveZMQ keys, socket options and a ZAP allow-list handler.
 *
 * Key files are text, one setting per line, the values Z85 (40 characters):
 *
 *     # gemma CurveZMQ key pair            <- NAME.key_secret, mode 0600
 *     public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
 *     secret_key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";
 *
 *     # gemma CurveZMQ public key          <- NAME.key, may be shared
 *     public_key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
 *
 * A bare 40-character Z85 line is read as a public key too, so an allow-list
 * file may simply list client public keys, one per line.
 *
 * Server side: gc_zap_start() on the socket's ZeroMQ context (before binding),
 * then gc_curve_set_server() on the socket. Only clients whose public key is
 * in the allow-list complete the handshake; the others get nothing (their
 * socket sees ZMQ_EVENT_HANDSHAKE_FAILED_AUTH). Client side:
 * gc_curve_set_client() before zmq_connect. */
#ifndef GC_CURVE_H
#define GC_CURVE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"

#define GC_KEY_Z85_LEN 40

/* A key pair as Z85 text; secret_z85 is "" when only the public key is known. */
typedef struct gc_keypair {
    char public_z85[GC_KEY_Z85_LEN + 1];
    char secret_z85[GC_KEY_Z85_LEN + 1];
} gc_keypair;

/* A fresh key pair (zmq_curve_keypair). GM_ERR_UNSUPPORTED when libzmq lacks CURVE. */
gm_status gc_curve_generate(gc_keypair *kp);

/* Write PREFIX.key (public, 0644) and PREFIX.key_secret (both keys, 0600).
 * Refuses to overwrite existing files unless force. */
gm_status gc_curve_write_keypair(const gc_keypair *kp, const char *prefix, bool force);

/* Read a key file: public_key (required) and secret_key (when present; the file
 * must then not be readable by group or others, and the keys must match). */
gm_status gc_curve_load(const char *path, gc_keypair *kp);

/* Same, and fail unless the file held a secret key. */
gm_status gc_curve_load_secret(const char *path, gc_keypair *kp);

/* True when s is 40 Z85 characters that decode to a 32-byte key. */
bool gc_curve_valid_z85(const char *s);

/* Make sock a CURVE server with kp's secret key; zap_domain NULL = "gemma". */
gm_status gc_curve_set_server(void *sock, const gc_keypair *kp, const char *zap_domain);

/* Make sock a CURVE client with its own kp (secret needed) that trusts the
 * server public key server_public_z85. Call before zmq_connect. */
gm_status gc_curve_set_client(void *sock, const gc_keypair *kp, const char *server_public_z85);

/* ---- allow-list and the ZAP handler ---- */

typedef struct gc_allowlist gc_allowlist;

gc_allowlist *gc_allowlist_new(void);
void gc_allowlist_destroy(gc_allowlist **a);
/* Add one Z85 public key. */
gm_status gc_allowlist_add(gc_allowlist *a, const char *public_z85);
/* Add keys from path: a directory (every *.key file in it), a key file, or a
 * file of bare Z85 keys one per line ('#' comments). */
gm_status gc_allowlist_add_path(gc_allowlist *a, const char *path);
int gc_allowlist_count(const gc_allowlist *a);
bool gc_allowlist_contains(const gc_allowlist *a, const uint8_t key[32]);

typedef struct gc_zap gc_zap;

/* Serve ZAP (inproc://zeromq.zap.01) for zmq_ctx on a thread: CURVE clients
 * whose key is in allow (copied; NULL = allow none) pass, every other CURVE
 * or PLAIN client is refused, NULL-mechanism sockets pass. A client that passes
 * gets its public key (Z85) as its ZeroMQ user id: the server reads it from each
 * message with zmq_msg_gets(msg, "User-Id"). One per context; start it before
 * binding the server sockets. Caller owns *out. */
gm_status gc_zap_start(void *zmq_ctx, const gc_allowlist *allow, gc_zap **out);
/* Give the server sockets of one ZAP domain (gc_curve_set_server's zap_domain)
 * an allow-list of their own (copied), used instead of gc_zap_start's: e.g. the
 * router's register socket admits replica keys only, not client keys. Call it
 * before binding those sockets; setting a domain again replaces its list. */
gm_status gc_zap_set_domain(gc_zap *z, const char *domain, const gc_allowlist *allow);
/* Handshakes answered so far (allowed, denied). Thread-safe. */
void gc_zap_counts(const gc_zap *z, uint64_t *allowed, uint64_t *denied);
/* Stop the thread; accepts NULL; nulls *z. Call before zmq_ctx_term. */
void gc_zap_destroy(gc_zap **z);

#endif
