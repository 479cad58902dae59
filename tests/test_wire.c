/* test_wire.c - gemmad wired to cluster/: CurveZMQ on its client socket, registration with
 * gemma-router, launcher templates in its settings (tiny CPU model, ipc:// endpoints):
 *  - curve = true: gemma-cli with the right keys prints what gemma-generate prints; with a
 *    key that is not allowed, or none, it gets nothing and exits non-zero, and gemmad keeps
 *    serving; the library reports the refusal as GMC_ERR_TRANSPORT;
 *  - gemmad --router: gemma-cli through a gemma-router that lists no replica works; SIGTERM
 *    of gemmad unregisters it (the router says so, and answers OVERLOADED at once);
 *  - both: CURVE from client to router to a registered CURVE gemmad;
 *  - --check-config: templates expanded from Open MPI's variables, incomplete CURVE settings
 *    refused with a clear message.
 * Every wait is a bounded poll on an observable condition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "common/curve.h"
#include "tests/test_daemon_util.h"

#define WAIT_MS 60000

/* ---- child processes (own process group: a kill takes gemmad's workers too) ---- */

static pid_t g_groups[16];

static pid_t spawn(const char *const *argv, const char *log)
{
    char logp[600];
    snprintf(logp, sizeof logp, "%s/%s", td_dir, log);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (pid > 0) {
        setpgid(pid, pid);
        for (int i = 0; i < 16; i++)
            if (!g_groups[i]) {
                g_groups[i] = pid;
                break;
            }
    }
    return pid;
}

static void forget(pid_t pid)
{
    for (int i = 0; i < 16; i++)
        if (g_groups[i] == pid)
            g_groups[i] = 0;
}

/* SIGTERM, wait (bounded), return the exit status (-1 when it had to be killed). */
static int stop(pid_t pid)
{
    kill(pid, SIGTERM);
    int st = td_wait_exit(pid, WAIT_MS);
    kill(-pid, SIGKILL); /* leftovers of the group, if any */
    forget(pid);
    return st;
}

static void kill_all(void)
{
    for (int i = 0; i < 16; i++)
        if (g_groups[i] > 0) {
            kill(-g_groups[i], SIGKILL);
            waitpid(g_groups[i], NULL, 0);
            g_groups[i] = 0;
        }
}

static void path_of(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "%s/%s", td_dir, name);
}

/* Whether log (in td_dir) contains s. */
static bool log_has(const char *log, const char *s)
{
    char p[600];
    path_of(p, sizeof p, log);
    FILE *f = fopen(p, "r");
    if (!f)
        return false;
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, s) != NULL;
    fclose(f);
    return found;
}

/* A key pair written to td_dir/NAME.key{,_secret}. */
static void make_keys(const char *name, gc_keypair *kp)
{
    char prefix[600];
    path_of(prefix, sizeof prefix, name);
    assert_int_equal(gc_curve_generate(kp), GM_OK);
    assert_int_equal(gc_curve_write_keypair(kp, prefix, true), GM_OK);
}

/* Connect options for the key files server NAME.key and client NAME.key_secret (NULL: plain). */
static gmc_connect_opts opts_for(const char *server, const char *client, char *sbuf, char *cbuf, int timeout_ms)
{
    gmc_connect_opts o;
    gmc_connect_opts_init(&o);
    o.timeout_ms = timeout_ms;
    if (server) {
        snprintf(sbuf, 600, "%s/%s.key", td_dir, server);
        o.server_key_file = sbuf;
    }
    if (client) {
        snprintf(cbuf, 600, "%s/%s.key_secret", td_dir, client);
        o.client_key_file = cbuf;
    }
    return o;
}

