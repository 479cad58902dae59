/* router_reg.c - gemma-router's register endpoint (proto/cluster.proto): who may
 * register which replica where.
 *
 * A Register makes the router send client prompts to the endpoint it names, so:
 *  - with CURVE, only replica keys (replica_allow, a ZAP domain of its own) get
 *    through the handshake; client keys cannot register. Without CURVE the socket
 *    binds on loopback or ipc:// unless the operator says --insecure-register;
 *  - a name belongs to the peer that registered it (its CURVE key; without CURVE
 *    its address) until the replica is forgotten: only that peer may re-point it
 *    or unregister it;
 *  - static replicas (--replica) are never changed by registration;
 *  - endpoints are tcp://HOST:PORT, or ipc://PATH from this host only; names are
 *    printable ASCII; at most RT_MAX_REGISTERED replicas register. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cluster/router_int.h"
#include "common/log.h"
#include "common/utf8.h"

/* ---- endpoint and name checks ---- */

#define HOST_TEXT_MAX 64 /* longer hosts are names, never loopback or wildcard addresses */

/* Host s[0..n) without IPv6 brackets as a C string in h; false when empty or too long. */
static bool host_text(const char *s, size_t n, char h[HOST_TEXT_MAX])
{
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= HOST_TEXT_MAX)
        return false;
    memcpy(h, s, n);
    h[n] = 0;
    return true;
}

/* Whether s[0..n) is an address of this host only: 127.0.0.0/8 (any inet_aton form,
 * such as "127.1"), ::1, ::ffff:127.x.y.z, "localhost" or the interface "lo". */
static bool host_loopback(const char *s, size_t n)
{
    char h[HOST_TEXT_MAX];
    if (!host_text(s, n, h))
        return false;
    if (!strcasecmp(h, "localhost") || !strcasecmp(h, "localhost.") || !strcmp(h, "lo"))
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_aton(h, &a4))
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, h, &a6) != 1)
        return false;
    if (IN6_IS_ADDR_LOOPBACK(&a6))
        return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
}

/* Whether s[0..n) is a wildcard host: "*", 0.0.0.0 (any form), "::". */
static bool host_wildcard(const char *s, size_t n)
{
    char h[HOST_TEXT_MAX];
    if (!host_text(s, n, h))
        return false;
    struct in_addr a4;
    struct in6_addr a6;
    return !strcmp(h, "*") || (inet_aton(h, &a4) && a4.s_addr == 0) ||
           (inet_pton(AF_INET6, h, &a6) == 1 && IN6_IS_ADDR_UNSPECIFIED(&a6));
}

/* Split "HOST:PORT" (HOST may be "[v6]"); false when there is no ':PORT'. */
static bool split_host_port(const char *hp, size_t *host_len, const char **port)
{
    const char *colon = hp[0] == '[' ? strstr(hp, "]:") : strrchr(hp, ':');
    if (!colon)
        return false;
    if (hp[0] == '[')
        colon++;
    *host_len = (size_t)(colon - hp);
    *port = colon + 1;
    return true;
}

bool gc_router_endpoint_local(const char *ep)
{
    if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9))
        return true;
    if (strncmp(ep, "tcp://", 6) != 0)
        return false;
    size_t hl;
    const char *port;
    return split_host_port(ep + 6, &hl, &port) && host_loopback(ep + 6, hl);
}

/* Printable ASCII without spaces: what names, hosts and paths may hold. */
static bool printable(const char *s)
{
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f)
            return false;
    return true;
}

