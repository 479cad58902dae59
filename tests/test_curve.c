/* test_curve.c - key files (format, modes, mismatches), allow-lists, and the ZAP handler:
 * an allowed client key talks, a wrong one gets nothing, a wrong server key gets nothing;
 * domains with lists of their own, and the key that passed as the messages' User-Id. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/curve.h"

static char g_dir[] = "/tmp/gm_curveXXXXXX";

static int setup(void **state)
{
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", g_dir, name);
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    chmod(path, mode);
}

static void test_keypair_files(void **state)
{
    gc_keypair kp, back, pub;
    assert_int_equal(gc_curve_generate(&kp), GM_OK);
    assert_true(gc_curve_valid_z85(kp.public_z85));
    assert_true(gc_curve_valid_z85(kp.secret_z85));
    char prefix[256], p[300];
    path_of(prefix, sizeof(prefix), "server");
    assert_int_equal(gc_curve_write_keypair(&kp, prefix, false), GM_OK);
    /* modes: secret 0600, public readable */
    struct stat st;
    snprintf(p, sizeof(p), "%s.key_secret", prefix);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(gc_curve_load_secret(p, &back), GM_OK);
    assert_string_equal(back.public_z85, kp.public_z85);
    assert_string_equal(back.secret_z85, kp.secret_z85);
    snprintf(p, sizeof(p), "%s.key", prefix);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(gc_curve_load(p, &pub), GM_OK);
    assert_string_equal(pub.public_z85, kp.public_z85);
    assert_string_equal(pub.secret_z85, "");
    assert_int_equal(gc_curve_load_secret(p, &pub), GM_ERR_INVALID_ARG); /* no secret in NAME.key */
    /* no silent overwrite */
    assert_int_equal(gc_curve_write_keypair(&kp, prefix, false), GM_ERR_IO);
    assert_non_null(strstr(gm_last_error(), "--force"));
    assert_int_equal(gc_curve_write_keypair(&kp, prefix, true), GM_OK);
}

static void test_bad_key_files(void **state)
{
    gc_keypair kp, other;
    assert_int_equal(gc_curve_generate(&kp), GM_OK);
    assert_int_equal(gc_curve_generate(&other), GM_OK);
    char p[256], text[256];
    /* a secret file others can read is refused */
    path_of(p, sizeof(p), "open.key_secret");
    snprintf(text, sizeof(text), "public_key = \"%s\";\nsecret_key = \"%s\";\n", kp.public_z85, kp.secret_z85);
    write_text(p, text, 0644);
    gc_keypair out;
    assert_int_equal(gc_curve_load(p, &out), GM_ERR_INVALID_ARG);
    assert_non_null(strstr(gm_last_error(), "chmod 600"));
    /* public and secret of different pairs */
    path_of(p, sizeof(p), "mixed.key_secret");
    snprintf(text, sizeof(text), "public_key = \"%s\";\nsecret_key = \"%s\";\n", other.public_z85, kp.secret_z85);
    write_text(p, text, 0600);
    assert_int_equal(gc_curve_load(p, &out), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "does not match"));
    /* garbage, short keys, empty */
    path_of(p, sizeof(p), "junk.key");
    write_text(p, "public_key = \"abc\";\n", 0644);
    assert_int_equal(gc_curve_load(p, &out), GM_ERR_FORMAT);
    assert_non_null(strstr(gm_last_error(), "junk.key:1"));
    write_text(p, "# only a comment\n\n", 0644);
    assert_int_equal(gc_curve_load(p, &out), GM_ERR_FORMAT);
    path_of(p, sizeof(p), "missing.key");
    assert_int_equal(gc_curve_load(p, &out), GM_ERR_IO);
    assert_false(gc_curve_valid_z85("short"));
    assert_false(gc_curve_valid_z85(NULL));
}

