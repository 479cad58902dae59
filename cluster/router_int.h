/* router_int.h - gemma-router's private state, shared by router.c (clients, requests,
 * the loop), router_replica.c (replica sockets, probes, failover, forwarding),
 * router_reg.c (registration) and router_http.c (the OpenAI-compatible HTTP front door).
 * Not a contract: only those files include it. */
#ifndef GC_ROUTER_INT_H
#define GC_ROUTER_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/curve.h"
#include "cluster/router.h"
#include "proto/cluster.pb-c.h"
#include "proto/gemma.pb-c.h"

#define RT_VERSION "router-0.1.0"
#define RT_PROTO_MAJOR 1
#define RT_BUCKETS 16384    /* request hash buckets (chained; fine up to ~100k in flight) */
#define RT_CLIENT_BUCKETS 4096
#define RT_POLL_MS 20
#define RT_DRAIN_BATCH 512  /* messages read from one socket per loop turn */
#define RT_ZAP_CLIENTS "gemma-router"           /* ZAP domain of the client socket: curve_allow */
#define RT_ZAP_REPLICAS "gemma-router-register" /* ZAP domain of the register socket: replica_allow */
#define RT_MAX_REGISTERED 1024 /* replicas that registered themselves, at most */
#define RT_REG_MAX_FRAME 4096  /* bytes of one frame on the register socket */
#define RT_OWNER_MAX 64     /* "key:" + Z85 key, "addr:" + an IP address, or "local" */

typedef struct rt_client {
    uint8_t id[255]; /* ZeroMQ routing id of the client's connection */
    uint8_t id_len;
    uint64_t hash;
    int64_t n_req;   /* requests in flight */
    uint64_t stamp;  /* grouping mark used while forwarding one replica message */
    int32_t group;
    bool gone;       /* a send found its connection closed */
    struct rt_client *next;
} rt_client;

typedef struct rt_replica rt_replica;
typedef struct rt_http rt_http;

typedef struct rt_req {
    uint64_t rid;          /* router id: the request_id the replica sees */
    uint64_t cid;          /* the client's request_id */
    rt_client *client;
    rt_replica *rep;       /* where it runs; NULL while held in the queue */
    rt_replica *last_rep;  /* the replica that last failed or refused it */
    int32_t attempts;      /* replicas it was sent to */
    bool started;          /* a chunk reached the client: it can no longer move */
    bool cancelled;
    bool done;
    int32_t n;             /* sequences asked for (GenerateRequest.n): with n > 1 only the chunk with usage ends it */
    uint8_t *msg;          /* [msg_len] packed ClientMessage{request_id = rid, generate} */
    size_t msg_len;
    double deadline;       /* while queued */
    struct rt_req *next_rid, *next_cid;
    struct rt_req *qprev, *qnext;
} rt_req;

struct rt_replica {
    char *endpoint;
    char *name;
    char label[320];       /* "name (endpoint)" or the endpoint, for logs */
    char server_key[GC_KEY_Z85_LEN + 1];
    bool dynamic;          /* registered itself (forgotten when gone long enough) */
    char owner[RT_OWNER_MAX]; /* who registered it (rt_peer.owner); only they may change it */
    bool draining;         /* unregistered: no new requests */
    bool up;               /* answered within dead_ms */
    bool serving;          /* its last HealthReply said serving */
    void *sock;            /* DEALER to its client endpoint */
    void *mon;             /* PAIR receiving the DEALER's disconnect events */
    double last_heard, last_probe, down_since, last_register;
    double last_health;    /* when its last HealthReply came (a replica without one for dead_ms is not serving) */
    int32_t in_flight;     /* router requests there */
    int32_t max_in_flight;
    int32_t in_flight_at_probe;
    int32_t ext_load;      /* its running + waiting that are not ours */
    Gemma__V1__ServerMessage *health; /* last HealthReply (owned) */
    Gemma__V1__ServerMessage *stats;  /* last StatsReply (owned) */
    int64_t sent, failures;
    int serial;
};

struct gc_router {
    const gc_router_config *cfg;
    void *ctx;
    bool own_ctx;
    void *front, *reg;
    gc_zap *zap;
    gc_keypair kp;
    bool curve;
    char replica_key[GC_KEY_Z85_LEN + 1];
    char listen_ep[256], reg_ep[256];

