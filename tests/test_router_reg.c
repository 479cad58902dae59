/* test_router_reg.c - who may register what at gemma-router (cluster/router_reg.c):
 *  - endpoint and bind rules, and the settings that guard the register socket;
 *  - CURVE: a replica with another (allowed) replica key cannot re-point, take over or
 *    unregister a registered replica, nor touch a static one, and clients keep reaching the
 *    real replica; a client key cannot even complete the handshake on the register socket;
 *    the owner can unregister, after which the name is free;
 *  - without CURVE (--insecure-register, bound on every address): a peer from another
 *    address ("remote": the host's own non-loopback address) cannot take over a name, nor
 *    register an ipc:// or loopback endpoint, but can register a reachable tcp:// one.
 * Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "cluster/register.h"
#include "common/log.h"
#include "proto/cluster.pb-c.h"
#include "tests/test_router_util.h"

/* ---- unit: endpoint rules and settings ---- */

static void test_endpoint_rules(void **state)
{
    (void)state;
    char why[200];
    const char *good[] = {"tcp://10.0.0.2:5555", "tcp://node-7.cluster.example:5555", "tcp://[fe80::1]:1",
                          "tcp://h:65535"};
    for (size_t i = 0; i < sizeof(good) / sizeof(*good); i++) {
        if (!gc_router_endpoint_ok(good[i], false, why, sizeof(why)))
            fail_msg("'%s' refused: %s", good[i], why);
        assert_true(gc_router_endpoint_ok(good[i], true, why, sizeof(why)));
    }
    const char *bad[] = {"", "tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://[::]:5555", "tcp://h:0", "tcp://h:65536",
                         "tcp://h:", "tcp://h", "tcp://h:5x", "tcp://:5", "tcp://10.0.0.1:1;10.0.0.2:2",
                         "tcp://h o:1", "tcp://h:1\n", "tcp://h\xC3\xA9:1", "inproc://x", "pgm://eth0;239.0.0.1:5",
                         "udp://h:1", "ipc://", "ipc://*", "ipc:///tmp/a*"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        why[0] = 0;
        if (gc_router_endpoint_ok(bad[i], true, why, sizeof(why)))
            fail_msg("'%s' accepted", bad[i]);
        assert_true(why[0] != 0);
    }
    char longep[300];
    snprintf(longep, sizeof(longep), "tcp://%0*d:5", GC_ENDPOINT_MAX, 7);
    assert_false(gc_router_endpoint_ok(longep, true, why, sizeof(why)));
    /* from this host: ipc and loopback too; from elsewhere: neither */
    const char *local_only[] = {"ipc:///tmp/gemmad.sock", "tcp://127.0.0.1:5555", "tcp://127.1:5555",
                                "tcp://localhost:5555", "tcp://[::1]:5555", "tcp://[::ffff:127.0.0.2]:5555"};
    for (size_t i = 0; i < sizeof(local_only) / sizeof(*local_only); i++) {
        assert_true(gc_router_endpoint_ok(local_only[i], true, why, sizeof(why)));
        if (gc_router_endpoint_ok(local_only[i], false, why, sizeof(why)))
            fail_msg("'%s' accepted from a remote peer", local_only[i]);
    }
    assert_true(gc_router_endpoint_local("tcp://127.0.0.1:*"));
    assert_true(gc_router_endpoint_local("tcp://[::1]:5551"));
    assert_true(gc_router_endpoint_local("tcp://lo:5551"));
    assert_true(gc_router_endpoint_local("ipc:///run/gemma/register"));
    assert_false(gc_router_endpoint_local("tcp://0.0.0.0:5551"));
    assert_false(gc_router_endpoint_local("tcp://*:5551"));
    assert_false(gc_router_endpoint_local("tcp://10.0.0.1:5551"));
    assert_false(gc_router_endpoint_local("tcp://eth0:5551"));
}

static gm_status validate_args(int argc, char **argv)
{
    gc_router_config c;
    gc_router_action act;
    const char *prefix;
    bool force;
    gm_status st = gc_router_config_from_args(argc, argv, &c, &act, &prefix, &force);
    if (st == GM_OK)
        st = gc_router_config_validate(&c);
    gc_router_config_free(&c);
    return st;
}

