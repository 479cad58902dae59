/* test_daemon_faults.c - gemmad survives its workers (issue 14, defects 2 and 4), end to end with
 * bounded waits:
 *   - a worker stopped with SIGSTOP under load (n = 2 requests): the step watchdog fails its requests
 *     with WORKER_FAILED, Health says not serving (answering at once) while the workers restart, new
 *     requests fail fast with UNAVAILABLE, and service resumes, n > 1 with shared blocks included;
 *   - the control socket file deleted, then the worker killed: the restart makes a new directory
 *     and socket and serving resumes, Health answering throughout;
 *   - a worker that hangs at start (a fake --worker-bin): restarts time out and are retried with
 *     Health, Stats and Cancel answered and requests refused at once, until a working worker is back;
 *   - a first start that fails (a worker that exits, or one that never becomes ready) ends gemmad
 *     with a non-zero status; while it starts, Health says not serving;
 *   - the control directory of a gemmad killed with SIGKILL is removed by the next gemmad;
 *   - NaN and Inf (risk "NaN or corrupt weights"): a checkpoint with a NaN weight is refused at load,
 *     naming the tensor; logits that overflow at run time end the request with NONFINITE_LOGITS
 *     instead of token 0; on the null backend (GM_NULL_NAN_SEED) one poisoned request in a batch ends
 *     that way while the others finish, without a worker restart - an n = 2 request with logprobs
 *     whose second choice is poisoned too (every choice of it ends), a clean one beside it finishes.
 * Each gemmad gets TMPDIR = the test's private directory, so its control directories are found
 * there. Timings are printed, never asserted; every wait has a deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libgen.h>
#include <stdint.h>

#include "common/safetensors.h"
#include "tests/test_daemon_util.h"

#define LONG_TOKENS 8000

static int32_t g_prompt[] = {2, 651, 3037, 100, 200};
static char g_worker[1024]; /* the real gemma-worker, beside gemmad */

static pid_t start_gemmad(const char *name, const char *const *extra, char *ep, size_t epcap, bool wait)
{
    char log[64], sock[64];
    snprintf(log, sizeof log, "%s.log", name);
    snprintf(sock, sizeof sock, "%s.sock", name);
    td_endpoint(ep, epcap, sock);
    const char *args[32] = {"--listen", ep, "--backend", "null", "--kv-memory", "1G"};
    int n = 6;
    for (; extra && *extra; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    pid_t pid = td_spawn_gemmad(args, log);
    assert_true(pid > 0);
    if (wait && !td_wait_ready(ep, pid, 60000)) {
        td_dump_log(log);
        fail_msg("gemmad %s did not start", name);
    }
    return pid;
}

/* A --worker-bin script: `body` (sh), then exec the real worker with gemmad's arguments. */
static void write_worker_script(const char *name, const char *body, char *path, size_t cap)
{
    snprintf(path, cap, "%s/%s", td_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s\nexec '%s' \"$@\"\n", body, g_worker);
    fclose(f);
    assert_int_equal(chmod(path, 0700), 0);
}

static void flag_path(const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", td_dir, name);
}

static void touch(const char *path)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fclose(f);
}

static void params_ids(gmc_params *p, int max_tokens)
{
    gmc_params_init(p);
    p->prompt_ids = g_prompt;
    p->n_prompt_ids = 5;
    p->max_tokens = max_tokens;
}

static void assert_serving(gmc_client *c)
{
    gmc_params p;
    params_ids(&p, 4);
    gmc_result r;
    gmc_code rc = gmc_generate(c, &p, 30000, NULL, NULL, &r);
    if (rc != GMC_OK)
        fail_msg("generate: %s: %s", gmc_code_name(rc), r.error_message ? r.error_message : "");
    assert_int_equal(r.n_tokens, 4);
    gmc_result_free(&r);
}

/* Health answers within 2 s (the loop is not blocked); returns serving. */
static bool health_fast(gmc_client *c, double *ms)
{
    gmc_health h;
    double t = td_now_ms();
    gmc_code rc = gmc_health_check(c, 2000, &h);
    if (rc != GMC_OK)
        fail_msg("Health got no answer within 2 s (%s): the loop is blocked", gmc_code_name(rc));
    double dt = td_now_ms() - t;
    if (ms && dt > *ms)
        *ms = dt;
    return h.serving;
}

