/* test_workers.c - the worker pool (daemon/workers.c) with real gemma-worker processes:
 * tokens equal an in-process engine at tp=1 and tp=2, with one step in flight and with
 * two (run-ahead: decodes feed -1, the slot's previous sample), with block tables that
 * grow (sent as deltas) and slots that change hands (reset); the null backend; kill -9
 * (also with two steps in flight) and restart; bad plans answered with errors; a bad
 * model directory reported; nothing leaked; every rank receives exactly the spec
 * sent (each field away from its default) and the cpu/null default sizes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/log.h"
#include "common/status.h"
#include "daemon/workers.h"
#include "worker/engine.h"

static char g_model[1024], g_bin[1024];

#define N_SEQS 2
#define N_DECODE 4
#define BLOCK 4
#define MAX_BLOCKS 8

/* The steps of the comparison: two sequences, a prefill then decodes fed with the sampled tokens. */
typedef struct script {
    int32_t prompt[N_SEQS][7];
    int32_t n_prompt[N_SEQS];
    int32_t table[N_SEQS][MAX_BLOCKS];
    gm_sampling sampling[N_SEQS];
} script;

static void script_init(script *s)
{
    memset(s, 0, sizeof *s);
    int32_t p0[] = {2, 17, 33, 5, 9, 41, 12};
    int32_t p1[] = {2, 8, 20, 7};
    memcpy(s->prompt[0], p0, sizeof p0);
    memcpy(s->prompt[1], p1, sizeof p1);
    s->n_prompt[0] = 7;
    s->n_prompt[1] = 4;
    for (int b = 0; b < MAX_BLOCKS; b++) {
        s->table[0][b] = 2 * b + 1; /* interleaved, out of order blocks */
        s->table[1][b] = 2 * b;
    }
    s->sampling[0] = GM_SAMPLING_GREEDY;
    s->sampling[1] = (gm_sampling){0.9f, 20, 0.95f, 1234};
}

static int g_swap_slots; /* run the script with the two sequences' slots exchanged */

/* Step k of the script (0 = prefill); last[] = tokens sampled by the previous
 * step, or NULL: feed -1 (the slot's previous sample, run-ahead). Each table
 * holds just the blocks the step needs, so it grows during decode. */
static void script_step(const script *s, int k, const int32_t *last, gm_seq_step *out, int32_t *tok_store)
{
    for (int i = 0; i < N_SEQS; i++) {
        gm_seq_step *q = &out[i];
        memset(q, 0, sizeof *q);
        q->slot = (i == 0) != (g_swap_slots != 0) ? 3 : 0;
        if (k == 0) {
            q->tokens = s->prompt[i];
            q->n_tokens = s->n_prompt[i];
            q->start_pos = 0;
        } else {
            tok_store[i] = last ? last[i] : -1;
            q->tokens = &tok_store[i];
            q->n_tokens = 1;
            q->start_pos = s->n_prompt[i] + k - 1;
        }
        q->block_table = s->table[i];
        q->n_blocks = (q->start_pos + q->n_tokens + BLOCK - 1) / BLOCK;
        q->logits_mode = GM_LOGITS_LAST;
        q->sampling = s->sampling[i];
    }
}

static void make_spec(gm_worker_spec *s, gm_backend b, int tp)
{
    ctl_spec_init(s);
    s->backend = b;
    assert_int_equal(ctl_spec_set_model(s, g_model), GM_OK);
    s->tp_size = tp;
    s->kv_block_size = BLOCK;
    s->kv_num_blocks = 2 * MAX_BLOCKS;
    s->max_seqs = 4;
    s->max_tokens = 64;
}

