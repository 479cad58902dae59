/* test_router_e2e.c - gemma-router in front of real gemmad replicas (child processes, ipc://):
 *  - tiny CPU model, 3 replicas: what clients get through the router equals gemma-generate;
 *  - null backend, 3 replicas, kill -9 one under load: requests it was streaming end with
 *    WORKER_FAILED, every other request finishes with the exact output, the router keeps
 *    serving, and the replica is used again once restarted;
 *  - a frozen replica (SIGSTOP) is taken out by silence and used again after SIGCONT.
 * Every wait is a bounded poll on an observable condition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "client/gemma_client.h"
#include "test_daemon_util.h"

#define WAIT_MS 60000
#define N_REP 3

static char g_dir[256];

/* ---- child processes: each in its own process group, so kill -9 takes its workers too ---- */

typedef struct proc {
    pid_t pid;
    char log[300];
} proc;

static pid_t g_groups[16];

static pid_t spawn(const char *const *argv, const char *log, proc *p)
{
    snprintf(p->log, sizeof(p->log), "%s/%s", g_dir, log);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    setpgid(pid, pid); /* also here: no race with the kill below */
    p->pid = pid;
    for (int i = 0; i < 16; i++)
        if (!g_groups[i]) {
            g_groups[i] = pid;
            break;
        }
    return pid;
}

static void kill_group(proc *p, int sig)
{
    if (p->pid > 0)
        kill(-p->pid, sig);
}

/* SIGKILL the group and reap the leader. */
static void reap(proc *p)
{
    if (p->pid <= 0)
        return;
    kill(-p->pid, SIGKILL);
    waitpid(p->pid, NULL, 0);
    for (int i = 0; i < 16; i++)
        if (g_groups[i] == p->pid)
            g_groups[i] = 0;
    p->pid = 0;
}

static void dump_log(const proc *p)
{
    FILE *f = fopen(p->log, "r");
    char line[1024];
    if (!f)
        return;
    fprintf(stderr, "---- %s ----\n", p->log);
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fclose(f);
}

static void endpoint(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "ipc://%s/%s", g_dir, name);
}

/* Wait until ep answers Health as serving (bounded); false if p exited. */
static bool wait_serving(const char *ep, proc *p)
{
    double end = gm_now_ms() + WAIT_MS;
    while (gm_now_ms() < end) {
        int st;
        if (p && waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            return false;
        }
        gmc_client *c = NULL;
        if (gmc_connect(ep, 500, &c) == GMC_OK) {
            gmc_health h;
            bool ok = gmc_health_check(c, 2000, &h) == GMC_OK && h.serving;
            gmc_close(&c);
            if (ok)
                return true;
        }
        usleep(20000);
    }
    return false;
}

static gmc_stats stats_of(const char *ep)
{
    gmc_client *c;
    gmc_stats s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    assert_int_equal(gmc_stats_get(c, 10000, &s), GMC_OK);
    gmc_close(&c);
    return s;
}

typedef struct cluster {
    proc rep[N_REP], router;
    char rep_ep[N_REP][300], router_ep[300];
    const char *backend;
    int64_t kv_one; /* one replica's KV blocks */
} cluster;

static void start_replica(cluster *k, int i, int max_seqs)
{
    char log[32], seqs[16];
    snprintf(log, sizeof(log), "gemmad%d.log", i);
    snprintf(seqs, sizeof(seqs), "%d", max_seqs);
    bool null = !strcmp(k->backend, "null");
    /* null: the default KV pool (sized for gemma-2b) would hold only ~3600 tokens */
    const char *argv[] = {GEMMAD_BIN, "--backend", k->backend, "--listen", k->rep_ep[i], "--max-seqs", seqs,
                          "--log-level", "warn", "--kv-blocks", null ? "2048" : "256",
                          null ? NULL : "--model", TINY_MODEL_DIR, NULL};
    spawn(argv, log, &k->rep[i]);
}

static void start_cluster(cluster *k, const char *backend, int max_seqs, const char *const *router_extra)
{
    memset(k, 0, sizeof(*k));
    k->backend = backend;
    for (int i = 0; i < N_REP; i++) {
        char name[16];
        snprintf(name, sizeof(name), "r%d", i);
        endpoint(k->rep_ep[i], sizeof(k->rep_ep[i]), name);
        start_replica(k, i, max_seqs);
    }
    endpoint(k->router_ep, sizeof(k->router_ep), "router");
    const char *argv[40];
    int n = 0;
    argv[n++] = ROUTER_BIN;
    argv[n++] = "--listen";
    argv[n++] = k->router_ep;
    for (int i = 0; i < N_REP; i++) {
        argv[n++] = "--replica";
        argv[n++] = k->rep_ep[i];
    }
    for (int i = 0; router_extra && router_extra[i] && n < 38; i++)
        argv[n++] = router_extra[i];
    argv[n] = NULL;
    spawn(argv, "router.log", &k->router);
    for (int i = 0; i < N_REP; i++)
        if (!wait_serving(k->rep_ep[i], &k->rep[i])) {
            dump_log(&k->rep[i]);
            fail_msg("replica %d did not start", i);
        }
    k->kv_one = stats_of(k->rep_ep[0]).kv_blocks_total;
    /* the router has seen every replica: its summed KV pool is complete */
    double end = gm_now_ms() + WAIT_MS;
    assert_true(wait_serving(k->router_ep, &k->router));
    while (stats_of(k->router_ep).kv_blocks_total != N_REP * k->kv_one && gm_now_ms() < end)
        usleep(20000);
    assert_int_equal(stats_of(k->router_ep).kv_blocks_total, N_REP * k->kv_one);
}