/* A generate while no worker is up: refused at once with UNAVAILABLE. */
static void assert_unavailable(gmc_client *c)
{
    gmc_params p;
    params_ids(&p, 4);
    gmc_result r;
    double t = td_now_ms();
    gmc_code rc = gmc_generate(c, &p, 2000, NULL, NULL, &r);
    if (rc != GMC_ERR_UNAVAILABLE)
        fail_msg("generate while the workers are down: %s (%s), want UNAVAILABLE", gmc_code_name(rc),
                 r.error_message ? r.error_message : "");
    assert_non_null(r.error_message);
    fprintf(stderr, "  refused in %.1f ms: %s\n", td_now_ms() - t, r.error_message);
    gmc_result_free(&r);
}

/* Submit n long requests of n_choices sequences each and wait until each has streamed a token. */
static void start_long(gmc_client *c, int n, int n_choices, uint64_t *ids)
{
    gmc_params p;
    params_ids(&p, LONG_TOKENS / n_choices);
    p.ignore_eos = true;
    p.n = n_choices;
    p.temperature = 0.5f;
    assert_true(td_submit_started(c, &p, n, ids));
}

/* Two n = 2 requests on a 21-token prompt (its last block shared by both choices until one writes it:
 * block copies in the step plan; the second finds the prompt in the prefix cache): each choice its 6
 * tokens, the two choices different. */
static void assert_serving_shared(gmc_client *c)
{
    int32_t prompt[21];
    for (int i = 0; i < 21; i++)
        prompt[i] = 2 + 37 * i;
    for (int rep = 0; rep < 2; rep++) {
        gmc_params p;
        gmc_params_init(&p);
        p.prompt_ids = prompt;
        p.n_prompt_ids = 21;
        p.max_tokens = 6;
        p.n = 2;
        p.temperature = 0.9f;
        p.seed = 40;
        uint64_t id;
        assert_int_equal(gmc_submit(c, &p, NULL, &id), GMC_OK);
        int32_t got[2][6], n_got[2] = {0, 0};
        for (bool done = false; !done;) {
            gmc_event ev[64];
            int k = gmc_poll(c, ev, 64, 30000);
            assert_true(k > 0);
            for (int i = 0; i < k; i++) {
                if (ev[i].request_id != id)
                    continue;
                assert_true(ev[i].index >= 0 && ev[i].index < 2);
                for (int32_t t = 0; t < ev[i].n_tokens && n_got[ev[i].index] < 6; t++)
                    got[ev[i].index][n_got[ev[i].index]++] = ev[i].tokens[t];
                if (ev[i].finished) {
                    if (ev[i].error != GMC_OK)
                        fail_msg("n = 2: %s: %s", gmc_code_name(ev[i].error), ev[i].error_message);
                    assert_int_equal(ev[i].usage.completion_tokens, 12);
                    done = true;
                }
            }
        }
        assert_int_equal(n_got[0], 6);
        assert_int_equal(n_got[1], 6);
        assert_true(memcmp(got[0], got[1], sizeof got[0]) != 0);
    }
}

/* Wait (at most 30 s) until n requests have ended; each must end with code want. */
static void wait_ended(gmc_client *c, int n, gmc_code want)
{
    for (int ended = 0; ended < n;) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 30000);
        if (k <= 0)
            fail_msg("%d of %d requests ended within 30 s", ended, n);
        for (int i = 0; i < k; i++)
            if (ev[i].finished) {
                if (ev[i].error != want)
                    fail_msg("request ended with %s (%s), want %s", gmc_code_name(ev[i].error),
                             ev[i].error_message ? ev[i].error_message : "", gmc_code_name(want));
                ended++;
            }
    }
}

/* The control directories gemmad has in td_dir now (names into out, at most cap); their count. */
static int control_dirs(char out[][300], int cap)
{
    int n = 0;
    DIR *d = opendir(td_dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)))
        if (!strncmp(e->d_name, "gemmad-", 7) && n < cap)
            snprintf(out[n++], 300, "%s", e->d_name);
    closedir(d);
    return n;
}

/* ---- defect 2: a hung worker ---- */