static void test_register_settings(void **state)
{
    (void)state;
    /* the docs' old Slurm line: every host could register, with no key */
    char *a1[] = {"gemma-router", "--register", "tcp://0.0.0.0:5551"};
    assert_int_equal(validate_args(3, a1), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "--insecure-register"));
    char *a2[] = {"gemma-router", "--register", "tcp://0.0.0.0:5551", "--insecure-register"};
    assert_int_equal(validate_args(4, a2), GM_OK);
    char *a3[] = {"gemma-router", "--register", "tcp://127.0.0.1:5551"};
    assert_int_equal(validate_args(3, a3), GM_OK);
    /* CURVE with a register endpoint needs replica keys: client keys do not register */
    char *a4[] = {"gemma-router", "--register", "tcp://0.0.0.0:5551", "--curve", "--curve-secret-key", "r.key_secret",
                  "--curve-allow", "clients/"};
    assert_int_equal(validate_args(8, a4), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "replica_allow"));
    char *a5[] = {"gemma-router", "--register", "tcp://0.0.0.0:5551", "--curve", "--curve-secret-key",
                  "r.key_secret", "--curve-allow", "clients/", "--replica-allow", "replicas/"};
    assert_int_equal(validate_args(10, a5), GM_OK);
    char *a6[] = {"gemma-router", "--register", "tcp://127.0.0.1:5551", "--replica-allow", "replicas/"};
    assert_int_equal(validate_args(5, a6), GM_ERR_INVALID_ARG); /* replica keys without CURVE mean nothing */
}

/* ---- raw registration messages ---- */

/* A DEALER to the register endpoint; with kp, a CURVE client of server_pub. */
static void *reg_socket(void *ctx, const char *ep, const gc_keypair *kp, const char *server_pub)
{
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero));
    if (kp)
        assert_int_equal(gc_curve_set_client(s, kp, server_pub), GM_OK);
    assert_int_equal(zmq_connect(s, ep), 0);
    return s;
}

static void send_cluster(void *s, Gemma__Cluster__V1__ClusterMessage *m)
{
    uint8_t buf[1024];
    size_t n = gemma__cluster__v1__cluster_message__get_packed_size(m);
    assert_true(n <= sizeof(buf));
    gemma__cluster__v1__cluster_message__pack(m, buf);
    assert_true(zmq_send(s, buf, n, 0) >= 0);
}

/* Wait (bounded) for the router's RegisterAck; *error gets its text. Returns accepted. */
static bool recv_ack(void *s, char *error, size_t cap)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
    uint8_t rx[2048];
    int n = zmq_recv(s, rx, sizeof(rx), 0);
    assert_true(n > 0);
    Gemma__Cluster__V1__ClusterMessage *m = gemma__cluster__v1__cluster_message__unpack(NULL, (size_t)n, rx);
    assert_non_null(m);
    assert_int_equal(m->body_case, GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_ACK);
    bool ok = m->ack->accepted;
    snprintf(error, cap, "%s", m->ack->error);
    gemma__cluster__v1__cluster_message__free_unpacked(m, NULL);
    return ok;
}

/* Send Register{name, endpoint} and return whether the router accepted it (error: why not). */
static bool reg_call(void *s, const char *name, const char *endpoint, char *error, size_t cap)
{
    Gemma__Cluster__V1__ClusterMessage m = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__INIT;
    Gemma__Cluster__V1__Register g = GEMMA__CLUSTER__V1__REGISTER__INIT;
    g.version = GEMMA__CLUSTER__V1__CLUSTER_VERSION__CLUSTER_VERSION_CURRENT;
    g.name = (char *)name;
    g.endpoint = (char *)endpoint;
    g.rank = -1;
    m.body_case = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_REG;
    m.reg = &g;
    send_cluster(s, &m);
    return recv_ack(s, error, cap);
}

/* Send Unregister{name}; a refusal is answered, an accepted one is not. */
static void unreg_send(void *s, const char *name)
{
    Gemma__Cluster__V1__ClusterMessage m = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__INIT;
    Gemma__Cluster__V1__Unregister u = GEMMA__CLUSTER__V1__UNREGISTER__INIT;
    u.name = (char *)name;
    u.reason = "test";
    m.body_case = GEMMA__CLUSTER__V1__CLUSTER_MESSAGE__BODY_UNREGISTER;
    m.unregister = &u;
    send_cluster(s, &m);
}

/* n requests through the router; all must finish with the fake's output. */
static void serve_some(gmc_client *c, int n, int32_t seed0)
{
    res xs[16];
    assert_true(n <= 16);
    for (int i = 0; i < n; i++)
        submit(c, seed0 + i, 0, 3, &xs[i], 0);
    wait_done(c, xs, n);
    for (int i = 0; i < n; i++)
        expect_tokens(&xs[i], seed0 + i, 3);
}

/* ---- CURVE: replica keys, ownership, static replicas ---- */

static void write_key(const char *dir, const char *name, gc_keypair *kp)
{
    char prefix[600];
    assert_int_equal(gc_curve_generate(kp), GM_OK);
    snprintf(prefix, sizeof(prefix), "%s/%s", dir, name);
    assert_int_equal(gc_curve_write_keypair(kp, prefix, false), GM_OK);
}

