/* router.h - gemma-router: one gemma.proto endpoint in front of many gemmad replicas.
 *
 * Clients (gemma-cli, gemma-bench, the client library) talk to the router
 * exactly as to gemmad. The router keeps one DEALER per replica and:
 *  - sends each Generate to the least-loaded usable replica: load = requests the
 *    router has in flight there + the replica's other work (its Stats running +
 *    waiting beyond what the router sent); a replica is usable when it answered
 *    its last probes, reports serving, is not draining and has fewer than
 *    max_in_flight router requests;
 *  - rewrites request ids (router ids are unique across all clients), streams
 *    the chunks back under the client's ids, relays Cancel;
 *  - answers Health and Stats itself, aggregated over the replicas;
 *  - sheds load with OVERLOADED when every replica is full (after holding the
 *    request up to queue_timeout_ms when max_queue > 0);
 *  - probes each replica (Health + Stats) every heartbeat_ms; one silent for
 *    dead_ms, or whose connection drops, is taken out: its requests that had
 *    produced no output yet go to another replica, those already streaming end
 *    with WORKER_FAILED; it is used again as soon as it answers again;
 *  - accepts replicas that register themselves (proto/cluster.proto) on the
 *    register endpoint (cluster/router_reg.c says who may register what).
 * One thread around zmq_poll. */
#ifndef GC_ROUTER_H
#define GC_ROUTER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"

typedef struct gc_router_config {
    char *listen;            /* client endpoint (ROUTER bind), default tcp://127.0.0.1:5550 */
    char *register_ep;       /* registration endpoint (ROUTER bind), NULL = none */
    char **replicas;         /* [n_replicas] static replica endpoints */
    int32_t n_replicas;
    int32_t max_in_flight;   /* per replica, default 256 */
    int32_t max_queue;       /* requests held at the router when all are full (0 = shed at once) */
    int32_t queue_timeout_ms;/* how long a held request may wait (default 10000) */
    int32_t heartbeat_ms;    /* probe interval (default 500) */
    int32_t dead_ms;         /* silence after which a replica is taken out (default 2000) */
    int32_t max_attempts;    /* replicas one request may be sent to (default 3) */
    int32_t forget_ms;       /* a registered replica down this long is forgotten (default 60000) */
    int32_t shutdown_timeout_ms; /* on stop, how long in-flight requests may finish (default 10000) */
    int32_t log_level;       /* gm_log_level */
    /* CurveZMQ */
    bool curve;
    char *curve_secret_key;  /* the router's key pair file (NAME.key_secret): server and client side */
    char **curve_allow;      /* [n_curve_allow] client key files / directories / key lists */
    int32_t n_curve_allow;
    char *curve_replica_key; /* replicas' server public key file (static replicas) */
    char **replica_allow;    /* [n_replica_allow] public keys that may register (same forms as curve_allow);
                                client keys cannot register */
    int32_t n_replica_allow;
    bool insecure_register;  /* allow a register endpoint other hosts can reach without CURVE */
    /* the OpenAI-compatible HTTP API in front of the replicas (cluster/router_http.c) */
    char *http_listen;       /* "HOST:PORT"; NULL = off */
    char *api_key;           /* bearer key the /v1/ paths require (api_key or api_key_file); NULL = none */
    char *served_model_name; /* the API's model name; NULL = the replicas' model directory name */
    int32_t http_max_body;   /* request body limit, bytes (default 8 MiB; 413 beyond) */
    int32_t http_max_requests;    /* generation requests in flight over HTTP (429 beyond); 0 = no own limit */
    int32_t http_max_connections; /* open HTTP connections (default 4096) */
    char *config_path;
} gc_router_config;

typedef enum gc_router_action {
    GC_ROUTER_RUN = 0,
    GC_ROUTER_HELP,
    GC_ROUTER_KEYGEN, /* --keygen PREFIX: write a key pair and exit */
} gc_router_action;

void gc_router_config_defaults(gc_router_config *c);
void gc_router_config_free(gc_router_config *c);
/* Read a libconfig file over c; errors name the file and line. */
gm_status gc_router_config_load_file(gc_router_config *c, const char *path);
/* Defaults, then --config FILE, then every other flag. For KEYGEN, *keygen_prefix
 * (borrowed from argv) is the prefix and *force the --force flag. */
gm_status gc_router_config_from_args(int argc, char **argv, gc_router_config *c, gc_router_action *action,
                                     const char **keygen_prefix, bool *force);
gm_status gc_router_config_validate(const gc_router_config *c);
void gc_router_usage(FILE *f);

typedef struct gc_router gc_router;

/* Bind the sockets and connect to the static replicas (nothing runs yet).
 * zmq_ctx may be NULL (the router makes its own). Caller owns *out. */
gm_status gc_router_new(const gc_router_config *c, void *zmq_ctx, gc_router **out);
/* Serve until gc_router_stop; then drain (shutdown_timeout_ms) and return. */
gm_status gc_router_run(gc_router *r);
/* Ask a running router to stop; async-signal-safe and thread-safe. */
void gc_router_stop(gc_router *r);
void gc_router_destroy(gc_router **r);

/* The endpoints actually bound (resolves "tcp://127.0.0.1:*"). Borrowed. */
const char *gc_router_listen_endpoint(const gc_router *r);
const char *gc_router_register_endpoint(const gc_router *r);

/* Counters for tests and logs (read them from the router's thread, or after run). */
typedef struct gc_router_counts {
    int64_t accepted;   /* generate requests taken */
    int64_t finished;   /* ended with a final chunk from a replica */
    int64_t failed;     /* ended with an error made by the router */
    int64_t shed;       /* answered OVERLOADED by the router */
    int64_t resent;     /* moved to another replica after a failure */
    int64_t replica_failures; /* times a replica was taken out */
    int32_t replicas_up;
    int32_t replicas_known;
    int32_t replicas_serving; /* up, serving and not draining */
} gc_router_counts;

void gc_router_get_counts(const gc_router *r, gc_router_counts *out);

/* ---- registration policy (cluster/router_reg.c) ---- */

#define GC_ENDPOINT_MAX 200 /* bytes of a registered endpoint */
#define GC_NAME_MAX 128     /* bytes of a registered replica name */

/* Whether a Register may name endpoint ep: tcp://HOST:PORT (no wildcard host or
 * port, no source address; a loopback host only from a local peer) or, from a
 * local peer only (ipc register socket or a loopback address), ipc://PATH; at most
 * GC_ENDPOINT_MAX bytes of printable ASCII. When false, why[cap] says why. */
bool gc_router_endpoint_ok(const char *ep, bool local_peer, char *why, size_t cap);

/* Whether a bind endpoint can be reached from this host only: ipc://, inproc://,
 * or tcp:// on a loopback address (127.0.0.0/8, [::1], localhost, lo). */
bool gc_router_endpoint_local(const char *ep);

#endif