static void test_watchdog_sigstop(void **state)
{
    (void)state;
    char script[600], started[600];
    flag_path("sigstop-started", started, sizeof started);
    char body[1400];
    snprintf(body, sizeof body, "if [ -e '%s' ]; then sleep 2; fi\ntouch '%s'", started, started);
    write_worker_script("worker-slow-restart.sh", body, script, sizeof script);
    char ep[400];
    const char *extra[] = {"--worker-bin", script, "--step-timeout-ms", "2000", "--step-warmup-ms", "2000", NULL};
    pid_t pid = start_gemmad("sigstop", extra, ep, sizeof ep, true);
    gmc_client *c, *h;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    assert_int_equal(gmc_connect(ep, 10000, &h), GMC_OK);
    uint64_t ids[4];
    start_long(c, 4, 2, ids); /* n = 2 each: choices sharing the prompt's blocks */
    pid_t w = td_worker_pid(pid, 0);
    assert_true(w > 0);
    double t0 = td_now_ms();
    assert_int_equal(kill(w, SIGSTOP), 0);
    wait_ended(c, 4, GMC_ERR_WORKER_FAILED);
    double t_failed = td_now_ms() - t0;
    /* the restart takes 2 s (the script): Health answers at once and says not serving */
    double worst = 0;
    assert_false(health_fast(h, &worst));
    assert_unavailable(c);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(h, 2000, &st), GMC_OK);
    assert_int_equal(st.worker_restarts, 1);
    assert_int_equal(st.requests_failed, 5);
    assert_int_equal(st.running, 0);
    assert_true(td_wait_ready(ep, pid, 30000));
    double t_back = td_now_ms() - t0;
    assert_serving(c);
    assert_serving_shared(c); /* the restarted pool: shared blocks, copies and the prefix cache anew */
    assert_int_not_equal(td_worker_pid(pid, 0), w);
    for (int i = 0; i < 100 && kill(w, 0) == 0; i++) /* the stopped worker was killed and reaped */
        usleep(20000);
    assert_int_equal(kill(w, 0), -1);
    fprintf(stderr, "  SIGSTOP: requests failed after %.0f ms, Health %.1f ms (not serving), serving again after "
                    "%.0f ms\n", t_failed, worst, t_back);
    gmc_close(&c);
    gmc_close(&h);
    assert_int_equal(td_stop(pid), 0);
}

/* ---- defect 4: restarts that never block ---- */

static void test_restart_socket_deleted(void **state)
{
    (void)state;
    char ep[400];
    pid_t pid = start_gemmad("nosock", NULL, ep, sizeof ep, true);
    char before[8][300];
    int n = control_dirs(before, 8);
    assert_int_equal(n, 1);
    char sock[1000];
    snprintf(sock, sizeof sock, "%s/%s/control", td_dir, before[0]);
    assert_int_equal(unlink(sock), 0);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    double t0 = td_now_ms();
    assert_int_equal(kill(td_worker_pid(pid, 0), SIGKILL), 0);
    double worst = 0;
    for (;;) { /* answered throughout; serving again once the new set is up */
        gmc_stats st;
        assert_int_equal(gmc_stats_get(c, 2000, &st), GMC_OK); /* first: a Health after it sees the failure */
        bool serving = health_fast(c, &worst);
        if (serving && st.worker_restarts == 1)
            break;
        if (td_now_ms() - t0 > 30000)
            fail_msg("not serving 30 s after the worker was killed");
        usleep(5000);
    }
    fprintf(stderr, "  socket deleted + worker killed: serving again after %.0f ms, Health at most %.1f ms\n",
            td_now_ms() - t0, worst);
    assert_serving(c);
    char after[8][300];
    assert_int_equal(control_dirs(after, 8), 1);
    assert_string_not_equal(after[0], before[0]); /* a fresh directory; the old one is gone */
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
    assert_int_equal(control_dirs(after, 8), 0); /* and none is left behind */
}