/* Reference: the same script through an in-process engine. */
static void run_reference(int32_t ref[N_DECODE + 1][N_SEQS])
{
    gm_worker_spec sp;
    make_spec(&sp, GM_BACKEND_CPU, 1);
    gm_engine_opts o;
    gm_engine_opts_init(&o);
    gm_engine_opts_set_spec(&o, &sp);
    gm_engine *e = NULL;
    gm_status st = gm_engine_create(&o, &e);
    if (st != GM_OK)
        fail_msg("engine: %s", gm_last_error());
    script s;
    script_init(&s);
    int32_t last[N_SEQS] = {0}, store[N_SEQS];
    for (int k = 0; k <= N_DECODE; k++) {
        gm_seq_step q[N_SEQS];
        script_step(&s, k, last, q, store);
        gm_step_out out = {ref[k], NULL, 0};
        assert_int_equal(gm_engine_step(e, q, N_SEQS, &out), GM_OK);
        memcpy(last, ref[k], sizeof last);
    }
    gm_engine_destroy(&e);
}

/* Wait for the in-flight step's result (poll the socket). */
static gm_status pool_wait(wk_pool *p, int32_t *tokens, int32_t n)
{
    for (int tries = 0; tries < 600; tries++) {
        zmq_pollitem_t it = {wk_pool_socket(p), 0, ZMQ_POLLIN, 0};
        zmq_poll(&it, 1, 100);
        bool done = false;
        gm_status st = wk_pool_collect(p, tokens, n, &done);
        if (st != GM_OK || done)
            return st;
        if (!wk_pool_alive(p))
            return gm_fail(GM_ERR_INTERNAL, "a worker died");
    }
    return gm_fail(GM_ERR_INTERNAL, "no result after 60 s");
}

static void run_pool_script(wk_pool *p, int32_t got[N_DECODE + 1][N_SEQS])
{
    script s;
    script_init(&s);
    int32_t last[N_SEQS] = {0}, store[N_SEQS];
    for (int k = 0; k <= N_DECODE; k++) {
        gm_seq_step q[N_SEQS];
        script_step(&s, k, last, q, store);
        assert_int_equal(wk_pool_submit(p, q, N_SEQS, NULL, 0), GM_OK);
        assert_true(wk_pool_busy(p));
        memset(store, 0x7f, sizeof store); /* the plan was copied: scribbling on it changes nothing */
        gm_status st = pool_wait(p, got[k], N_SEQS);
        if (st != GM_OK)
            fail_msg("step %d: %s", k, gm_last_error());
        assert_false(wk_pool_busy(p));
        memcpy(last, got[k], sizeof last);
    }
}

/* The script with two steps in flight: step k+1 goes out before step k's
 * tokens are back, its decodes feeding -1. */
static void run_pool_script_ahead(wk_pool *p, int32_t got[N_DECODE + 1][N_SEQS])
{
    script s;
    script_init(&s);
    int32_t store[N_DECODE + 1][N_SEQS];
    gm_seq_step q[N_SEQS];
    for (int k = 0; k <= N_DECODE; k++) {
        script_step(&s, k, NULL, q, store[k]);
        assert_int_equal(wk_pool_submit(p, q, N_SEQS, NULL, 0), GM_OK);
        memset(store[k], 0x7f, sizeof store[k]); /* copied: scribbling changes nothing */
        if (k == 0)
            continue;
        assert_int_equal(wk_pool_inflight(p), 2);
        assert_int_not_equal(wk_pool_submit(p, q, N_SEQS, NULL, 0), GM_OK); /* a third is refused, nothing sent */
        gm_status st = pool_wait(p, got[k - 1], N_SEQS);
        if (st != GM_OK)
            fail_msg("step %d: %s", k - 1, gm_last_error());
        assert_int_equal(wk_pool_inflight(p), 1);
    }
    gm_status st = pool_wait(p, got[N_DECODE], N_SEQS);
    if (st != GM_OK)
        fail_msg("step %d: %s", N_DECODE, gm_last_error());
    assert_false(wk_pool_busy(p));
}

static void pool_opts(wk_pool_opts *o, gm_backend b, int tp)
{
    memset(o, 0, sizeof *o);
    o->worker_bin = g_bin;
    make_spec(&o->spec, b, tp);
    o->log_level = GM_LOG_WARN;
    o->ready_timeout_ms = 60000;
}

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += de->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static int count_prefix(const char *dir, const char *prefix)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d)))
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    if (d)
        closedir(d);
    return n;
}

static char g_shm_prefix[64];
static char g_tmpdir[64]; /* TMPDIR of the pools here: other tests' gemmad dirs do not count */