    rt_replica **reps;
    int n_reps, cap_reps, rr, serial;

    rt_req *by_rid[RT_BUCKETS];
    rt_req *by_cid[RT_BUCKETS];
    int64_t n_reqs;
    rt_client *clients[RT_CLIENT_BUCKETS];
    int64_t n_clients;
    rt_req *q_head, *q_tail;
    int32_t q_len;

    uint64_t next_rid;
    uint64_t stamp;
    double t_start;
    _Atomic int stop_flag;
    bool stopping;

    uint8_t *tx;
    size_t tx_cap;
    rt_http *http;         /* the HTTP front door, or NULL (router_http.c) */

    _Atomic int64_t c_accepted, c_finished, c_failed, c_shed, c_resent, c_rep_fail, c_cancelled;
    _Atomic int32_t c_up, c_known, c_serving;
};

/* The peer a message on the register socket came from. */
typedef struct rt_peer {
    char owner[RT_OWNER_MAX]; /* "key:<Z85>" (CURVE), else "addr:<IP>", or "local" on an ipc socket */
    bool local;               /* on this host: an ipc socket or a loopback address */
} rt_peer;

/* router.c: hashing, requests, replies to clients, dispatch */
uint64_t rt_mix64(uint64_t x);
rt_req *rt_req_by_rid(gc_router *r, uint64_t rid);
void rt_req_remove(gc_router *r, rt_req *q);
bool rt_send_to_client(gc_router *r, const uint8_t *id, size_t id_len, Gemma__V1__ServerMessage *m);
void rt_send_error(gc_router *r, const uint8_t *id, size_t id_len, uint64_t request_id, Gemma__V1__ErrorCode code, const char *text);
void rt_req_finish(gc_router *r, rt_req *q, Gemma__V1__FinishReason fr, Gemma__V1__ErrorCode code, const char *text);
void rt_req_dispatch(gc_router *r, rt_req *q, bool is_new);
void rt_cancel_at_replica(gc_router *r, rt_req *q);
/* One ClientMessage from client id (a ZeroMQ peer, or the HTTP front door's own identities). */
void rt_on_client_msg(gc_router *r, const uint8_t *id, size_t id_len, const uint8_t *data, size_t len);
/* router_replica.c: the replica set, probes, failover, forwarding, registration */
rt_replica *rt_replica_add(gc_router *r, const char *endpoint, const char *name, const char *server_key, bool dynamic, int32_t max_in_flight);
void rt_replica_free(rt_replica *p);
void rt_replica_remove(gc_router *r, int i);
rt_replica *rt_replica_pick(gc_router *r, const rt_replica *exclude);
void rt_update_counts(gc_router *r);
void rt_replica_down(gc_router *r, rt_replica *p, const char *why);
void rt_replica_probe(gc_router *r, rt_replica *p, double now);
void rt_on_replica_msg(gc_router *r, rt_replica *p, const uint8_t *data, size_t len, double now);
gm_status rt_replica_open_socket(gc_router *r, rt_replica *p);
void rt_replica_set_label(rt_replica *p);
bool rt_drain_monitor(rt_replica *p);
void rt_replica_health_tick(gc_router *r, rt_replica *p, double now);
/* router_http.c: the OpenAI-compatible HTTP front door, a client of the router inside it */
gm_status rt_http_open(gc_router *r);           /* listen when cfg->http_listen is set */
int rt_http_fd(const gc_router *r);             /* the fd to poll; -1 without HTTP */
long rt_http_timeout_ms(gc_router *r, long t);  /* t, or less when the HTTP server wants to run sooner */
void rt_http_run(gc_router *r);                 /* accept, read, write, call back; never blocks */
void rt_http_close(gc_router *r);
/* Whether a client identity is one of the HTTP front door's; what the router sends it goes to
 * rt_http_deliver instead of the client socket (true: keep sending). */
bool rt_http_is_client(const uint8_t *id, size_t id_len);
bool rt_http_deliver(gc_router *r, const uint8_t *id, size_t id_len, const Gemma__V1__ServerMessage *m);
/* router_reg.c: the register endpoint */
void rt_peer_of(const gc_router *r, zmq_msg_t *payload, rt_peer *out);
void rt_on_register_msg(gc_router *r, const rt_peer *peer, const uint8_t *id, size_t id_len, const uint8_t *data,
                        size_t len, double now);

#endif