static void test_restart_hangs(void **state)
{
    (void)state;
    char script[600], ok[600];
    flag_path("worker-ok", ok, sizeof ok);
    touch(ok);
    char body[1400];
    snprintf(body, sizeof body, "[ -e '%s' ] || exec sleep 600", ok);
    write_worker_script("worker-hangs.sh", body, script, sizeof script);
    char ep[400];
    const char *extra[] = {"--worker-bin", script, "--ready-timeout-ms", "3000", NULL};
    pid_t pid = start_gemmad("hangs", extra, ep, sizeof ep, true);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    assert_int_equal(unlink(ok), 0); /* from now on a started worker hangs */
    double t0 = td_now_ms();
    assert_int_equal(kill(td_worker_pid(pid, 0), SIGKILL), 0);
    double worst = 0;
    int probes = 0;
    while (health_fast(c, &worst)) /* until gemmad has seen the kill */
        if (td_now_ms() - t0 > 10000)
            fail_msg("still serving 10 s after the worker was killed");
    while (td_now_ms() - t0 < 4500) { /* a restart times out meanwhile, and is retried */
        assert_false(health_fast(c, &worst));
        probes++;
        usleep(100000);
    }
    assert_unavailable(c);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 2000, &st), GMC_OK);
    assert_int_equal(st.worker_restarts, 1);
    assert_int_equal(gmc_cancel(c, 999), GMC_OK); /* an unknown id: answered NOT_FOUND, not ignored */
    touch(ok);                                    /* a working worker again */
    double t1 = td_now_ms();
    assert_true(td_wait_ready(ep, pid, 40000));
    fprintf(stderr, "  hung restarts: %d Health probes over 4.5 s, at most %.1f ms each; serving %.0f ms after a "
                    "working worker was back\n", probes, worst, td_now_ms() - t1);
    assert_serving(c);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

static void test_first_start_fails(void **state)
{
    (void)state;
    char script[600], ep[400];
    write_worker_script("worker-exits.sh", "exit 3", script, sizeof script);
    const char *extra[] = {"--worker-bin", script, NULL};
    pid_t pid = start_gemmad("first-exit", extra, ep, sizeof ep, false);
    int rc = td_wait_exit(pid, 30000);
    assert_true(rc > 0 && rc < 128); /* exited by itself, non-zero */

    write_worker_script("worker-never.sh", "exec sleep 600", script, sizeof script);
    const char *extra2[] = {"--worker-bin", script, "--ready-timeout-ms", "2000", NULL};
    pid = start_gemmad("first-hang", extra2, ep, sizeof ep, false);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_health h;
    assert_int_equal(gmc_health_check(c, 2000, &h), GMC_OK); /* answered while the model "loads" */
    assert_false(h.serving);
    assert_unavailable(c);
    gmc_close(&c);
    rc = td_wait_exit(pid, 30000);
    assert_true(rc > 0 && rc < 128);
}

static void test_stale_dirs(void **state)
{
    (void)state;
    char ep[400];
    pid_t a = start_gemmad("stale-a", NULL, ep, sizeof ep, true);
    char dirs[8][300];
    assert_int_equal(control_dirs(dirs, 8), 1);
    char a_dir[300];
    snprintf(a_dir, sizeof a_dir, "%s", dirs[0]);
    kill(a, SIGKILL);
    assert_int_equal(td_wait_exit(a, 10000), 128 + SIGKILL);
    /* two that must stay: no owner file, and an owner that is alive (this test) */
    char keep1[600], keep2[600], owner[700];
    snprintf(keep1, sizeof keep1, "%s/gemmad-noowner", td_dir);
    snprintf(keep2, sizeof keep2, "%s/gemmad-alive", td_dir);
    assert_int_equal(mkdir(keep1, 0700), 0);
    assert_int_equal(mkdir(keep2, 0700), 0);
    snprintf(owner, sizeof owner, "%s/owner", keep2);
    FILE *f = fopen(owner, "w");
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    pid_t b = start_gemmad("stale-b", NULL, ep, sizeof ep, true);
    int n = control_dirs(dirs, 8);
    bool has_a = false, has_keep1 = false, has_keep2 = false;
    for (int i = 0; i < n; i++) {
        has_a |= !strcmp(dirs[i], a_dir);
        has_keep1 |= !strcmp(dirs[i], "gemmad-noowner");
        has_keep2 |= !strcmp(dirs[i], "gemmad-alive");
    }
    assert_false(has_a);
    assert_true(has_keep1 && has_keep2);
    assert_int_equal(n, 3); /* b's own, and the two kept */
    assert_int_equal(td_stop(b), 0);
    unlink(owner);
    rmdir(keep1);
    rmdir(keep2);
}

/* ---- NaN and Inf ---- */