static void test_allowlist_paths(void **state)
{
    gc_keypair a, b, c;
    assert_int_equal(gc_curve_generate(&a), GM_OK);
    assert_int_equal(gc_curve_generate(&b), GM_OK);
    assert_int_equal(gc_curve_generate(&c), GM_OK);
    char d[256], p[300], text[256];
    path_of(d, sizeof(d), "clients");
    assert_int_equal(mkdir(d, 0755), 0);
    snprintf(p, sizeof(p), "%s/a", d);
    assert_int_equal(gc_curve_write_keypair(&a, p, false), GM_OK); /* a.key and a.key_secret */
    snprintf(p, sizeof(p), "%s/b", d);
    assert_int_equal(gc_curve_write_keypair(&b, p, false), GM_OK);
    gc_allowlist *al = gc_allowlist_new();
    assert_int_equal(gc_allowlist_add_path(al, d), GM_OK);
    assert_int_equal(gc_allowlist_count(al), 2); /* only *.key files */
    /* a list file of bare keys with comments, duplicates collapse */
    path_of(p, sizeof(p), "list.txt");
    snprintf(text, sizeof(text), "# allowed\n%s\n\n%s\n", c.public_z85, a.public_z85);
    write_text(p, text, 0644);
    assert_int_equal(gc_allowlist_add_path(al, p), GM_OK);
    assert_int_equal(gc_allowlist_count(al), 3);
    uint8_t raw[32];
    assert_non_null(zmq_z85_decode(raw, c.public_z85));
    assert_true(gc_allowlist_contains(al, raw));
    assert_int_equal(gc_allowlist_add(al, "not-a-key"), GM_ERR_INVALID_ARG);
    path_of(p, sizeof(p), "nope");
    assert_int_equal(gc_allowlist_add_path(al, p), GM_ERR_IO);
    gc_allowlist_destroy(&al);
    assert_null(al);
}

/* Monitor events until a handshake outcome (or nothing for 10 s: 0). */
static int handshake_event_within(void *mon, long ms)
{
    for (;;) {
        zmq_pollitem_t it = {mon, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, ms) != 1)
            return 0;
        zmq_msg_t a, b;
        zmq_msg_init(&a);
        zmq_msg_init(&b);
        zmq_msg_recv(&a, mon, 0);
        zmq_msg_recv(&b, mon, 0);
        uint16_t ev;
        memcpy(&ev, zmq_msg_data(&a), 2);
        zmq_msg_close(&a);
        zmq_msg_close(&b);
        if (ev & (ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                  ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL))
            return ev;
    }
}

static int handshake_event(void *mon)
{
    return handshake_event_within(mon, 10000);
}

typedef struct client {
    void *s, *mon;
} client;

static client connect_client(void *ctx, const char *ep, const gc_keypair *kp, const char *server_pub, int k)
{
    client c;
    char mon_ep[64];
    int zero = 0;
    snprintf(mon_ep, sizeof(mon_ep), "inproc://curve-mon-%d", k);
    c.s = zmq_socket(ctx, ZMQ_DEALER);
    zmq_setsockopt(c.s, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(gc_curve_set_client(c.s, kp, server_pub), GM_OK);
    assert_int_equal(zmq_socket_monitor(c.s, mon_ep, ZMQ_EVENT_ALL), 0);
    c.mon = zmq_socket(ctx, ZMQ_PAIR);
    assert_int_equal(zmq_connect(c.mon, mon_ep), 0);
    assert_int_equal(zmq_connect(c.s, ep), 0);
    return c;
}

static void close_client(client *c)
{
    zmq_close(c->s);
    zmq_close(c->mon);
}

/* Serve one echo on the ROUTER if something arrives within ms. */
static bool echo_once(void *srv, int ms)
{
    zmq_pollitem_t it = {srv, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) != 1)
        return false;
    char id[256], body[256];
    int n = zmq_recv(srv, id, sizeof(id), 0);
    int m = zmq_recv(srv, body, sizeof(body), 0);
    zmq_send(srv, id, (size_t)n, ZMQ_SNDMORE);
    zmq_send(srv, body, (size_t)m, 0);
    return true;
}