static char *str_printf(const char *fmt, const char *a)
{
    char buf[700];
    snprintf(buf, sizeof(buf), fmt, a);
    return strdup(buf);
}

static void test_hijack_refused_curve(void **state)
{
    (void)state;
    char dir[] = "/tmp/gm_router_regXXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/clients", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(sub, sizeof(sub), "%s/replicas", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    gc_keypair server, client, rep1, rep2;
    write_key(dir, "router", &server);
    write_key(dir, "clients/alice", &client);
    write_key(dir, "replicas/r1", &rep1);
    write_key(dir, "replicas/r2", &rep2); /* another replica's key: allowed to register, not to take over */

    env e;
    env_init(&e, 1, 64, true); /* f[0]: a static replica */
    e.cfg.curve = true;
    e.cfg.curve_secret_key = str_printf("%s/router.key_secret", dir);
    e.cfg.curve_allow = calloc(1, sizeof(char *));
    e.cfg.curve_allow[e.cfg.n_curve_allow++] = str_printf("%s/clients", dir);
    e.cfg.replica_allow = calloc(1, sizeof(char *));
    e.cfg.replica_allow[e.cfg.n_replica_allow++] = str_printf("%s/replicas", dir);
    env_run(&e);
    fake_replica *S = e.f[0];
    atomic_store(&S->serving, false); /* the static one takes no work: every request shows where "r1" points */
    fake_replica *A = fake_start(e.ctx, "tcp://127.0.0.1:*"), *M = fake_start(e.ctx, "tcp://127.0.0.1:*");
    assert_non_null(A);
    assert_non_null(M);

    /* the real replica registers with its own key */
    const char *reg_ep = gc_router_register_endpoint(e.r);
    gc_register_opts o = {.router = reg_ep, .endpoint = A->ep, .name = "r1", .heartbeat_ms = 50, .rank = -1,
                          .key = &rep1, .router_key = server.public_z85};
    gc_register *ga;
    assert_int_equal(gc_register_start(NULL, &o, &ga), GM_OK);
    WAIT_UNTIL(gc_register_accepted(ga));
    WAIT_UNTIL(serving_count(&e) == 1 && up_count(&e) == 2);
    gmc_client *c;
    gmc_connect_opts co;
    gmc_connect_opts_init(&co);
    co.timeout_ms = WAIT_MS;
    co.server_key = server.public_z85;
    co.client_public_key = client.public_z85;
    co.client_secret_key = client.secret_z85;
    assert_int_equal(gmc_connect_with(e.ep, &co, &c), GMC_OK);
    serve_some(c, 4, 100);
    assert_int_equal(atomic_load(&A->n_generate), 4);

    /* an impostor with another replica key: re-pointing "r1", taking A's endpoint under a new
     * name, or touching the static replica are all refused */
    void *ctx = zmq_ctx_new();
    void *imp = reg_socket(ctx, reg_ep, &rep2, server.public_z85);
    char err[400];
    assert_false(reg_call(imp, "r1", M->ep, err, sizeof(err)));
    assert_non_null(strstr(err, "registered by another key"));
    assert_false(reg_call(imp, "r1-bis", A->ep, err, sizeof(err)));
    assert_non_null(strstr(err, "registered by another key"));
    assert_false(reg_call(imp, S->ep, M->ep, err, sizeof(err))); /* a static replica's name is its endpoint */
    assert_non_null(strstr(err, "statically configured"));
    assert_false(reg_call(imp, "s-bis", S->ep, err, sizeof(err)));
    assert_non_null(strstr(err, "statically configured"));
    /* nor can it drain them */
    unreg_send(imp, "r1");
    assert_false(recv_ack(imp, err, sizeof(err)));
    assert_non_null(strstr(err, "another key"));
    unreg_send(imp, S->ep);
    assert_false(recv_ack(imp, err, sizeof(err)));
    assert_non_null(strstr(err, "statically configured"));
    /* the clients still reach the real replica, and only it */
    serve_some(c, 8, 200);
    assert_int_equal(atomic_load(&A->n_generate), 12);
    assert_int_equal(atomic_load(&M->n_generate), 0);
    assert_int_equal(serving_count(&e), 1);
    gc_router_counts k;
    gc_router_get_counts(e.r, &k);
    assert_int_equal(k.replicas_known, 2);

    /* a client key cannot register at all: the register socket's handshake refuses it */
    void *ctx2 = zmq_ctx_new(); /* its own context: a refused handshake must not touch the impostor socket */
    void *mon, *cs = curve_dealer(ctx2, reg_ep, &client, server.public_z85, &mon, "inproc://mon-client-reg");
    assert_int_equal(handshake_result(mon), ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    zmq_close(cs);
    zmq_close(mon);
    zmq_ctx_term(ctx2);

    /* the owner may leave; then the name is free for anyone allowed */
    gc_register_stop(&ga, "test");
    WAIT_UNTIL((gc_router_get_counts(e.r, &k), k.replicas_known == 1));
    assert_true(reg_call(imp, "r1", M->ep, err, sizeof(err)));
    WAIT_UNTIL(serving_count(&e) == 1 && up_count(&e) == 2);
    serve_some(c, 2, 300);
    assert_int_equal(atomic_load(&M->n_generate), 2);

    zmq_close(imp);
    zmq_ctx_term(ctx);
    gmc_close(&c);
    fake_stop(A); /* before env_stop: they live on its context */
    fake_stop(M);
    env_stop(&e);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- without CURVE: a remote-style peer ---- */

/* This host's first non-loopback IPv4 address, or false. */
static bool host_address(char *out, size_t cap)
{
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0)
        return false;
    bool found = false;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK) ||
            !(i->ifa_flags & IFF_UP))
            continue;
        found = inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out, (socklen_t)cap) != NULL;
    }
    freeifaddrs(ifs);
    return found;
}