/* Children of this process that are still running (not zombies). */
static int child_pids(pid_t *out, int cap)
{
    int n = 0;
    DIR *d = opendir("/proc");
    struct dirent *de;
    while (d && (de = readdir(d))) {
        int pid = atoi(de->d_name);
        if (pid <= 0)
            continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%d/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = 0;
        char *rp = strrchr(buf, ')');
        char state;
        int ppid;
        if (rp && sscanf(rp + 2, "%c %d", &state, &ppid) == 2 && ppid == getpid() && state != 'Z' && n < cap)
            out[n++] = pid;
    }
    if (d)
        closedir(d);
    return n;
}

static void expect_same(int32_t ref[N_DECODE + 1][N_SEQS], int32_t got[N_DECODE + 1][N_SEQS], int tp,
                        const char *what)
{
    for (int k = 0; k <= N_DECODE; k++)
        for (int i = 0; i < N_SEQS; i++)
            if (ref[k][i] != got[k][i])
                fail_msg("tp=%d %s: step %d seq %d: pool %d, engine %d", tp, what, k, i, got[k][i], ref[k][i]);
}

/* The script one step at a time, then with two in flight, then again with the
 * slots exchanged (every slot resets to another sequence's table): always the
 * in-process engine's tokens. */
static void compare_with_reference(int tp)
{
    int32_t ref[N_DECODE + 1][N_SEQS], got[N_DECODE + 1][N_SEQS];
    run_reference(ref);
    wk_pool_opts o;
    pool_opts(&o, GM_BACKEND_CPU, tp);
    wk_pool *p = NULL;
    if (wk_pool_start(&o, &p) != GM_OK)
        fail_msg("start tp=%d: %s", tp, gm_last_error());
    assert_int_equal(wk_pool_kv_blocks(p), 2 * MAX_BLOCKS);
    assert_true(wk_pool_config(p)->vocab_size > 3);
    assert_true(wk_pool_alive(p));
    run_pool_script(p, got);
    expect_same(ref, got, tp, "one step in flight");
    memset(got, 0, sizeof got);
    run_pool_script_ahead(p, got);
    expect_same(ref, got, tp, "two steps in flight");
    g_swap_slots = 1;
    memset(got, 0, sizeof got);
    run_pool_script_ahead(p, got);
    expect_same(ref, got, tp, "slots exchanged");
    memset(got, 0, sizeof got);
    run_pool_script(p, got);
    expect_same(ref, got, tp, "slots exchanged, one in flight");
    g_swap_slots = 0;
    wk_pool_destroy(&p);
    assert_null(p);
}

static void test_tp1_matches_engine(void **state)
{
    (void)state;
    compare_with_reference(1);
}

static void test_tp2_matches_engine(void **state)
{
    (void)state;
    compare_with_reference(2);
}

static void test_null_backend(void **state)
{
    (void)state;
    wk_pool_opts o;
    pool_opts(&o, GM_BACKEND_NULL, 2);
    wk_pool *p = NULL;
    if (wk_pool_start(&o, &p) != GM_OK)
        fail_msg("start: %s", gm_last_error());
    int32_t got[N_DECODE + 1][N_SEQS], ahead[N_DECODE + 1][N_SEQS];
    run_pool_script(p, got);
    for (int k = 0; k <= N_DECODE; k++)
        for (int i = 0; i < N_SEQS; i++)
            assert_true(got[k][i] >= 3 && got[k][i] < wk_pool_config(p)->vocab_size);
    run_pool_script_ahead(p, ahead); /* both ranks resolve -1 alike */
    assert_memory_equal(got, ahead, sizeof got);
    wk_pool_destroy(&p);
}