/* A copy of the tiny model in td_dir/name (its path into dir). */
static void copy_tiny(const char *name, char *dir, size_t cap)
{
    snprintf(dir, cap, "%s/%s", td_dir, name);
    assert_int_equal(mkdir(dir, 0700), 0);
    const char *files[] = {"config.json", "generation_config.json", "tokenizer.model", "model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char from[1200], to[1200];
        snprintf(from, sizeof from, "%s/%s", TINY_MODEL_DIR, files[i]);
        snprintf(to, sizeof to, "%s/%s", dir, files[i]);
        FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
        if (!in) { /* optional files */
            if (out)
                fclose(out), unlink(to);
            continue;
        }
        assert_non_null(out);
        char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, in)) > 0)
            assert_int_equal(fwrite(buf, 1, n, out), n);
        fclose(in);
        fclose(out);
    }
}

/* Overwrite elements [first, first + count) of tensor name in dir's model.safetensors with bits (bf16/f32). */
static void poke_tensor(const char *dir, const char *name, int64_t first, int64_t count, uint32_t bits)
{
    st_model *m = NULL;
    assert_int_equal(st_model_open(dir, &m), GM_OK);
    const st_tensor *t = st_model_find(m, name);
    assert_non_null(t);
    assert_true(t->dtype == GM_DT_BF16 || t->dtype == GM_DT_F32);
    size_t es = t->dtype == GM_DT_BF16 ? 2 : 4;
    if (count < 0)
        count = st_numel(t) - first;
    uint64_t off = t->offset;
    st_model_destroy(&m);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    uint64_t hlen = 0;
    assert_int_equal(fread(&hlen, 8, 1, f), 1);
    uint32_t v = es == 2 ? bits >> 16 : bits; /* bf16: the high half of the f32 pattern */
    assert_int_equal(fseek(f, (long)(8 + hlen + off + (uint64_t)first * es), SEEK_SET), 0);
    for (int64_t i = 0; i < count; i++)
        assert_int_equal(fwrite(&v, es, 1, f), 1);
    fclose(f);
}

static void remove_model(const char *dir)
{
    const char *files[] = {"config.json", "generation_config.json", "tokenizer.model", "model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[1200];
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static bool log_has(const char *log, const char *what)
{
    char p[600], line[2048];
    snprintf(p, sizeof p, "%s/%s", td_dir, log);
    FILE *f = fopen(p, "r");
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, what) != NULL;
    if (f)
        fclose(f);
    return found;
}

static void test_nan_weights_refused(void **state)
{
    (void)state;
    char dir[600], ep[400];
    copy_tiny("nan-weights", dir, sizeof dir);
    poke_tensor(dir, "model.layers.1.mlp.down_proj.weight", 5, 1, 0x7fc00000u);
    const char *log = "nan-weights.log";
    td_endpoint(ep, sizeof ep, "nan-weights.sock");
    const char *argv[] = {"--listen", ep, "--model", dir, "--backend", "cpu", NULL};
    pid_t pid = td_spawn_gemmad(argv, log);
    assert_true(pid > 0);
    int rc = td_wait_exit(pid, 60000);
    assert_true(rc > 0 && rc < 128);
    if (!log_has(log, "model.layers.1.mlp.down_proj.weight") || !log_has(log, "NaN or Inf")) {
        td_dump_log(log);
        fail_msg("the log does not name the tensor with the NaN");
    }
    remove_model(dir);
}

static void test_nan_logits_cpu(void **state)
{
    (void)state;
    char dir[600], ep[400];
    copy_tiny("nan-logits", dir, sizeof dir);
    /* finite weights whose product overflows: the final norm's scale at bf16's largest value */
    poke_tensor(dir, "model.norm.weight", 0, -1, 0x7f7f0000u);
    td_endpoint(ep, sizeof ep, "nan-logits.sock");
    const char *argv[] = {"--listen", ep, "--model", dir, "--backend", "cpu", NULL};
    pid_t pid = td_spawn_gemmad(argv, "nan-logits.log");
    assert_true(pid > 0);
    assert_true(td_wait_ready(ep, pid, 60000));
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    gmc_params p;
    params_ids(&p, 4);
    gmc_result r;
    gmc_code rc = gmc_generate(c, &p, 30000, NULL, NULL, &r);
    if (rc != GMC_ERR_NONFINITE_LOGITS)
        fail_msg("generate: %s (%s), %d tokens; want NONFINITE_LOGITS", gmc_code_name(rc),
                 r.error_message ? r.error_message : "", (int)r.n_tokens);
    assert_int_equal(r.n_tokens, 0); /* never token 0 */
    fprintf(stderr, "  %s\n", r.error_message);
    gmc_result_free(&r);
    gmc_health h;
    assert_int_equal(gmc_health_check(c, 5000, &h), GMC_OK);
    assert_true(h.serving);
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 5000, &st), GMC_OK);
    assert_int_equal(st.worker_restarts, 0);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
    remove_model(dir);
}