static void stop_cluster(cluster *k)
{
    kill_group(&k->router, SIGTERM);
    int st;
    double end = gm_now_ms() + 15000;
    while (waitpid(k->router.pid, &st, WNOHANG) == 0 && gm_now_ms() < end)
        usleep(10000);
    reap(&k->router);
    for (int i = 0; i < N_REP; i++)
        reap(&k->rep[i]);
}

/* ---- runs of many requests over one connection ---- */

typedef struct job {
    int32_t prompt[4];
    int32_t max_tokens;
    const char *text_prompt;
    int32_t *toks;
    int n, cap;
    char *text;
    size_t text_len;
    bool done;
    gmc_finish fr;
    gmc_code err;
} job;

static void job_reset(job *j)
{
    free(j->toks);
    free(j->text);
    j->toks = NULL;
    j->text = NULL;
    j->n = j->cap = 0;
    j->text_len = 0;
    j->done = false;
}

static void on_event(const gmc_event *ev)
{
    job *j = ev->user;
    if (j->n + ev->n_tokens > j->cap) {
        j->cap = (j->n + ev->n_tokens) * 2 + 16;
        j->toks = realloc(j->toks, (size_t)j->cap * sizeof(int32_t));
    }
    if (ev->n_tokens)
        memcpy(j->toks + j->n, ev->tokens, (size_t)ev->n_tokens * sizeof(int32_t));
    j->n += ev->n_tokens;
    j->text = realloc(j->text, j->text_len + ev->text_len + 1);
    if (ev->text_len)
        memcpy(j->text + j->text_len, ev->text, ev->text_len);
    j->text_len += ev->text_len;
    j->text[j->text_len] = 0;
    if (ev->finished) {
        j->done = true;
        j->fr = ev->finish_reason;
        j->err = ev->error;
    }
}

static void submit_job(gmc_client *c, job *j)
{
    job_reset(j);
    gmc_params p;
    gmc_params_init(&p);
    if (j->text_prompt) {
        p.prompt = j->text_prompt;
    } else {
        p.prompt_ids = j->prompt;
        p.n_prompt_ids = 4;
        p.ignore_eos = true;
        p.seed = (uint64_t)j->prompt[1];
    }
    p.max_tokens = j->max_tokens;
    assert_int_equal(gmc_submit(c, &p, j, NULL), GMC_OK);
}

static int count_started(job *js, int n)
{
    int s = 0;
    for (int i = 0; i < n; i++)
        s += js[i].n > 0;
    return s;
}

static void pump(gmc_client *c, int timeout_ms)
{
    gmc_event ev[256];
    int n = gmc_poll(c, ev, 256, timeout_ms);
    assert_true(n >= 0);
    for (int i = 0; i < n; i++)
        on_event(&ev[i]);
}

static void wait_all(gmc_client *c, job *js, int n)
{
    double end = gm_now_ms() + WAIT_MS;
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += js[i].done;
        if (done == n)
            return;
        if (gm_now_ms() > end)
            fail_msg("%d of %d requests finished in %d ms", done, n, WAIT_MS);
        pump(c, 50);
    }
}

/* ---- tests ---- */

static int setup(void **state)
{
    snprintf(g_dir, sizeof(g_dir), "/tmp/gm-router-e2e-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state)
{
    for (int i = 0; i < 16; i++)
        if (g_groups[i] > 0) {
            kill(-g_groups[i], SIGKILL);
            waitpid(g_groups[i], NULL, 0);
        }
    if (getenv("GM_KEEP_LOGS")) {
        fprintf(stderr, "logs kept in %s\n", g_dir);
        return 0;
    }
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        char p[600];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(p, sizeof(p), "%s/%s", g_dir, e->d_name);
                unlink(p);
            }
        closedir(d);
    }
    rmdir(g_dir);
    return 0;
}