/* Wait until ep answers Health as serving (with these keys); false if pid exited first. */
static bool wait_serving(const char *ep, pid_t pid, const char *server, const char *client)
{
    char sb[600], cb[600];
    gmc_connect_opts o = opts_for(server, client, sb, cb, 500);
    double end = td_now_ms() + WAIT_MS;
    while (td_now_ms() < end) {
        int st;
        if (pid > 0 && waitpid(pid, &st, WNOHANG) == pid) {
            forget(pid);
            return false;
        }
        gmc_client *c = NULL;
        if (gmc_connect_with(ep, &o, &c) == GMC_OK) {
            gmc_health h;
            bool ok = gmc_health_check(c, 2000, &h) == GMC_OK && h.serving;
            gmc_close(&c);
            if (ok)
                return true;
        }
        usleep(50000);
    }
    return false;
}

/* gemma-generate's output for prompt (greedy, 12 tokens). Caller frees. */
static char *expected_for(const char *prompt)
{
    const char *argv[] = {GEMMA_GENERATE_BIN, "--model", TINY_MODEL_DIR, "--prompt", prompt, "--max-tokens", "12",
                          NULL};
    int st;
    size_t len;
    char *out = td_run_capture(argv, &st, &len);
    assert_int_equal(st, 0);
    assert_true(len >= 1);
    return out;
}

/* gemma-cli PROMPT through ep with key files (NULL = flag left out); *st = exit status. */
static char *cli(const char *ep, const char *prompt, const char *server, const char *client, int *st)
{
    char sk[600], ck[600];
    const char *argv[20];
    int n = 0;
    argv[n++] = GEMMA_CLI_BIN;
    argv[n++] = "--endpoint";
    argv[n++] = ep;
    argv[n++] = "--max-tokens";
    argv[n++] = "12";
    argv[n++] = "--timeout";
    argv[n++] = "5000";
    if (server) {
        snprintf(sk, sizeof sk, "%s/%s.key", td_dir, server);
        argv[n++] = "--server-key";
        argv[n++] = sk;
    }
    if (client) {
        snprintf(ck, sizeof ck, "%s/%s.key_secret", td_dir, client);
        argv[n++] = "--client-key";
        argv[n++] = ck;
    }
    argv[n++] = prompt;
    argv[n] = NULL;
    return td_run_capture(argv, st, NULL);
}