/* A plan the workers must refuse: an error result, then the pool keeps working. */
static void test_bad_plan_is_an_error(void **state)
{
    (void)state;
    wk_pool_opts o;
    pool_opts(&o, GM_BACKEND_CPU, 2);
    wk_pool *p = NULL;
    if (wk_pool_start(&o, &p) != GM_OK)
        fail_msg("start: %s", gm_last_error());
    script s;
    script_init(&s);
    int32_t last[N_SEQS] = {0}, store[N_SEQS], tok[N_SEQS];
    gm_seq_step q[N_SEQS];

    int32_t bad_table[MAX_BLOCKS] = {0, 1, 999, 3, 4, 5, 6, 7};
    int32_t bad_tokens[3] = {2, 1 << 30, 5};
    int32_t fed[3] = {-1, -1, -1};
    for (int c = 0; c < 8; c++) {
        script_step(&s, 0, last, q, store);
        if (c == 0)
            q[0].block_table = bad_table, q[0].start_pos = 5; /* positions 5..11 reach block 2 = id 999 */
        if (c == 1)
            q[1].tokens = bad_tokens, q[1].n_tokens = 3;
        if (c == 2)
            q[1].slot = q[0].slot;
        if (c == 3)
            q[0].sampling.top_p = 0.0f;
        if (c == 4)
            q[0].start_pos = 1 << 30;
        if (c == 5)
            q[0].tokens = fed, q[0].n_tokens = 1; /* -1 at position 0: nothing was sampled before */
        if (c == 6)
            q[0].tokens = fed, q[0].n_tokens = 3; /* -1 inside a prefill */
        if (c == 7)
            q[0].n_blocks = 1; /* too few blocks for 7 positions */
        assert_int_equal(wk_pool_submit(p, q, N_SEQS, NULL, 0), GM_OK);
        gm_status st = pool_wait(p, tok, N_SEQS);
        assert_int_equal(st, GM_ERR_INVALID_ARG);
        assert_true(strlen(gm_last_error()) > 0);
        assert_false(wk_pool_busy(p));
        assert_true(wk_pool_alive(p));
    }
    /* and a good step still runs */
    script_step(&s, 0, last, q, store);
    assert_int_equal(wk_pool_submit(p, q, N_SEQS, NULL, 0), GM_OK);
    assert_int_equal(pool_wait(p, tok, N_SEQS), GM_OK);
    /* caller mistakes */
    assert_int_not_equal(wk_pool_submit(p, q, 0, NULL, 0), GM_OK);
    assert_int_not_equal(wk_pool_submit(p, NULL, 1, NULL, 0), GM_OK);
    wk_pool_destroy(&p);
}