/* Run argv, return its stdout (malloc'd); the program must exit 0. */
static char *run_capture(const char *const *argv)
{
    int status = -1;
    char *out = td_run_capture(argv, &status, NULL);
    assert_non_null(out);
    assert_int_equal(status, 0);
    return out;
}

/* Through the router, the tiny model gives exactly gemma-generate's output: gemma-cli
 * byte for byte, and 12 concurrent streams over one connection spread on 3 replicas. */
static void test_tiny_equals_generate(void **state)
{
    char cfg[600];
    snprintf(cfg, sizeof(cfg), "%s/config.json", TINY_MODEL_DIR);
    if (access(cfg, R_OK) != 0) {
        fprintf(stderr, "no tiny model at %s (run the make_tiny_model test first)\n", TINY_MODEL_DIR);
        skip();
    }
    cluster k;
    start_cluster(&k, "cpu", 8, NULL);
    static const char *prompts[] = {"hello world", "the quick brown fox", "one two three", "a", "gemma router",
                                    "zeromq", "tensor parallel", "x y z", "lorem ipsum dolor", "replica",
                                    "failover", "the end"};
    enum { NP = 12 };
    char *expect[NP];
    for (int i = 0; i < NP; i++) {
        char mt[8];
        snprintf(mt, sizeof(mt), "%d", 8 + i);
        const char *gen[] = {GEMMA_GENERATE_BIN, "--model", TINY_MODEL_DIR, "--prompt", prompts[i],
                             "--max-tokens", mt, NULL};
        expect[i] = run_capture(gen);
    }
    /* gemma-cli, unchanged, against the router */
    for (int i = 0; i < 3; i++) {
        char mt[8];
        snprintf(mt, sizeof(mt), "%d", 8 + i);
        const char *cli[] = {GEMMA_CLI_BIN, "--endpoint", k.router_ep, "--max-tokens", mt, prompts[i], NULL};
        char *got = run_capture(cli);
        assert_string_equal(got, expect[i]);
        free(got);
    }
    /* many streams at once */
    gmc_client *c;
    assert_int_equal(gmc_connect(k.router_ep, 10000, &c), GMC_OK);
    job js[NP];
    memset(js, 0, sizeof(js));
    for (int i = 0; i < NP; i++) {
        js[i].text_prompt = prompts[i];
        js[i].max_tokens = 8 + i;
        submit_job(c, &js[i]);
    }
    wait_all(c, js, NP);
    int spread = 0;
    for (int i = 0; i < N_REP; i++)
        spread += stats_of(k.rep_ep[i]).requests_total > 1;
    for (int i = 0; i < NP; i++) {
        assert_int_equal(js[i].err, GMC_OK);
        size_t el = strlen(expect[i]);
        assert_true(el >= 1 && expect[i][el - 1] == '\n');
        if (js[i].text_len != el - 1 || memcmp(js[i].text, expect[i], el - 1) != 0)
            fail_msg("prompt '%s': router '%s' vs gemma-generate '%s'", prompts[i], js[i].text, expect[i]);
        free(expect[i]);
        job_reset(&js[i]);
    }
    assert_true(spread >= 2); /* the work went to more than one replica */
    gmc_close(&c);
    stop_cluster(&k);
}