static pid_t start_gemmad(const char *const *extra, const char *log)
{
    const char *argv[48];
    int n = 0;
    const char *base[] = {GEMMAD_BIN, "--model", TINY_MODEL_DIR, "--kv-blocks", "256", "--log-level", "info"};
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
        argv[n++] = base[i];
    for (int i = 0; extra[i] && n < 47; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    return spawn(argv, log);
}

/* ---- gemmad with curve = true ---- */

static void test_curve_gemmad(void **state)
{
    (void)state;
    gc_keypair srv, alice, mallory;
    make_keys("srv", &srv);
    make_keys("alice", &alice);
    make_keys("mallory", &mallory);
    /* the allow-list as a config-file list: alice's key file and a file of bare Z85 lines */
    char conf[600], extra[600], ep[600];
    path_of(conf, sizeof conf, "gemmad.conf");
    path_of(extra, sizeof extra, "allowed.txt");
    FILE *f = fopen(extra, "w");
    assert_non_null(f);
    fprintf(f, "# nobody we know\nrq:rM>}U?@Lns47E1%%kR.o@n%%FcmmsL/@{H8]yf7\n");
    fclose(f);
    f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f, "curve = true;\ncurve_secret_key = \"%s/srv.key_secret\";\ncurve_allow = [\"%s/alice.key\", \"%s\"];\n",
            td_dir, td_dir, extra);
    fclose(f);
    td_endpoint(ep, sizeof ep, "gemmad");
    pid_t pid = start_gemmad((const char *[]){"--config", conf, "--listen", ep, NULL}, "gemmad.log");
    if (!wait_serving(ep, pid, "srv", "alice")) {
        td_dump_log("gemmad.log");
        fail_msg("gemmad with curve did not start");
    }
    assert_true(log_has("gemmad.log", "CURVE on"));

    const char *prompts[] = {"Why is the sky blue?", "one two three"};
    for (int i = 0; i < 2; i++) {
        char *want = expected_for(prompts[i]);
        int st;
        char *got = cli(ep, prompts[i], "srv", "alice", &st);
        assert_int_equal(st, 0);
        assert_string_equal(got, want);
        free(got);

        /* a key the server does not allow: nothing on stdout, non-zero exit */
        got = cli(ep, prompts[i], "srv", "mallory", &st);
        assert_int_not_equal(st, 0);
        assert_string_equal(got, "");
        free(got);
        /* no keys at all (a plain client): nothing either */
        got = cli(ep, prompts[i], NULL, NULL, &st);
        assert_int_not_equal(st, 0);
        assert_string_equal(got, "");
        free(got);
        /* the right keys again: gemmad still serves */
        got = cli(ep, prompts[i], "srv", "alice", &st);
        assert_int_equal(st, 0);
        assert_string_equal(got, want);
        free(got);
        free(want);
    }

    /* the library: refusal is a transport error, fast; a half-given key pair is a bad argument */
    char sb[600], cb[600];
    gmc_connect_opts o = opts_for("srv", "mallory", sb, cb, 5000);
    gmc_client *c = NULL;
    assert_int_equal(gmc_connect_with(ep, &o, &c), GMC_ERR_TRANSPORT);
    assert_null(c);
    assert_non_null(strstr(gmc_connect_error(), "refused"));
    o = opts_for("srv", NULL, sb, cb, 5000);
    assert_int_equal(gmc_connect_with(ep, &o, &c), GMC_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(gmc_connect_error(), "client"));
    o = opts_for("srv", "alice", sb, cb, 5000);
    o.server_key_file = NULL;
    o.server_key = srv.public_z85; /* keys as text work too */
    o.client_key_file = NULL;
    o.client_public_key = alice.public_z85;
    o.client_secret_key = alice.secret_z85;
    assert_int_equal(gmc_connect_with(ep, &o, &c), GMC_OK);
    gmc_params p;
    gmc_params_init(&p);
    p.prompt = prompts[0];
    p.max_tokens = 12;
    gmc_result r;
    assert_int_equal(gmc_generate(c, &p, 10000, NULL, NULL, &r), GMC_OK);
    char *want = expected_for(prompts[0]);
    size_t wl = strlen(want);
    assert_true(wl >= 1 && want[wl - 1] == '\n');
    assert_int_equal(r.text_len, wl - 1);
    assert_memory_equal(r.text, want, wl - 1);
    free(want);
    gmc_result_free(&r);
    gmc_close(&c);
#ifdef GEMMA_BENCH_BIN
    /* gemma-bench: the same flags; a refused key is its exit status 3 (cannot reach gemmad) */
    for (int k = 0; k < 2; k++) {
        char sk[600], ckf[600];
        snprintf(sk, sizeof sk, "%s/srv.key", td_dir);
        snprintf(ckf, sizeof ckf, "%s/%s.key_secret", td_dir, k ? "mallory" : "alice");
        const char *argv[] = {GEMMA_BENCH_BIN, "--endpoint", ep, "--server-key", sk, "--client-key", ckf,
                              "--isl", "4", "--osl", "4", "--vocab", "4096", "--num-requests", "4", "--quiet", NULL};
        int st;
        free(td_run_capture(argv, &st, NULL));
        assert_int_equal(st, k ? 3 : 0);
    }
#endif
    assert_int_equal(stop(pid), 0);
}

/* ---- gemmad registering with gemma-router ---- */