static void test_zap_allows_only_listed_keys(void **state)
{
    void *ctx = zmq_ctx_new();
    gc_keypair server, good, bad, impostor;
    assert_int_equal(gc_curve_generate(&server), GM_OK);
    assert_int_equal(gc_curve_generate(&good), GM_OK);
    assert_int_equal(gc_curve_generate(&bad), GM_OK);
    assert_int_equal(gc_curve_generate(&impostor), GM_OK);
    gc_allowlist *al = gc_allowlist_new();
    assert_int_equal(gc_allowlist_add(al, good.public_z85), GM_OK);
    gc_zap *zap;
    assert_int_equal(gc_zap_start(ctx, al, &zap), GM_OK);
    gc_allowlist_destroy(&al);
    gc_zap *second;
    assert_int_equal(gc_zap_start(ctx, NULL, &second), GM_ERR_ZMQ); /* one handler per context */

    void *srv = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(srv, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(gc_curve_set_server(srv, &server, NULL), GM_OK);
    assert_int_equal(zmq_bind(srv, "tcp://127.0.0.1:*"), 0);
    char ep[128];
    size_t epl = sizeof(ep);
    zmq_getsockopt(srv, ZMQ_LAST_ENDPOINT, ep, &epl);

    /* the allowed key: handshake succeeds, an echo comes back */
    client c = connect_client(ctx, ep, &good, server.public_z85, 1);
    assert_int_equal(handshake_event(c.mon), ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    assert_int_equal(zmq_send(c.s, "ping", 4, 0), 4);
    assert_true(echo_once(srv, 10000));
    zmq_pollitem_t it = {c.s, 0, ZMQ_POLLIN, 0};
    assert_int_equal(zmq_poll(&it, 1, 10000), 1);
    char buf[16];
    assert_int_equal(zmq_recv(c.s, buf, sizeof(buf), 0), 4);
    assert_memory_equal(buf, "ping", 4);
    close_client(&c);

    /* a key not on the list: refused, the server never sees its message */
    c = connect_client(ctx, ep, &bad, server.public_z85, 2);
    assert_int_equal(handshake_event(c.mon), ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    zmq_send(c.s, "ping", 4, ZMQ_DONTWAIT);
    assert_false(echo_once(srv, 300));
    close_client(&c);

    /* the right client key but the wrong server key: the handshake cannot complete */
    c = connect_client(ctx, ep, &good, impostor.public_z85, 3);
    assert_int_not_equal(handshake_event(c.mon), ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    zmq_send(c.s, "ping", 4, ZMQ_DONTWAIT);
    assert_false(echo_once(srv, 300));
    close_client(&c);

    uint64_t allowed, denied;
    gc_zap_counts(zap, &allowed, &denied);
    assert_int_equal(allowed, 1);
    assert_true(denied >= 1);
    zmq_close(srv);
    gc_zap_destroy(&zap);
    assert_null(zap);
    gc_zap_destroy(&zap); /* NULL is fine */
    zmq_ctx_term(ctx);
}

/* A bound CURVE ROUTER in ZAP domain dom; its endpoint goes to ep. */
static void *curve_server(void *ctx, const gc_keypair *kp, const char *dom, char ep[128])
{
    void *srv = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt(srv, ZMQ_LINGER, &zero, sizeof(zero));
    assert_int_equal(gc_curve_set_server(srv, kp, dom), GM_OK);
    assert_int_equal(zmq_bind(srv, "tcp://127.0.0.1:*"), 0);
    size_t epl = 128;
    zmq_getsockopt(srv, ZMQ_LAST_ENDPOINT, ep, &epl);
    return srv;
}

/* The User-Id of the next message on srv (within ms) into user; false when none came. */
static bool recv_user_within(void *srv, char *user, size_t cap, long ms)
{
    zmq_pollitem_t it = {srv, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, ms) != 1)
        return false;
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    zmq_msg_init(&body);
    zmq_msg_recv(&id, srv, 0);
    zmq_msg_recv(&body, srv, 0);
    const char *u = zmq_msg_gets(&body, "User-Id");
    snprintf(user, cap, "%s", u ? u : "");
    zmq_msg_close(&id);
    zmq_msg_close(&body);
    return true;
}

static bool recv_user(void *srv, char *user, size_t cap)
{
    return recv_user_within(srv, user, cap, 10000);
}

/* A refused key: its handshake never succeeds (libzmq reports FAILED_AUTH, or, when the server's ERROR
 * command races the disconnect, only retries), and nothing it sends reaches the server. */
static void assert_refused(client *c, void *srv)
{
    int ev = handshake_event_within(c->mon, 3000);
    assert_true(ev == 0 || ev == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
    zmq_send(c->s, "hi", 2, ZMQ_DONTWAIT);
    char user[64];
    assert_false(recv_user_within(srv, user, sizeof(user), 500));
}

/* One ZAP handler, two domains with their own lists (the router's client and register
 * sockets): a key passes only where it is listed, and the server learns which key spoke. */
static void test_zap_domains(void **state)
{
    void *ctx = zmq_ctx_new();
    gc_keypair server, client_key, replica_key;
    assert_int_equal(gc_curve_generate(&server), GM_OK);
    assert_int_equal(gc_curve_generate(&client_key), GM_OK);
    assert_int_equal(gc_curve_generate(&replica_key), GM_OK);
    gc_allowlist *clients = gc_allowlist_new(), *replicas = gc_allowlist_new();
    assert_int_equal(gc_allowlist_add(clients, client_key.public_z85), GM_OK);
    assert_int_equal(gc_allowlist_add(replicas, replica_key.public_z85), GM_OK);
    gc_zap *zap;
    assert_int_equal(gc_zap_start(ctx, clients, &zap), GM_OK);
    assert_int_equal(gc_zap_set_domain(zap, "reg", replicas), GM_OK);
    assert_int_equal(gc_zap_set_domain(zap, "", replicas), GM_ERR_INVALID_ARG);
    gc_allowlist_destroy(&clients);
    gc_allowlist_destroy(&replicas);
    char ep_main[128], ep_reg[128], user[64];
    void *srv_main = curve_server(ctx, &server, "main", ep_main), *srv_reg = curve_server(ctx, &server, "reg", ep_reg);

    client c = connect_client(ctx, ep_main, &client_key, server.public_z85, 11);
    assert_int_equal(handshake_event(c.mon), ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    zmq_send(c.s, "hi", 2, 0);
    assert_true(recv_user(srv_main, user, sizeof(user)));
    assert_string_equal(user, client_key.public_z85);
    close_client(&c);
    c = connect_client(ctx, ep_reg, &client_key, server.public_z85, 12); /* a client key on "reg" */
    assert_refused(&c, srv_reg);
    close_client(&c);
    c = connect_client(ctx, ep_reg, &replica_key, server.public_z85, 13);
    assert_int_equal(handshake_event(c.mon), ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
    zmq_send(c.s, "hi", 2, 0);
    assert_true(recv_user(srv_reg, user, sizeof(user)));
    assert_string_equal(user, replica_key.public_z85);
    close_client(&c);
    c = connect_client(ctx, ep_main, &replica_key, server.public_z85, 14); /* a replica key on "main" */
    assert_refused(&c, srv_main);
    close_client(&c);

    zmq_close(srv_main);
    zmq_close(srv_reg);
    gc_zap_destroy(&zap);
    zmq_ctx_term(ctx);
}

static void test_client_needs_keys(void **state)
{
    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    gc_keypair pub_only = {0}, kp;
    assert_int_equal(gc_curve_generate(&kp), GM_OK);
    memcpy(pub_only.public_z85, kp.public_z85, sizeof(kp.public_z85));
    assert_int_equal(gc_curve_set_client(s, &pub_only, kp.public_z85), GM_ERR_INVALID_ARG);
    assert_int_equal(gc_curve_set_client(s, &kp, "bogus"), GM_ERR_INVALID_ARG);
    assert_int_equal(gc_curve_set_server(s, &pub_only, NULL), GM_ERR_INVALID_ARG);
    zmq_close(s);
    zmq_ctx_term(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keypair_files),
        cmocka_unit_test(test_bad_key_files),
        cmocka_unit_test(test_allowlist_paths),
        cmocka_unit_test(test_zap_allows_only_listed_keys),
        cmocka_unit_test(test_zap_domains),
        cmocka_unit_test(test_client_needs_keys),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