bool gc_router_endpoint_ok(const char *ep, bool local_peer, char *why, size_t cap)
{
    size_t n = strlen(ep);
    if (n == 0 || n > GC_ENDPOINT_MAX || !printable(ep)) {
        snprintf(why, cap, "an endpoint is 1..%d bytes of printable ASCII", GC_ENDPOINT_MAX);
        return false;
    }
    if (!strncmp(ep, "ipc://", 6)) {
        if (!local_peer) {
            snprintf(why, cap, "ipc:// endpoints are accepted from this host only");
            return false;
        }
        if (n - 6 < 1 || n - 6 > 107 || strchr(ep + 6, '*')) { /* sun_path holds 107 bytes and a NUL */
            snprintf(why, cap, "an ipc:// path is 1..107 bytes, without '*'");
            return false;
        }
        return true;
    }
    if (strncmp(ep, "tcp://", 6) != 0) {
        snprintf(why, cap, "only tcp://HOST:PORT (or ipc:// from this host) can be registered");
        return false;
    }
    const char *hp = ep + 6, *port;
    size_t hl;
    if (strchr(hp, ';') || !split_host_port(hp, &hl, &port)) {
        snprintf(why, cap, "a tcp:// endpoint is tcp://HOST:PORT (no source address)");
        return false;
    }
    bool v6 = hp[0] == '[';
    for (size_t i = v6; i < hl - v6; i++) {
        char c = hp[i];
        if (!(isalnum((unsigned char)c) || c == '-' || c == '.' || (v6 && c == ':'))) {
            snprintf(why, cap, "the host has a character other than letters, digits, '-', '.'%s", v6 ? ", ':'" : "");
            return false;
        }
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (hl == 0 || hl > (size_t)(253 + 2 * v6) || !isdigit((unsigned char)port[0]) || *end || p < 1 || p > 65535) {
        snprintf(why, cap, "a tcp:// endpoint needs a host (at most 253 bytes) and a port 1..65535");
        return false;
    }
    if (host_wildcard(hp, hl)) {
        snprintf(why, cap, "a wildcard host is a bind address, not one the router can reach");
        return false;
    }
    if (!local_peer && host_loopback(hp, hl)) {
        snprintf(why, cap, "a peer on another host cannot register a loopback endpoint");
        return false;
    }
    return true;
}

static bool name_ok(const char *name)
{
    size_t n = strlen(name);
    return n > 0 && n <= GC_NAME_MAX && printable(name);
}

/* ---- peers ---- */

void rt_peer_of(const gc_router *r, zmq_msg_t *payload, rt_peer *out)
{
    memset(out, 0, sizeof(*out));
    const char *user = r->curve ? zmq_msg_gets(payload, "User-Id") : NULL; /* set by our ZAP handler */
    const char *addr = zmq_msg_gets(payload, "Peer-Address");               /* tcp only */
    bool ipc = !strncmp(r->reg_ep, "ipc://", 6);
    out->local = ipc || (addr && host_loopback(addr, strlen(addr)));
    if (user && *user)
        snprintf(out->owner, sizeof(out->owner), "key:%s", user);
    else if (addr && *addr)
        snprintf(out->owner, sizeof(out->owner), "addr:%s", addr);
    else
        snprintf(out->owner, sizeof(out->owner), "local");
}

/* ---- messages ---- */

static void reg_reply(gc_router *r, const uint8_t *id, size_t id_len, bool ok, const char *err)
{
    Gemma__Cluster__V1__ClusterMessage m = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__INIT;
    Gemma__Cluster__V1__RegisterAck a = GEMMA__CLUSTER__V1__REGISTER_ACK__INIT;
    char text[400]; /* a proto3 string: valid UTF-8 */
    gm_utf8_copy(text, sizeof(text), err ? err : "", err ? strlen(err) : 0);
    a.accepted = ok;
    a.error = text;
    a.router = r->listen_ep;
    a.heartbeat_ms = r->cfg->heartbeat_ms;
    m.body_case = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_ACK;
    m.ack = &a;
    uint8_t buf[1024];
    size_t n = gemma__cluster__v1__cluster_message__get_packed_size(&m);
    if (n > sizeof(buf))
        return;
    gemma__cluster__v1__cluster_message__pack(&m, buf);
    if (zmq_send(r->reg, id, id_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 || zmq_send(r->reg, buf, n, ZMQ_DONTWAIT) < 0)
        GM_WARN("cannot answer a registration: %s", zmq_strerror(errno));
}

static rt_replica *find_name(gc_router *r, const char *name)
{
    for (int i = 0; i < r->n_reps; i++)
        if (strcmp(r->reps[i]->name, name) == 0)
            return r->reps[i];
    return NULL;
}

static rt_replica *find_endpoint(gc_router *r, const char *ep)
{
    for (int i = 0; i < r->n_reps; i++)
        if (strcmp(r->reps[i]->endpoint, ep) == 0)
            return r->reps[i];
    return NULL;
}

/* Why peer may not register name at ep given the replicas that hold them ("" = it may). */
static void register_conflict(gc_router *r, const rt_peer *peer, const char *name, const char *ep,
                              rt_replica *pn, rt_replica *pe, char *err, size_t cap)
{
    int n_dynamic = 0;
    for (int i = 0; i < r->n_reps; i++)
        n_dynamic += r->reps[i]->dynamic;
    err[0] = 0;
    if ((pn && !pn->dynamic) || (pe && !pe->dynamic))
        snprintf(err, cap, "%s is a statically configured replica (--replica): registration cannot change it",
                 pn && !pn->dynamic ? name : ep);
    else if ((pn && strcmp(pn->owner, peer->owner) != 0) || (pe && strcmp(pe->owner, peer->owner) != 0))
        snprintf(err, cap, "%s '%s' is registered by another %s", pn ? "the name" : "the endpoint", pn ? name : ep,
                 r->curve ? "key" : "peer address");
    else if (pn && pe && pn != pe)
        snprintf(err, cap, "endpoint %s is registered as '%s'", ep, pe->name);
    else if (!pn && !pe && n_dynamic >= RT_MAX_REGISTERED)
        snprintf(err, cap, "the router holds %d registered replicas, its limit", RT_MAX_REGISTERED);
}

static void on_register(gc_router *r, const rt_peer *peer, const uint8_t *id, size_t id_len,
                        const Gemma__Cluster__V1__Register *g, double now)
{
    const char *ep = g->endpoint ? g->endpoint : "";
    const char *name = g->name && *g->name ? g->name : ep;
    const char *key = g->server_key ? g->server_key : "";
    char err[400] = "", why[160];
    rt_replica *pn = find_name(r, name), *pe = find_endpoint(r, ep);
    if (g->version != GEMMA__CLUSTER__V1__CLUSTER_VERSION__CLUSTER_VERSION_CURRENT)
        snprintf(err, sizeof(err), "cluster protocol version %u, router speaks %d", g->version,
                 GEMMA__CLUSTER__V1__CLUSTER_VERSION__CLUSTER_VERSION_CURRENT);
    else if (!*ep)
        snprintf(err, sizeof(err), "Register without an endpoint");
    else if (!gc_router_endpoint_ok(ep, peer->local, why, sizeof(why)))
        snprintf(err, sizeof(err), "endpoint refused: %s", why);
    else if (!name_ok(name))
        snprintf(err, sizeof(err), "a replica name is 1..%d bytes of printable ASCII without spaces", GC_NAME_MAX);
    else if (*key && !gc_curve_valid_z85(key))
        snprintf(err, sizeof(err), "server_key is not a Z85 public key");
    else if (*key && !r->curve)
        snprintf(err, sizeof(err), "the replica uses CURVE but the router has no key pair");
    else
        register_conflict(r, peer, name, ep, pn, pe, err, sizeof(err));
    if (err[0]) {
        GM_WARN("registration from %s refused: %s", peer->owner, err);
        reg_reply(r, id, id_len, false, err);
        return;
    }
    rt_replica *p = pn ? pn : pe;
    if (!p) {
        p = rt_replica_add(r, ep, name, key, true, g->max_in_flight);
        if (!p) {
            snprintf(err, sizeof(err), "cannot connect to '%s': %s", ep, gm_last_error());
            reg_reply(r, id, id_len, false, err);
            return;
        }
        snprintf(p->owner, sizeof(p->owner), "%s", peer->owner);
        GM_INFO("replica %s registered by %s", p->label, p->owner);
    } else if (!pn) { /* the same owner restarted under a new name (e.g. host:pid) at the same endpoint */
        char *nm = strdup(name);
        if (nm) {
            GM_INFO("replica %s is now called '%s'", p->label, nm);
            free(p->name);
            p->name = nm;
            rt_replica_set_label(p);
        }
    } else if (strcmp(p->endpoint, ep) != 0 || strcmp(p->server_key, key) != 0) {
        GM_INFO("replica %s moved to %s", p->name, ep);
        char *e = strdup(ep);
        if (e) {
            if (p->up)
                rt_replica_down(r, p, "re-registered at another endpoint");
            free(p->endpoint);
            p->endpoint = e;
            rt_replica_set_label(p);
            snprintf(p->server_key, sizeof(p->server_key), "%s", key);
            if (rt_replica_open_socket(r, p) != GM_OK)
                GM_ERROR("replica %s: %s", p->label, gm_last_error());
        }
    }
    if (p->draining)
        GM_INFO("replica %s registered again", p->name);
    p->draining = false;
    p->last_register = now;
    if (g->max_in_flight > 0)
        p->max_in_flight = g->max_in_flight;
    rt_update_counts(r);
    reg_reply(r, id, id_len, true, NULL);
}

static void on_unregister(gc_router *r, const rt_peer *peer, const uint8_t *id, size_t id_len,
                          const Gemma__Cluster__V1__Unregister *u)
{
    const char *name = u->name ? u->name : "", *ep = u->endpoint ? u->endpoint : "";
    rt_replica *p = *name ? find_name(r, name) : *ep ? find_endpoint(r, ep) : NULL;
    const char *err = NULL;
    if (!p)
        err = "no replica is registered under that name";
    else if (!p->dynamic)
        err = "a statically configured replica (--replica) cannot be unregistered";
    else if (strcmp(p->owner, peer->owner) != 0)
        err = r->curve ? "the replica is registered by another key" : "the replica is registered by another peer";
    if (err) {
        GM_WARN("Unregister from %s refused: %s%s%s", peer->owner, err, p ? ": " : "", p ? p->label : "");
        reg_reply(r, id, id_len, false, err);
        return;
    }
    if (!p->draining) {
        char reason[64];
        size_t k = 0;
        for (const char *s = u->reason ? u->reason : ""; *s && k < sizeof(reason) - 1; s++)
            reason[k++] = *s > 0x1f && *s < 0x7f ? *s : '?'; /* a log line, not a terminal escape */
        reason[k] = 0;
        GM_INFO("replica %s unregistered (%s): draining %d request(s)", p->name, reason, p->in_flight);
        p->draining = true;
        rt_update_counts(r);
    }
}

void rt_on_register_msg(gc_router *r, const rt_peer *peer, const uint8_t *id, size_t id_len, const uint8_t *data,
                        size_t len, double now)
{
    Gemma__Cluster__V1__ClusterMessage *m = gemma__cluster__v1__cluster_message__unpack(NULL, len, data);
    GM_DEBUG("register socket: %zu bytes from %s%s", len, peer->owner, peer->local ? " (local)" : "");
    if (!m) {
        reg_reply(r, id, id_len, false, "not a gemma.cluster.v1.ClusterMessage");
        return;
    }
    if (m->body_case == GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_REG)
        on_register(r, peer, id, id_len, m->reg, now);
    else if (m->body_case == GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_UNREGISTER)
        on_unregister(r, peer, id, id_len, m->unregister);
    gemma__cluster__v1__cluster_message__free_unpacked(m, NULL);
}