static void test_register(void **state)
{
    (void)state;
    char rt_ep[600], reg_ep[600], g_ep[600];
    td_endpoint(rt_ep, sizeof rt_ep, "router");
    td_endpoint(reg_ep, sizeof reg_ep, "register");
    td_endpoint(g_ep, sizeof g_ep, "replica");
    /* dead-ms long: only the Unregister can take the replica out within this test */
    pid_t rt = spawn((const char *[]){ROUTER_BIN, "--listen", rt_ep, "--register", reg_ep, "--dead-ms", "120000",
                                      NULL},
                     "router.log");
    assert_true(rt > 0);
    pid_t g = start_gemmad((const char *[]){"--listen", g_ep, "--router", reg_ep, "--replica-name", "wire-a", NULL},
                           "replica.log");
    assert_true(wait_serving(g_ep, g, NULL, NULL));
    if (!wait_serving(rt_ep, rt, NULL, NULL)) {
        td_dump_log("router.log");
        td_dump_log("replica.log");
        fail_msg("the router never served through the registered replica");
    }
    assert_true(log_has("router.log", "replica wire-a"));

    const char *prompt = "The capital of France is";
    char *want = expected_for(prompt);
    int st;
    char *got = cli(rt_ep, prompt, NULL, NULL, &st);
    assert_int_equal(st, 0);
    assert_string_equal(got, want);
    free(got);
    free(want);

    /* SIGTERM: gemmad unregisters, then exits cleanly */
    assert_int_equal(stop(g), 0);
    double end = td_now_ms() + WAIT_MS;
    while (!log_has("router.log", "wire-a unregistered") && td_now_ms() < end)
        usleep(20000);
    if (!log_has("router.log", "wire-a unregistered (shutdown)")) {
        td_dump_log("router.log");
        fail_msg("the router did not see the Unregister");
    }
    assert_true(log_has("replica.log", "unregistered from gemma-router"));
    /* no replica left: the router says so at once */
    gmc_client *c = NULL;
    assert_int_equal(gmc_connect(rt_ep, 5000, &c), GMC_OK);
    gmc_params p;
    gmc_params_init(&p);
    p.prompt = prompt;
    p.max_tokens = 4;
    gmc_result r;
    gmc_generate(c, &p, 10000, NULL, NULL, &r);
    assert_int_equal(r.error, GMC_ERR_OVERLOADED);
    gmc_result_free(&r);
    gmc_close(&c);
    assert_int_equal(stop(rt), 0);
}

/* ---- both: client -CURVE-> router -CURVE-> registered gemmad ---- */

static void test_curve_router(void **state)
{
    (void)state;
    gc_keypair rk, gk, ck, bk;
    make_keys("rt", &rk);
    make_keys("gd", &gk);
    make_keys("cl", &ck);
    make_keys("bad", &bk);
    char rt_ep[600], reg_ep[600], g_ep[600], p_rsec[600], p_cl[600], p_gd[600], p_gsec[600], p_rt[600];
    td_endpoint(rt_ep, sizeof rt_ep, "crouter");
    td_endpoint(reg_ep, sizeof reg_ep, "cregister");
    td_endpoint(g_ep, sizeof g_ep, "creplica");
    path_of(p_rsec, sizeof p_rsec, "rt.key_secret");
    path_of(p_rt, sizeof p_rt, "rt.key");
    path_of(p_cl, sizeof p_cl, "cl.key");
    path_of(p_gd, sizeof p_gd, "gd.key");
    path_of(p_gsec, sizeof p_gsec, "gd.key_secret");
    /* the router lets in the client and the replica (which registers with its own pair) */
    pid_t rt = spawn((const char *[]){ROUTER_BIN, "--listen", rt_ep, "--register", reg_ep, "--curve",
                                      "--curve-secret-key", p_rsec, "--curve-allow", p_cl, "--replica-allow", p_gd, NULL},
                     "crouter.log");
    /* the replica lets in the router only */
    pid_t g = start_gemmad((const char *[]){"--listen", g_ep, "--router", reg_ep, "--curve", "true",
                                            "--curve-secret-key", p_gsec, "--curve-allow", p_rt, "--curve-router-key",
                                            p_rt, NULL},
                           "creplica.log");
    if (!wait_serving(rt_ep, rt, "rt", "cl")) {
        td_dump_log("crouter.log");
        td_dump_log("creplica.log");
        fail_msg("the CURVE router never served through the registered CURVE replica");
    }
    const char *prompt = "Why is the sky blue?";
    char *want = expected_for(prompt);
    int st;
    char *got = cli(rt_ep, prompt, "rt", "cl", &st);
    assert_int_equal(st, 0);
    assert_string_equal(got, want);
    free(got);
    got = cli(rt_ep, prompt, "rt", "bad", &st); /* not allowed at the router */
    assert_int_not_equal(st, 0);
    assert_string_equal(got, "");
    free(got);
    got = cli(g_ep, prompt, "gd", "cl", &st); /* the client may not skip the router */
    assert_int_not_equal(st, 0);
    assert_string_equal(got, "");
    free(got);
    got = cli(rt_ep, prompt, "rt", "cl", &st);
    assert_int_equal(st, 0);
    assert_string_equal(got, want);
    free(got);
    free(want);
    assert_int_equal(stop(g), 0);
    assert_int_equal(stop(rt), 0);
}

