/* register.h - a gemmad announcing itself to gemma-router (proto/cluster.proto).
 *
 * gemmad calls gc_register_start() once its client socket is bound, and
 * gc_register_stop() when it shuts down. A thread of its own keeps a DEALER to
 * the router's register endpoint and sends Register every heartbeat_ms (the
 * replica's heartbeat; it also re-registers a replica with a router that
 * restarted), and Unregister on stop so the router drains it. The router then
 * talks to the replica on `endpoint`, like any client. Nothing here touches
 * the daemon's state: the thread only sends and receives cluster messages. */
#ifndef GC_REGISTER_H
#define GC_REGISTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/curve.h"
#include "common/status.h"

typedef struct gc_register_opts {
    const char *router;        /* the router's register endpoint, e.g. "tcp://10.0.0.1:5551" */
    const char *endpoint;      /* this gemmad's client endpoint as the router reaches it (see
                                  gc_register_advertised) */
    const char *name;          /* unique replica name; NULL = "<host>:<pid>" */
    int32_t max_in_flight;     /* hint for the router (0 = its default) */
    int32_t heartbeat_ms;      /* Register period (0 = 1000) */
    int32_t rank;              /* launcher rank (gc_launch_info.rank), -1 = by hand */
    /* CurveZMQ (all NULL = plain): */
    const gc_keypair *key;     /* this gemmad's key pair: client key towards the router ... */
    const char *router_key;    /* ... the router's public key (Z85) ... */
    const char *server_key;    /* ... and the public key clients use for `endpoint` (Z85; advertised) */
} gc_register_opts;

typedef struct gc_register gc_register;

/* Start registering. zmq_ctx may be NULL (a context of its own). Returns once
 * the thread runs; the router may not have answered yet. Caller owns *out. */
gm_status gc_register_start(void *zmq_ctx, const gc_register_opts *o, gc_register **out);

/* Whether the router accepted the last Register (thread-safe), and its reason if not. */
bool gc_register_accepted(const gc_register *r);
/* Copy the router's last refusal into buf ("" if none). Thread-safe. */
void gc_register_error(const gc_register *r, char *buf, size_t cap);

/* Send Unregister (reason may be NULL), stop the thread. Accepts NULL; nulls *r. */
void gc_register_stop(gc_register **r, const char *reason);

/* The endpoint to advertise for a bound listen endpoint: a wildcard host
 * ("tcp://0.0.0.0:5555", or the star form) becomes this host's name; others are
 * returned as they are. */
gm_status gc_register_advertised(const char *bound, char *out, size_t cap);

#endif
