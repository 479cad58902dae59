/* register.c - the replica side of registration: a thread that heartbeats Register to the router. */
#include "cluster/register.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"

#include "common/log.h"
#include "proto/cluster.pb-c.h"

struct gc_register {
    void *ctx;
    bool own_ctx;
    void *ctl; /* PAIR: our end of the thread's stop pipe */
    char ctl_ep[64];
    pthread_t thread;
    /* copies of the options (the thread owns them while it runs) */
    char *router, *endpoint, *name, *router_key, *server_key;
    gc_keypair key;
    bool curve;
    int32_t max_in_flight, heartbeat_ms, rank;
    _Atomic bool accepted;
    pthread_mutex_t err_mu;
    char error[256];
};

static void send_cluster(void *sock, Gemma__Cluster__V1__ClusterMessage *m)
{
    size_t n = gemma__cluster__v1__cluster_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return;
    gemma__cluster__v1__cluster_message__pack(m, buf);
    zmq_send(sock, buf, n, ZMQ_DONTWAIT);
    free(buf);
}

static void send_register(gc_register *g, void *sock)
{
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    Gemma__Cluster__V1__ClusterMessage m = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__INIT;
    Gemma__Cluster__V1__Register r = GEMMA__CLUSTER__V1__REGISTER__INIT;
    r.version = GEMMA__CLUSTER__V1__CLUSTER_VERSION__CLUSTER_VERSION_CURRENT;
    r.name = g->name;
    r.endpoint = g->endpoint;
    r.server_key = g->server_key ? g->server_key : "";
    r.max_in_flight = g->max_in_flight;
    r.host = host;
    r.pid = (int32_t)getpid();
    r.rank = g->rank;
    r.heartbeat_ms = g->heartbeat_ms;
    m.body_case = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_REG;
    m.reg = &r;
    send_cluster(sock, &m);
}

static void on_ack(gc_register *g, const uint8_t *data, size_t len)
{
    Gemma__Cluster__V1__ClusterMessage *m = gemma__cluster__v1__cluster_message__unpack(NULL, len, data);
    if (!m)
        return;
    if (m->body_case == GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_ACK) {
        bool was = atomic_exchange(&g->accepted, m->ack->accepted);
        pthread_mutex_lock(&g->err_mu);
        snprintf(g->error, sizeof(g->error), "%s", m->ack->accepted ? "" : m->ack->error);
        pthread_mutex_unlock(&g->err_mu);
        if (m->ack->accepted && !was)
            GM_INFO("registered with gemma-router %s as '%s' (%s)", g->router, g->name, g->endpoint);
        else if (!m->ack->accepted)
            GM_WARN("gemma-router %s refused registration: %s", g->router, m->ack->error);
    }
    gemma__cluster__v1__cluster_message__free_unpacked(m, NULL);
}