static void test_nan_one_of_many(void **state)
{
    (void)state;
    char ep[400];
    setenv("GM_NULL_NAN_SEED", "777", 1); /* passed on to the workers */
    pid_t pid = start_gemmad("nan-null", NULL, ep, sizeof ep, true);
    unsetenv("GM_NULL_NAN_SEED");
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    /* 0..3: one choice each, 2 poisoned; 4: n = 2 with logprobs whose choice 1 samples with seed 777;
     * 5: n = 2 with logprobs, clean */
    enum { NREQ = 6 };
    const uint64_t seed[NREQ] = {100, 101, 777, 103, 776, 500};
    const bool poisoned[NREQ] = {false, false, true, false, true, false};
    uint64_t ids[NREQ];
    for (int i = 0; i < NREQ; i++) {
        gmc_params p;
        params_ids(&p, 200);
        p.temperature = 0.7f;
        p.seed = seed[i];
        if (i >= 4) {
            p.n = 2;
            p.logprobs = true;
            p.top_logprobs = 2;
        }
        assert_int_equal(gmc_submit(c, &p, NULL, &ids[i]), GMC_OK);
    }
    int ended = 0;
    while (ended < NREQ) {
        gmc_event ev[256];
        int k = gmc_poll(c, ev, 256, 30000);
        assert_true(k > 0);
        for (int i = 0; i < k; i++) {
            if (!ev[i].finished)
                continue;
            ended++;
            int j = 0;
            while (j < NREQ && ev[i].request_id != ids[j])
                j++;
            assert_true(j < NREQ);
            if (poisoned[j]) { /* the whole request ends, every choice of it */
                assert_int_equal(ev[i].error, GMC_ERR_NONFINITE_LOGITS);
                assert_true(ev[i].usage.completion_tokens < (j >= 4 ? 400 : 200));
            } else {
                assert_int_equal(ev[i].error, GMC_OK);
                assert_int_equal(ev[i].usage.completion_tokens, j >= 4 ? 400 : 200);
            }
        }
    }
    gmc_stats st;
    assert_int_equal(gmc_stats_get(c, 5000, &st), GMC_OK);
    assert_int_equal(st.worker_restarts, 0);
    assert_int_equal(st.requests_failed, 2);
    assert_int_equal(st.requests_finished, 4);
    gmc_close(&c);
    assert_int_equal(td_stop(pid), 0);
}

static int setup(void **state)
{
    (void)state;
    if (!td_make_dir())
        return -1;
    setenv("TMPDIR", td_dir, 1); /* the gemmads' control directories go here */
    char bin[1024];
    snprintf(bin, sizeof bin, "%s", GEMMAD_BIN);
    snprintf(g_worker, sizeof g_worker, "%s/gemma-worker", dirname(bin));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    td_kill_leftovers();
    char dirs[16][300];
    int n = control_dirs(dirs, 16);
    for (int i = 0; i < n; i++) { /* a failed test's leftovers */
        char p[1000];
        snprintf(p, sizeof p, "%s/%.250s/control", td_dir, dirs[i]);
        unlink(p);
        snprintf(p, sizeof p, "%s/%.250s/owner", td_dir, dirs[i]);
        unlink(p);
        snprintf(p, sizeof p, "%s/%.250s", td_dir, dirs[i]);
        rmdir(p);
    }
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watchdog_sigstop), cmocka_unit_test(test_restart_socket_deleted),
        cmocka_unit_test(test_restart_hangs),    cmocka_unit_test(test_first_start_fails),
        cmocka_unit_test(test_stale_dirs),       cmocka_unit_test(test_nan_weights_refused),
        cmocka_unit_test(test_nan_logits_cpu),   cmocka_unit_test(test_nan_one_of_many),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