static void test_remote_peer_insecure(void **state)
{
    (void)state;
    char ip[64];
    if (!host_address(ip, sizeof(ip))) {
        print_message("no non-loopback IPv4 address on this host: the remote-peer case is skipped\n");
        skip();
    }
    env e;
    env_init(&e, 0, 64, false);
    e.cfg.register_ep = strdup("tcp://0.0.0.0:*");
    e.cfg.insecure_register = true;
    env_run(&e);
    const char *bound = gc_router_register_endpoint(e.r); /* tcp://0.0.0.0:PORT */
    const char *port = strrchr(bound, ':') + 1;
    char via_lo[128], via_ip[128], far_ep[128];
    snprintf(via_lo, sizeof(via_lo), "tcp://127.0.0.1:%s", port);
    snprintf(via_ip, sizeof(via_ip), "tcp://%s:%s", ip, port);
    snprintf(far_ep, sizeof(far_ep), "tcp://%s:*", ip);
    fake_replica *A = fake_start(e.ctx, "tcp://127.0.0.1:*"), *F = fake_start(e.ctx, far_ep);
    assert_non_null(A);
    assert_non_null(F);

    void *ctx = zmq_ctx_new();
    void *local = reg_socket(ctx, via_lo, NULL, NULL), *remote = reg_socket(ctx, via_ip, NULL, NULL);
    char err[400], ipc_ep[128];
    assert_true(reg_call(local, "r1", A->ep, err, sizeof(err))); /* a local peer, a loopback endpoint */
    WAIT_UNTIL(serving_count(&e) == 1);
    /* from another address: no ipc://, no loopback, no taking over "r1" */
    snprintf(ipc_ep, sizeof(ipc_ep), "ipc:///tmp/gm-router-reg-%d", (int)getpid());
    assert_false(reg_call(remote, "far", ipc_ep, err, sizeof(err)));
    assert_non_null(strstr(err, "from this host only"));
    assert_false(reg_call(remote, "far", A->ep, err, sizeof(err)));
    assert_non_null(strstr(err, "loopback"));
    assert_false(reg_call(remote, "r1", F->ep, err, sizeof(err)));
    assert_non_null(strstr(err, "another peer address"));
    unreg_send(remote, "r1");
    assert_false(recv_ack(remote, err, sizeof(err)));
    /* the client still reaches A */
    gmc_client *c;
    assert_int_equal(gmc_connect(e.ep, WAIT_MS, &c), GMC_OK);
    serve_some(c, 4, 400);
    assert_int_equal(atomic_load(&A->n_generate), 4);
    assert_int_equal(atomic_load(&F->n_generate), 0);
    /* a reachable tcp:// endpoint under a free name is fine from there */
    assert_true(reg_call(remote, "far", F->ep, err, sizeof(err)));
    WAIT_UNTIL(serving_count(&e) == 2);

    gmc_close(&c);
    zmq_close(local);
    zmq_close(remote);
    zmq_ctx_term(ctx);
    fake_stop(A);
    fake_stop(F);
    env_stop(&e);
}

int main(void)
{
    gm_log_init("test_router_reg", getenv("GM_TEST_LOG") ? GM_LOG_DEBUG : GM_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_endpoint_rules),
        cmocka_unit_test(test_register_settings),
        cmocka_unit_test(test_hijack_refused_curve),
        cmocka_unit_test(test_remote_peer_insecure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