static void *register_thread(void *arg)
{
    gc_register *g = arg;
    int zero = 0, one = 1, linger = 500;
    void *ctl = zmq_socket(g->ctx, ZMQ_PAIR);
    zmq_setsockopt(ctl, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_connect(ctl, g->ctl_ep);
    void *sock = zmq_socket(g->ctx, ZMQ_DEALER);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
    zmq_setsockopt(sock, ZMQ_IMMEDIATE, &one, sizeof(one)); /* stale Registers are not queued */
    if (g->curve && gc_curve_set_client(sock, &g->key, g->router_key) != GM_OK)
        GM_ERROR("registration: %s", gm_last_error());
    if (zmq_connect(sock, g->router) != 0)
        GM_ERROR("registration: cannot connect to '%s': %s", g->router, zmq_strerror(errno));
    double last = 0, last_ack = gm_now_ms();
    int answered = 0; /* an answer (accept or refusal) came since the router was last heard of */
    for (;;) {
        double now = gm_now_ms();
        /* until the router answers, retry every 50 ms: with ZMQ_IMMEDIATE a Register sent before
         * the connection is up is dropped, and waiting a whole heartbeat made the first
         * registration land ~1 s late; after an answer, one Register per heartbeat */
        double every = answered || g->heartbeat_ms < 50 ? g->heartbeat_ms : 50;
        if (now - last >= every) {
            send_register(g, sock);
            last = now;
        }
        if (atomic_load(&g->accepted) && now - last_ack > 4.0 * g->heartbeat_ms) {
            GM_WARN("gemma-router %s stopped answering registrations", g->router);
            atomic_store(&g->accepted, false);
            answered = 0;
        }
        zmq_pollitem_t it[2] = {{sock, 0, ZMQ_POLLIN, 0}, {ctl, 0, ZMQ_POLLIN, 0}};
        long wait = (long)(every - (gm_now_ms() - last));
        if (zmq_poll(it, 2, wait > 0 ? wait : 0) < 0 && errno != EINTR)
            break;
        if (it[1].revents & ZMQ_POLLIN) {
            char reason[256] = "";
            int n = zmq_recv(ctl, reason, sizeof(reason) - 1, 0);
            reason[n > 0 ? (n < (int)sizeof(reason) ? n : (int)sizeof(reason) - 1) : 0] = 0;
            Gemma__Cluster__V1__ClusterMessage m = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__INIT;
            Gemma__Cluster__V1__Unregister u = GEMMA__CLUSTER__V1__UNREGISTER__INIT;
            u.name = g->name;
            u.endpoint = g->endpoint;
            u.reason = reason;
            m.body_case = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_UNREGISTER;
            m.unregister = &u;
            send_cluster(sock, &m);
            break;
        }
        while (it[0].revents & ZMQ_POLLIN) {
            zmq_msg_t msg;
            zmq_msg_init(&msg);
            if (zmq_msg_recv(&msg, sock, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&msg);
                break;
            }
            on_ack(g, zmq_msg_data(&msg), zmq_msg_size(&msg));
            last_ack = gm_now_ms();
            answered = 1;
            zmq_msg_close(&msg);
        }
    }
    zmq_close(sock); /* lingers up to 500 ms so the Unregister goes out */
    zmq_close(ctl);
    return NULL;
}

static void reg_free(gc_register *g)
{
    if (g->ctl)
        zmq_close(g->ctl);
    if (g->own_ctx && g->ctx)
        zmq_ctx_term(g->ctx);
    free(g->router);
    free(g->endpoint);
    free(g->name);
    free(g->router_key);
    free(g->server_key);
    pthread_mutex_destroy(&g->err_mu);
    memset(&g->key, 0, sizeof(g->key));
    free(g);
}

gm_status gc_register_start(void *zmq_ctx, const gc_register_opts *o, gc_register **out)
{
    *out = NULL;
    if (!o->router || !*o->router || !o->endpoint || !*o->endpoint)
        return gm_fail(GM_ERR_INVALID_ARG, "registration needs the router endpoint and this replica's endpoint");
    bool curve = o->key || o->router_key;
    if (curve && (!o->key || !gc_curve_valid_z85(o->key->secret_z85) || !gc_curve_valid_z85(o->router_key)))
        return gm_fail(GM_ERR_INVALID_ARG, "CURVE registration needs this replica's key pair and the router's public key");
    if (o->server_key && *o->server_key && !gc_curve_valid_z85(o->server_key))
        return gm_fail(GM_ERR_INVALID_ARG, "server_key '%s' is not a Z85 public key", o->server_key);
    gc_register *g = calloc(1, sizeof(*g));
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "register");
    pthread_mutex_init(&g->err_mu, NULL);
    g->ctx = zmq_ctx;
    if (!g->ctx) {
        g->ctx = zmq_ctx_new();
        g->own_ctx = true;
    }
    char defname[300];
    if (!o->name || !*o->name) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = 0;
        snprintf(defname, sizeof(defname), "%s:%d", host, (int)getpid());
    }
    g->router = strdup(o->router);
    g->endpoint = strdup(o->endpoint);
    g->name = strdup(o->name && *o->name ? o->name : defname);
    g->router_key = o->router_key ? strdup(o->router_key) : NULL;
    g->server_key = o->server_key ? strdup(o->server_key) : NULL;
    if (o->key)
        g->key = *o->key;
    g->curve = curve;
    g->max_in_flight = o->max_in_flight;
    g->heartbeat_ms = o->heartbeat_ms > 0 ? o->heartbeat_ms : 1000;
    g->rank = o->rank;
    snprintf(g->ctl_ep, sizeof(g->ctl_ep), "inproc://gc-register-%p", (void *)g);
    int zero = 0;
    if (!g->ctx || !g->router || !g->endpoint || !g->name || (o->router_key && !g->router_key) ||
        (o->server_key && !g->server_key)) {
        reg_free(g);
        return gm_fail(GM_ERR_NOMEM, "register");
    }
    g->ctl = zmq_socket(g->ctx, ZMQ_PAIR);
    if (!g->ctl || zmq_setsockopt(g->ctl, ZMQ_LINGER, &zero, sizeof(zero)) != 0 || zmq_bind(g->ctl, g->ctl_ep) != 0) {
        gm_status s = gm_fail(GM_ERR_ZMQ, "register control socket: %s", zmq_strerror(errno));
        reg_free(g);
        return s;
    }
    if (pthread_create(&g->thread, NULL, register_thread, g) != 0) {
        reg_free(g);
        return gm_fail(GM_ERR_INTERNAL, "cannot start the registration thread");
    }
    *out = g;
    return GM_OK;
}

bool gc_register_accepted(const gc_register *r)
{
    return r && atomic_load(&((gc_register *)r)->accepted);
}

void gc_register_error(const gc_register *r, char *buf, size_t cap)
{
    gc_register *g = (gc_register *)r;
    pthread_mutex_lock(&g->err_mu);
    snprintf(buf, cap, "%s", g->error);
    pthread_mutex_unlock(&g->err_mu);
}

void gc_register_stop(gc_register **rp, const char *reason)
{
    if (!rp || !*rp)
        return;
    gc_register *g = *rp;
    const char *why = reason ? reason : "shutdown";
    zmq_send(g->ctl, why, strlen(why), 0);
    pthread_join(g->thread, NULL);
    reg_free(g);
    *rp = NULL;
}

gm_status gc_register_advertised(const char *bound, char *out, size_t cap)
{
    const char *hostpart = strstr(bound, "://");
    if (!hostpart)
        return gm_fail(GM_ERR_INVALID_ARG, "'%s' is not a ZeroMQ endpoint", bound);
    hostpart += 3;
    bool wild = strncmp(hostpart, "*:", 2) == 0 || strncmp(hostpart, "0.0.0.0:", 8) == 0;
    int n;
    if (wild) {
        char host[256] = "localhost";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = 0;
        n = snprintf(out, cap, "%.*s%s%s", (int)(hostpart - bound), bound, host, strchr(hostpart, ':'));
    } else {
        n = snprintf(out, cap, "%s", bound);
    }
    if (n < 0 || (size_t)n >= cap)
        return gm_fail(GM_ERR_INVALID_ARG, "endpoint '%s' is too long", bound);
    return GM_OK;
}