/* ---- settings: launcher templates, incomplete CURVE ---- */

static char *check_config(const char *const *args, int *st)
{
    char cmd[4096];
    int n = snprintf(cmd, sizeof cmd, "%s --backend null --check-config", GEMMAD_BIN);
    for (int i = 0; args[i]; i++)
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " '%s'", args[i]);
    snprintf(cmd + n, sizeof cmd - (size_t)n, " 2>&1");
    const char *sh[] = {"/bin/sh", "-c", cmd, NULL};
    return td_run_capture(sh, st, NULL);
}

static void test_settings(void **state)
{
    (void)state;
    const char *vars[][2] = {{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                             {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}};
    for (int i = 0; i < 4; i++)
        setenv(vars[i][0], vars[i][1], 1);
    int st;
    char *out = check_config((const char *[]){"--listen", "tcp://127.0.0.1:{5555+local_rank}", "--device",
                                              "{local_rank}", "--replica-name", "gemma-{rank}", "--router",
                                              "tcp://127.0.0.1:5551", NULL},
                             &st);
    for (int i = 0; i < 4; i++)
        unsetenv(vars[i][0]);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "listen = \"tcp://127.0.0.1:5556\";"));
    assert_non_null(strstr(out, "device = 1;"));
    assert_non_null(strstr(out, "replica_name = \"gemma-3\";"));
    assert_non_null(strstr(out, "router = \"tcp://127.0.0.1:5551\";"));
    free(out);

    /* the default still binds loopback */
    out = check_config((const char *[]){NULL}, &st);
    assert_int_equal(st, 0);
    assert_non_null(strstr(out, "listen = \"tcp://127.0.0.1:"));
    free(out);

    /* incomplete CURVE settings and bad templates are refused, naming what is missing */
    struct {
        const char *args[12];
        const char *msg;
    } bad[] = {
        {{"--curve", "true", NULL}, "curve_secret_key"},
        {{"--curve", "true", "--curve-secret-key", "x.key_secret", NULL}, "curve_allow"},
        {{"--curve", "true", "--curve-secret-key", "x", "--curve-allow", "y", "--router", "tcp://h:1", NULL},
         "curve_router_key"},
        {{"--curve", "maybe", NULL}, "true or false"},
        {{"--listen", "tcp://127.0.0.1:{5555+nosuch}", NULL}, "listen"},
        {{"--device", "{rank}x", NULL}, "device"},
        {{"--router", "http://x", NULL}, "router"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        out = check_config(bad[i].args, &st);
        if (st == 0 || !strstr(out, bad[i].msg))
            fail_msg("case %zu: status %d, output '%s'", i, st, out);
        free(out);
    }

    /* a key file that does not exist: gemmad names it and exits non-zero */
    char ep[600];
    td_endpoint(ep, sizeof ep, "nokey");
    pid_t pid = start_gemmad((const char *[]){"--listen", ep, "--curve", "true", "--curve-secret-key",
                                              "/nonexistent/k.key_secret", "--curve-allow", "/nonexistent/a.key", NULL},
                             "nokey.log");
    assert_int_not_equal(td_wait_exit(pid, WAIT_MS), 0);
    forget(pid);
    assert_true(log_has("nokey.log", "/nonexistent/k.key_secret"));
}

static int setup(void **state)
{
    (void)state;
    if (!td_have_tiny()) {
        fprintf(stderr, "no tiny model at %s\n", TINY_MODEL_DIR);
        return -1;
    }
    return td_make_dir() ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    kill_all();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curve_gemmad, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register, setup, teardown),
        cmocka_unit_test_setup_teardown(test_curve_router, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