static void test_kill_and_restart(void **state)
{
    (void)state;
    int fds0 = count_fds();
    int dirs0 = count_prefix(g_tmpdir, "gemmad-");
    int shm0 = count_prefix("/dev/shm", g_shm_prefix);
    wk_pool_opts o;
    pool_opts(&o, GM_BACKEND_CPU, 2);
    wk_pool *p = NULL;
    if (wk_pool_start(&o, &p) != GM_OK)
        fail_msg("start: %s", gm_last_error());
    int32_t got[N_DECODE + 1][N_SEQS], again[N_DECODE + 1][N_SEQS];
    run_pool_script(p, got);
    for (int round = 0; round < 2; round++) {
        pid_t kids[8];
        int n = child_pids(kids, 8);
        assert_int_equal(n, 2);
        assert_int_equal(kill(kids[round % 2], SIGKILL), 0);
        bool alive = true;
        for (int i = 0; i < 500 && alive; i++) { /* SIGKILL lands asynchronously */
            alive = wk_pool_alive(p);
            if (alive) {
                struct timespec ts = {0, 10000000L};
                nanosleep(&ts, NULL);
            }
        }
        assert_false(alive);
        if (wk_pool_restart(p) != GM_OK)
            fail_msg("restart: %s", gm_last_error());
        assert_true(wk_pool_alive(p));
        assert_int_equal(count_prefix("/dev/shm", g_shm_prefix), shm0); /* unlinked once all mapped it */
        run_pool_script(p, again); /* a fresh KV pool: the same script gives the same tokens */
        assert_memory_equal(got, again, sizeof got);
    }
    /* a worker killed with two steps in flight: neither completes, restart recovers */
    {
        script s2;
        script_init(&s2);
        int32_t st2[2][N_SEQS], tok2[N_SEQS];
        gm_seq_step q2[N_SEQS];
        script_step(&s2, 0, NULL, q2, st2[0]);
        assert_int_equal(wk_pool_submit(p, q2, N_SEQS, NULL, 0), GM_OK);
        script_step(&s2, 1, NULL, q2, st2[1]);
        assert_int_equal(wk_pool_submit(p, q2, N_SEQS, NULL, 0), GM_OK);
        pid_t k2[8];
        assert_int_equal(child_pids(k2, 8), 2);
        kill(k2[0], SIGKILL);
        kill(k2[1], SIGKILL);
        gm_status st = GM_OK;
        for (int i = 0; i < 2 && st == GM_OK; i++) /* a step may finish before the kill lands */
            st = pool_wait(p, tok2, N_SEQS);
        if (st == GM_OK)
            st = wk_pool_alive(p) ? GM_OK : GM_ERR_INTERNAL;
        assert_int_not_equal(st, GM_OK);
        assert_int_equal(wk_pool_restart(p), GM_OK);
        assert_false(wk_pool_busy(p));
        run_pool_script_ahead(p, again);
        assert_memory_equal(got, again, sizeof got);
    }
    /* a worker killed in the middle of a step: the step never completes, restart recovers */
    script s;
    script_init(&s);
    int32_t last[N_SEQS] = {0}, store[N_SEQS];
    gm_seq_step q[N_SEQS];
    script_step(&s, 0, last, q, store);
    pid_t kids[8];
    assert_int_equal(child_pids(kids, 8), 2);
    kill(kids[1], SIGKILL);
    int32_t tok[N_SEQS];
    gm_status st = wk_pool_submit(p, q, N_SEQS, NULL, 0); /* fails at once if the dead rank's pipe is gone */
    if (st == GM_OK)
        st = pool_wait(p, tok, N_SEQS); /* else rank 0 fails in its all-reduce, or we see the death */
    assert_int_not_equal(st, GM_OK);
    print_message("step with a dead rank: %s\n", gm_last_error());
    assert_int_equal(wk_pool_restart(p), GM_OK);
    assert_false(wk_pool_busy(p));
    run_pool_script(p, again);
    assert_memory_equal(got, again, sizeof got);
    wk_pool_destroy(&p);
    int z = 0;
    assert_int_equal(child_pids(kids, 8), 0);
    assert_int_equal(waitpid(-1, &z, WNOHANG), -1); /* nothing left to reap */
    assert_int_equal(count_fds(), fds0);
    assert_int_equal(count_prefix(g_tmpdir, "gemmad-"), dirs0);
    assert_int_equal(count_prefix("/dev/shm", g_shm_prefix), shm0);
}

static void test_bad_model_dir(void **state)
{
    (void)state;
    wk_pool_opts o;
    pool_opts(&o, GM_BACKEND_CPU, 2);
    assert_int_equal(ctl_spec_set_model(&o.spec, "/nonexistent/gm-no-such-model"), GM_OK);
    wk_pool *p = NULL;
    gm_status st = wk_pool_start(&o, &p);
    assert_int_not_equal(st, GM_OK);
    assert_null(p);
    if (!strstr(gm_last_error(), "gm-no-such-model"))
        fail_msg("error does not carry the loader's message: %s", gm_last_error());
    int z = 0;
    assert_int_equal(waitpid(-1, &z, WNOHANG), -1);
}

static void test_bad_worker_bin(void **state)
{
    (void)state;
    wk_pool_opts o;
    pool_opts(&o, GM_BACKEND_NULL, 1);
    o.worker_bin = "/nonexistent/gemma-worker";
    wk_pool *p = NULL;
    assert_int_not_equal(wk_pool_start(&o, &p), GM_OK);
    assert_null(p);
    assert_non_null(strstr(gm_last_error(), "/nonexistent/gemma-worker"));
}