/* kill -9 one replica while every replica streams (and queues) requests. */
static void test_kill_under_load(void **state)
{
    enum { NJ = 48, MAXSEQ = 4, NTOK = 1500 };
    cluster k;
    const char *extra[] = {"--max-in-flight", "32", NULL};
    start_cluster(&k, "null", MAXSEQ, extra);
    gmc_client *c;
    assert_int_equal(gmc_connect(k.router_ep, 10000, &c), GMC_OK);
    static job js[NJ];
    for (int i = 0; i < NJ; i++) {
        js[i].prompt[0] = 2;
        js[i].prompt[1] = 100 + i;
        js[i].prompt[2] = 7;
        js[i].prompt[3] = 9;
        js[i].max_tokens = NTOK;
        submit_job(c, &js[i]);
    }
    /* every replica is streaming its first MAXSEQ and holding the rest in its queue */
    double end = gm_now_ms() + WAIT_MS;
    while (count_started(js, NJ) < N_REP * MAXSEQ && gm_now_ms() < end)
        pump(c, 5);
    assert_true(count_started(js, NJ) >= N_REP * MAXSEQ);
    gmc_stats s0 = stats_of(k.rep_ep[0]);
    assert_true(s0.running > 0);
    kill_group(&k.rep[0], SIGKILL);
    wait_all(c, js, NJ);

    /* reference outputs: the same requests straight to a surviving replica */
    gmc_client *d;
    assert_int_equal(gmc_connect(k.rep_ep[1], 10000, &d), GMC_OK);
    int failed = 0, ok = 0;
    for (int i = 0; i < NJ; i++) {
        if (js[i].err != GMC_OK) {
            assert_int_equal(js[i].err, GMC_ERR_WORKER_FAILED);
            assert_int_equal(js[i].fr, GMC_FINISH_ERROR);
            assert_true(js[i].n > 0); /* only requests that were streaming may fail */
            failed++;
            continue;
        }
        ok++;
        job ref;
        memset(&ref, 0, sizeof(ref));
        memcpy(ref.prompt, js[i].prompt, sizeof(ref.prompt));
        ref.max_tokens = NTOK;
        submit_job(d, &ref);
        wait_all(d, &ref, 1);
        assert_int_equal(ref.err, GMC_OK);
        assert_int_equal(js[i].n, NTOK);
        assert_memory_equal(js[i].toks, ref.toks, NTOK * sizeof(int32_t));
        job_reset(&ref);
    }
    gmc_close(&d);
    fprintf(stderr, "kill -9 under load: %d ok, %d WORKER_FAILED (the replica ran %d, queued %d)\n", ok, failed,
            s0.running, s0.waiting);
    assert_true(failed >= 1);
    assert_true(failed <= MAXSEQ); /* at most what it was running at once */

    /* the router keeps serving on the others */
    gmc_health h;
    assert_int_equal(gmc_health_check(c, 10000, &h), GMC_OK);
    assert_true(h.serving);
    job more[6];
    memset(more, 0, sizeof(more));
    for (int i = 0; i < 6; i++) {
        more[i].prompt[0] = 2;
        more[i].prompt[1] = 500 + i;
        more[i].max_tokens = 16;
        submit_job(c, &more[i]);
    }
    wait_all(c, more, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(more[i].err, GMC_OK);
        assert_int_equal(more[i].n, 16);
    }

    /* restarted, the replica is used again */
    reap(&k.rep[0]);
    start_replica(&k, 0, MAXSEQ);
    assert_true(wait_serving(k.rep_ep[0], &k.rep[0]));
    end = gm_now_ms() + WAIT_MS;
    while (stats_of(k.router_ep).kv_blocks_total != N_REP * k.kv_one && gm_now_ms() < end)
        usleep(20000);
    assert_int_equal(stats_of(k.router_ep).kv_blocks_total, N_REP * k.kv_one);
    for (int i = 0; i < 6; i++)
        submit_job(c, &more[i]);
    wait_all(c, more, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(more[i].err, GMC_OK);
    assert_true(stats_of(k.rep_ep[0]).requests_total >= 1);
    for (int i = 0; i < 6; i++)
        job_reset(&more[i]);
    for (int i = 0; i < NJ; i++)
        job_reset(&js[i]);
    gmc_close(&c);
    stop_cluster(&k);
}

/* A replica that stops answering (SIGSTOP) is taken out after --dead-ms; its streams end
 * with WORKER_FAILED, the rest finish; after SIGCONT it serves again. */
static void test_frozen_replica(void **state)
{
    enum { NJ = 12, MAXSEQ = 4, NTOK = 4000 };
    cluster k;
    const char *extra[] = {"--heartbeat-ms", "100", "--dead-ms", "1000", "--max-in-flight", "4", NULL};
    start_cluster(&k, "null", MAXSEQ, extra);
    gmc_client *c;
    assert_int_equal(gmc_connect(k.router_ep, 10000, &c), GMC_OK);
    static job js[NJ];
    for (int i = 0; i < NJ; i++) {
        js[i].prompt[0] = 2;
        js[i].prompt[1] = 300 + i;
        js[i].max_tokens = NTOK;
        submit_job(c, &js[i]);
    }
    double end = gm_now_ms() + WAIT_MS;
    while (count_started(js, NJ) < NJ && gm_now_ms() < end)
        pump(c, 5);
    assert_int_equal(count_started(js, NJ), NJ); /* 4 per replica, all streaming */
    kill_group(&k.rep[1], SIGSTOP);
    wait_all(c, js, NJ);
    int failed = 0;
    for (int i = 0; i < NJ; i++) {
        if (js[i].err == GMC_OK) {
            assert_int_equal(js[i].n, NTOK);
        } else {
            assert_int_equal(js[i].err, GMC_ERR_WORKER_FAILED);
            failed++;
        }
    }
    assert_true(failed >= 1 && failed <= MAXSEQ);
    kill_group(&k.rep[1], SIGCONT);
    end = gm_now_ms() + WAIT_MS;
    while (stats_of(k.router_ep).kv_blocks_total != N_REP * k.kv_one && gm_now_ms() < end)
        usleep(20000);
    assert_int_equal(stats_of(k.router_ep).kv_blocks_total, N_REP * k.kv_one);
    for (int i = 0; i < NJ; i++)
        job_reset(&js[i]);
    gmc_close(&c);
    stop_cluster(&k);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_equals_generate),
        cmocka_unit_test(test_kill_under_load),
        cmocka_unit_test(test_frozen_replica),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