/* The worker binary itself: --help, bad flags. */
static void test_worker_cli(void **state)
{
    (void)state;
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "%s --help >/dev/null", g_bin);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s --rank 0 2>/dev/null", g_bin);
    assert_int_not_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s --control ipc:///nonexistent/x --rank 3 --tp 2 2>/dev/null", g_bin);
    assert_int_not_equal(system(cmd), 0);
    /* engine settings are not argv any more: they come in the WorkerSpec */
    snprintf(cmd, sizeof cmd, "%s --control ipc:///nonexistent/x --rank 0 --backend cpu 2>/dev/null", g_bin);
    assert_int_not_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s --control ipc:///nonexistent/x --rank 0 --model /m 2>/dev/null", g_bin);
    assert_int_not_equal(system(cmd), 0);
}

/* Every rank received exactly the spec the pool sent (field by field, each
 * option away from its default), and the sizes it reports are the ones asked
 * for; a restart asks for the same again. */
static void expect_echo(const wk_pool *p, int tp)
{
    for (int r = 0; r < tp; r++) {
        gm_worker_spec sent;
        wk_pool_rank_spec(p, r, &sent);
        const gm_worker_spec *got = wk_pool_spec_echo(p, r);
        assert_non_null(got);
#define SAME_(type, name, num)                                                                                       \
    if (sent.name != got->name)                                                                                      \
        fail_msg("rank %d: %s sent %g, received %g", r, #name, (double)sent.name, (double)got->name);
        GM_SPEC_FIELDS(SAME_)
#undef SAME_
        assert_string_equal(sent.model_dir, got->model_dir);
        assert_null(ctl_spec_diff(&sent, got));
    }
    assert_null(wk_pool_spec_echo(p, tp));
}

static void spec_echo_case(gm_backend b)
{
    wk_pool_opts o;
    pool_opts(&o, b, 2);
    gm_worker_spec *s = &o.spec; /* every field away from ctl_spec_init's value */
    s->device = 3;
    s->kv_block_size = 8;
    s->kv_num_blocks = 40;
    s->kv_mem_bytes = 3 << 20;
    s->kv_mem_fraction = 0.625;
    s->max_seqs = 5;
    s->max_tokens = 77;
    s->max_context = 96;
    s->quant = GM_QUANT_FP8;
    s->kv_dtype = b == GM_BACKEND_CPU ? GM_KV_AUTO : GM_KV_FP8; /* the cpu KV cache is f32 only */
    s->use_graphs = 0;
    s->lm_head_fp8 = 1;
    s->verbose = 1;
    wk_pool *p = NULL;
    if (wk_pool_start(&o, &p) != GM_OK)
        fail_msg("start: %s", gm_last_error());
    expect_echo(p, 2);
    gm_worker_spec r1;
    wk_pool_rank_spec(p, 1, &r1);
    assert_int_equal(r1.device, 3); /* not cuda: every rank on the same (unused) device */
    const gm_sizing *z = wk_pool_sizing(p);
    assert_int_equal(z->kv_num_blocks, 40);
    assert_int_equal(z->max_seqs, 5);
    assert_int_equal(z->max_tokens, 77);
    assert_int_equal(z->max_context, 96);
    assert_non_null(strstr(z->why_kv, "set explicitly"));
    assert_non_null(strstr(z->why_seqs, "set explicitly"));
    assert_int_equal(wk_pool_kv_blocks(p), 40);
    int32_t got[N_DECODE + 1][N_SEQS];
    run_pool_script(p, got);
    for (int round = 0; round < 2; round++) { /* kill rank 1, restart: the same spec again */
        pid_t kids[8];
        int n = child_pids(kids, 8);
        assert_int_equal(n, 2);
        kill(kids[round], SIGKILL);
        for (int i = 0; i < 500 && wk_pool_alive(p); i++) {
            struct timespec ts = {0, 10000000L};
            nanosleep(&ts, NULL);
        }
        assert_int_equal(wk_pool_restart(p), GM_OK);
        expect_echo(p, 2);
        assert_int_equal(wk_pool_sizing(p)->max_seqs, 5);
    }
    wk_pool_destroy(&p);
}

static void test_spec_echo_null(void **state)
{
    (void)state;
    spec_echo_case(GM_BACKEND_NULL);
}

static void test_spec_echo_cpu(void **state)
{
    (void)state;
    spec_echo_case(GM_BACKEND_CPU);
}

/* No sizing fields: the cpu and null backends keep their fixed defaults, and say so. */
static void test_default_sizes(void **state)
{
    (void)state;
    for (int b = 0; b < 2; b++) {
        wk_pool_opts o;
        pool_opts(&o, b ? GM_BACKEND_NULL : GM_BACKEND_CPU, 1);
        o.spec.kv_num_blocks = 0;
        o.spec.max_seqs = 0;
        o.spec.max_tokens = 0;
        wk_pool *p = NULL;
        if (wk_pool_start(&o, &p) != GM_OK)
            fail_msg("start: %s", gm_last_error());
        const gm_sizing *z = wk_pool_sizing(p);
        assert_int_equal(z->max_seqs, 64);
        assert_int_equal(z->max_tokens, 2048);
        assert_int_equal(z->max_context, wk_pool_config(p)->max_position);
        assert_int_equal(z->kv_bytes, 64ll << 20);
        assert_true(z->kv_num_blocks > 0);
        assert_int_equal(wk_pool_kv_blocks(p), z->kv_num_blocks);
        assert_non_null(strstr(z->why_kv, "default"));
        assert_non_null(strstr(z->why_seqs, "default"));
        assert_non_null(strstr(z->why_tokens, "default"));
        assert_non_null(strstr(z->why_context, "max_position"));
        expect_echo(p, 1);
        gm_worker_spec sent;
        wk_pool_rank_spec(p, 0, &sent);
        assert_int_equal(sent.max_seqs, 0); /* the first start asks */
        int64_t blocks = z->kv_num_blocks;
        pid_t kid;
        assert_int_equal(child_pids(&kid, 1), 1);
        kill(kid, SIGKILL);
        for (int i = 0; i < 500 && wk_pool_alive(p); i++) {
            struct timespec ts = {0, 10000000L};
            nanosleep(&ts, NULL);
        }
        assert_int_equal(wk_pool_restart(p), GM_OK);
        wk_pool_rank_spec(p, 0, &sent); /* a restart asks for exactly what was decided */
        assert_int_equal(sent.max_seqs, 64);
        assert_int_equal(sent.max_tokens, 2048);
        assert_int_equal(sent.kv_num_blocks, blocks);
        expect_echo(p, 1);
        assert_int_equal(wk_pool_kv_blocks(p), blocks);
        wk_pool_destroy(&p);
    }
}

int main(void)
{
    const char *bin = getenv("GM_BIN");
    if (!bin) {
        fprintf(stderr, "GM_BIN not set (run through ctest)\n");
        return 77;
    }
    snprintf(g_model, sizeof g_model, "%s/models/tiny", bin);
    snprintf(g_bin, sizeof g_bin, "%s/daemon/gemma-worker", bin);
    snprintf(g_shm_prefix, sizeof g_shm_prefix, "gemmad-%d-", (int)getpid());
    char cfg[1100];
    snprintf(cfg, sizeof cfg, "%s/config.json", g_model);
    if (access(cfg, R_OK) != 0 || access(g_bin, X_OK) != 0) {
        fprintf(stderr, "missing %s or %s\n", cfg, g_bin);
        return 1;
    }
    snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/gm-test-workers-XXXXXX");
    if (!mkdtemp(g_tmpdir) || setenv("TMPDIR", g_tmpdir, 1) != 0) {
        fprintf(stderr, "cannot make a private TMPDIR\n");
        return 1;
    }
    gm_log_init("test_workers", GM_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_worker_cli),       cmocka_unit_test(test_tp1_matches_engine),
        cmocka_unit_test(test_tp2_matches_engine), cmocka_unit_test(test_null_backend),
        cmocka_unit_test(test_bad_plan_is_an_error), cmocka_unit_test(test_kill_and_restart),
        cmocka_unit_test(test_bad_model_dir),    cmocka_unit_test(test_bad_worker_bin),
        cmocka_unit_test(test_spec_echo_null),   cmocka_unit_test(test_spec_echo_cpu),
        cmocka_unit_test(test_default_sizes),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(g_tmpdir); /* empty unless a pool leaked its directory */
    return rc;
}
