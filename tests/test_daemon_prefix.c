/* test_daemon_prefix.c - shared KV blocks through gemmad (tiny model, cpu backend, 4-token blocks):
 *  - prefix caching changes no output: prompts with long shared prefixes, greedy and sampled, all at
 *    once, one at a time, in reverse pairs, with and without run-ahead, in a pool small enough to evict
 *    and preempt, at tp 2, give exactly the token ids of gemmad with --prefix-cache false (the CPU engine
 *    is bit-exact whatever the chunking); Stats report the hits and the cached blocks;
 *  - n > 1 (tp 1 and 2): choice i is what a single request with seed + i gives; greedy choices are
 *    equal; chunks carry the choice's index and the request ends once, after every choice;
 *  - logprobs, min_tokens and penalties per choice: cache on and off give the same tokens and log-
 *    probabilities, choice i those of a lone request with seed + i; requests with penalties take nothing
 *    from the cache (no lookup counted) and still equal the cache-off run;
 *  - a client gone mid-stream, a cancel, a killed worker: every block comes back (free + cached +
 *    used == total, used 0 when idle), nothing cached survives the restart, and the workload gives
 *    the same tokens afterwards.
 * Every wait is a bounded poll. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <zmq.h>

#include "tests/test_daemon_util.h"

#define N_REQ 24
#define MAX_GEN 16
#define WAIT_MS 120000

typedef struct req {
    int32_t prompt[160];
    int32_t n_prompt;
    float temperature;
    uint64_t seed;
    int32_t max_tokens;
    int32_t want[MAX_GEN]; /* the reference run's tokens (cache off) */
    int32_t n_want;
} req;

static req g_req[N_REQ];

/* 3 system prompts of 37, 64 and 101 tokens, then a question of 1..20 tokens; some prompts equal. */
static void make_reqs(void)
{
    int32_t sys_len[3] = {37, 64, 101};
    for (int i = 0; i < N_REQ; i++) {
        req *r = &g_req[i];
        int k = i % 3, q = i % 8 == 7 ? i - 3 : i; /* every 8th repeats an earlier prompt */
        r->n_prompt = 0;
        r->prompt[r->n_prompt++] = 2;
        for (int32_t j = 1; j < sys_len[k]; j++)
            r->prompt[r->n_prompt++] = 3 + (k * 7919 + j * 104729) % 4000;
        for (int32_t j = 0; j < 1 + (q * 7) % 20; j++)
            r->prompt[r->n_prompt++] = 3 + (q * 31 + j * 17) % 4000;
        r->temperature = i % 2 ? 0.0f : 0.8f;
        r->seed = 500 + (uint64_t)q;
        r->max_tokens = 6 + (i * 5) % (MAX_GEN - 6);
    }
}

static pid_t start(const char *name, const char *const *extra, char *ep, size_t epcap)
{
    char log[64], sock[64];
    snprintf(log, sizeof log, "%s.log", name);
    snprintf(sock, sizeof sock, "%s.sock", name);
    td_endpoint(ep, epcap, sock);
    const char *args[32] = {"--model", TINY_MODEL_DIR, "--backend", "cpu", "--listen", ep, "--kv-block-size", "4",
                            "--max-tokens-per-step", "64"};
    int n = 10;
    for (; extra && *extra && n < 31; extra++)
        args[n++] = *extra;
    args[n] = NULL;
    pid_t pid = td_spawn_gemmad(args, log);
    assert_true(pid > 0);
    if (!td_wait_ready(ep, pid, WAIT_MS)) {
        td_dump_log(log);
        fail_msg("gemmad %s did not start", name);
    }
    return pid;
}

static void stats(const char *ep, gmc_stats *s)
{
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    assert_int_equal(gmc_stats_get(c, 10000, s), GMC_OK);
    gmc_close(&c);
}

/* Idle: every block back, and free + cached + used == total. */
static void assert_idle_accounting(const char *ep)
{
    gmc_stats s;
    double end = td_now_ms() + 30000;
    for (;;) {
        stats(ep, &s);
        if (s.running == 0 && s.waiting == 0 && s.kv_blocks_used == 0)
            break;
        assert_true(td_now_ms() < end);
        usleep(20000);
    }
    assert_int_equal(s.kv_blocks_free + s.kv_blocks_cached + s.kv_blocks_used, s.kv_blocks_total);
}

static void params_of(const req *r, gmc_params *p)
{
    gmc_params_init(p);
    p->prompt_ids = r->prompt;
    p->n_prompt_ids = r->n_prompt;
    p->max_tokens = r->max_tokens;
    p->temperature = r->temperature;
    p->seed = r->seed;
    p->ignore_eos = true;
}

/* Run requests order[0..n) with at most `inflight` at a time on one client; tokens into got. */
static void run_reqs(const char *ep, const int *order, int n, int inflight, int32_t (*got)[MAX_GEN], int32_t *n_got)
{
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    int next = 0, live = 0, done = 0;
    double end = td_now_ms() + WAIT_MS;
    while (done < n) {
        while (live < inflight && next < n) {
            int i = order[next++];
            gmc_params p;
            params_of(&g_req[i], &p);
            n_got[i] = 0;
            assert_int_equal(gmc_submit(c, &p, &g_req[i], NULL), GMC_OK);
            live++;
        }
        assert_true(td_now_ms() < end);
        gmc_event ev[64];
        int k = gmc_poll(c, ev, 64, 1000);
        assert_true(k >= 0);
        for (int e = 0; e < k; e++) {
            int i = (int)((req *)ev[e].user - g_req);
            assert_int_equal(ev[e].index, 0);
            assert_true(n_got[i] + ev[e].n_tokens <= MAX_GEN);
            memcpy(got[i] + n_got[i], ev[e].tokens, sizeof(int32_t) * (size_t)ev[e].n_tokens);
            n_got[i] += ev[e].n_tokens;
            if (ev[e].finished) {
                assert_int_equal(ev[e].error, GMC_OK);
                assert_int_equal(ev[e].finish_reason, GMC_FINISH_LENGTH);
                live--;
                done++;
            }
        }
    }
    gmc_close(&c);
}

/* Every order of the workload gives the reference tokens. */
static void run_orders(const char *ep)
{
    int order[N_REQ];
    int32_t got[N_REQ][MAX_GEN], n_got[N_REQ];
    for (int pass = 0; pass < 3; pass++) {
        for (int i = 0; i < N_REQ; i++)
            order[i] = pass == 2 ? N_REQ - 1 - i : i;
        run_reqs(ep, order, N_REQ, pass == 0 ? N_REQ : pass == 1 ? 1 : 2, got, n_got);
        for (int i = 0; i < N_REQ; i++) {
            assert_int_equal(n_got[i], g_req[i].n_want);
            if (memcmp(got[i], g_req[i].want, sizeof(int32_t) * (size_t)n_got[i]))
                fail_msg("pass %d, request %d (%d prompt tokens): tokens differ from --prefix-cache false", pass, i,
                         g_req[i].n_prompt);
        }
    }
}

/* The reference: the workload on gemmad without the prefix cache, all at once. */
static void reference(void)
{
    char ep[400];
    const char *const off[] = {"--prefix-cache", "false", NULL};
    pid_t pid = start("reference", off, ep, sizeof ep);
    int order[N_REQ];
    int32_t got[N_REQ][MAX_GEN], n_got[N_REQ];
    for (int i = 0; i < N_REQ; i++)
        order[i] = i;
    run_reqs(ep, order, N_REQ, N_REQ, got, n_got);
    for (int i = 0; i < N_REQ; i++) {
        memcpy(g_req[i].want, got[i], sizeof got[i]);
        g_req[i].n_want = n_got[i];
        assert_int_equal(n_got[i], g_req[i].max_tokens);
    }
    gmc_stats s;
    stats(ep, &s);
    assert_false(s.prefix_cache);
    assert_int_equal(s.prefix_cache_queries, 0);
    assert_int_equal(s.prefix_cache_hits, 0);
    assert_int_equal(s.kv_blocks_cached, 0);
    assert_idle_accounting(ep);
    assert_int_equal(td_stop(pid), 0);
}

static void cache_on(const char *name, const char *const *extra)
{
    char ep[400];
    pid_t pid = start(name, extra, ep, sizeof ep);
    run_orders(ep);
    gmc_stats s;
    stats(ep, &s);
    assert_true(s.prefix_cache);
    assert_true(s.prefix_cache_hits > 0);
    assert_true(s.prefix_cache_hits <= s.prefix_cache_queries);
    assert_true(s.prefix_cache_hit_rate > 0 && s.prefix_cache_hit_rate <= 1);
    assert_true(s.kv_blocks_cached > 0);
    assert_idle_accounting(ep);
    assert_int_equal(td_stop(pid), 0);
}

static void test_prefix_cache_same_tokens(void **state)
{
    (void)state;
    cache_on("cache", NULL); /* on by default */
    const char *const serial[] = {"--no-run-ahead", NULL};
    cache_on("cache-serial", serial);
    const char *const small[] = {"--kv-blocks", "160", NULL}; /* evicts and preempts */
    cache_on("cache-small", small);
    const char *const tp2[] = {"--tp", "2", NULL}; /* copies and hits on both ranks' shards */
    cache_on("cache-tp2", tp2);
}

#define N_TOP 3

/* Every choice of one request (at most 4): its tokens, their log-probabilities when asked (N_TOP
 * alternatives each), how it ended; the request's usage. */
typedef struct ch_out {
    int32_t tok[4][MAX_GEN], n[4];
    float lp[4][MAX_GEN];
    int32_t top[4][MAX_GEN][N_TOP];
    float top_lp[4][MAX_GEN][N_TOP];
    gmc_finish fin[4];
    gmc_usage usage;
} ch_out;

/* Run p to its end into o: each choice ends once, the request after all of them. */
static void run_choices(gmc_client *c, const gmc_params *p, ch_out *o)
{
    int n = p->n > 1 ? p->n : 1;
    bool ended[4] = {0};
    assert_true(n <= 4 && (!p->logprobs || p->top_logprobs == N_TOP));
    memset(o, 0, sizeof *o);
    assert_int_equal(gmc_submit(c, p, NULL, NULL), GMC_OK);
    double end = td_now_ms() + WAIT_MS;
    for (bool finished = false; !finished;) {
        assert_true(td_now_ms() < end);
        gmc_event ev[64];
        int k = gmc_poll(c, ev, 64, 1000);
        assert_true(k >= 0);
        for (int e = 0; e < k; e++) {
            assert_false(finished);
            int i = ev[e].index;
            assert_true(i >= 0 && i < n);
            assert_false(ended[i]);
            assert_int_equal(ev[e].n_logprobs, p->logprobs ? ev[e].n_tokens : 0);
            for (int32_t t = 0; t < ev[e].n_tokens; t++) {
                int32_t at = o->n[i]++;
                assert_true(at < MAX_GEN);
                o->tok[i][at] = ev[e].tokens[t];
                if (!p->logprobs)
                    continue;
                const gmc_logprob *l = &ev[e].logprobs[t];
                assert_int_equal(l->n_top, N_TOP);
                o->lp[i][at] = l->logprob;
                memcpy(o->top[i][at], l->top_ids, sizeof o->top[i][at]);
                memcpy(o->top_lp[i][at], l->top_logprobs, sizeof o->top_lp[i][at]);
            }
            if (ev[e].index_finished) {
                ended[i] = true;
                o->fin[i] = ev[e].finish_reason;
            }
            if (ev[e].finished) {
                finished = true;
                for (int j = 0; j < n; j++)
                    assert_true(ended[j]);
                o->usage = ev[e].usage;
            }
        }
    }
}

/* One request of r with n choices, every one to max_tokens. */
static void run_n(gmc_client *c, const req *r, int n, bool stream, ch_out *o)
{
    gmc_params p;
    params_of(r, &p);
    p.n = n;
    p.stream = stream;
    run_choices(c, &p, o);
    for (int i = 0; i < n; i++)
        assert_int_equal(o->fin[i], GMC_FINISH_LENGTH);
    assert_int_equal(o->usage.completion_tokens, n * r->max_tokens);
    assert_int_equal(o->usage.prompt_tokens, r->n_prompt);
}

static void n_choices(const char *name, const char *const *extra)
{
    char ep[400];
    pid_t pid = start(name, extra, ep, sizeof ep);
    gmc_client *c;
    assert_int_equal(gmc_connect(ep, 10000, &c), GMC_OK);
    static ch_out got, one;
    for (int stream = 0; stream < 2; stream++)
        for (int k = 0; k < 2; k++) {
            req r = g_req[k]; /* k = 0: sampled (temperature 0.8), k = 1: greedy */
            r.prompt[r.n_prompt++] = 77 + stream; /* a prompt no one cached */
            run_n(c, &r, 4, stream, &got);
            for (int i = 0; i < 4; i++) {
                req ri = r;
                ri.seed = r.seed + (uint64_t)i;
                run_n(c, &ri, 1, true, &one); /* choice i = one request with seed + i */
                assert_int_equal(got.n[i], one.n[0]);
                assert_memory_equal(got.tok[i], one.tok[0], sizeof(int32_t) * (size_t)one.n[0]);
                if (i > 0 && r.temperature == 0)
                    assert_memory_equal(got.tok[i], got.tok[0], sizeof(int32_t) * (size_t)one.n[0]);
            }
            if (r.temperature > 0)
                assert_memory_not_equal(got.tok[1], got.tok[2], sizeof(int32_t) * (size_t)got.n[1]);
        }
    /* refused: n beyond 64; a refused n = 3 request ends in one chunk */
    gmc_params p;
    params_of(&g_req[0], &p);
    uint64_t id;
    gmc_event ev[4];
    for (int bad = 0; bad < 2; bad++) {
        p.n = bad ? 3 : 65;
        p.max_tokens = bad ? 100000 : g_req[0].max_tokens;
        assert_int_equal(gmc_submit(c, &p, NULL, &id), GMC_OK);
        int k = gmc_poll(c, ev, 4, 10000);
        assert_int_equal(k, 1);
        assert_true(ev[0].finished);
        assert_int_equal(ev[0].error, GMC_ERR_INVALID_ARGUMENT);
    }
    gmc_close(&c);
    assert_idle_accounting(ep);
    assert_int_equal(td_stop(pid), 0);
}

static void test_n_choices(void **state)
{
    (void)state;
    n_choices("n", NULL);
    const char *const tp2[] = {"--tp", "2", NULL};
    n_choices("n-tp2", tp2);
}

/* Long requests (n = 4 and shared prefixes) streaming on client a; wait for a token of each. */
static void start_shared(gmc_client *a, uint64_t *ids)
{
    for (int i = 0; i < 4; i++) {
        gmc_params p;
        params_of(&g_req[i], &p);
        p.max_tokens = 400;
        p.n = i == 0 ? 4 : 1;
        assert_int_equal(gmc_submit(a, &p, NULL, &ids[i]), GMC_OK);
    }
    int seen = 0;
    bool got[4] = {0};
    double end = td_now_ms() + WAIT_MS;
    while (seen < 4) {
        assert_true(td_now_ms() < end);
        gmc_event ev[64];
        int k = gmc_poll(a, ev, 64, 1000);
        for (int e = 0; e < k; e++)
            for (int i = 0; i < 4; i++)
                if (ev[e].request_id == ids[i] && !got[i]) {
                    got[i] = true;
                    seen++;
                }
    }
}

static void test_shared_blocks_come_back(void **state)
{
    (void)state;
    char ep[400];
    pid_t pid = start("robust", NULL, ep, sizeof ep);
    /* a client gone mid-stream */
    gmc_client *a;
    assert_int_equal(gmc_connect(ep, 10000, &a), GMC_OK);
    uint64_t ids[4];
    start_shared(a, ids);
    gmc_close(&a);
    assert_idle_accounting(ep);
    /* a cancel of the n = 4 request and of another */
    assert_int_equal(gmc_connect(ep, 10000, &a), GMC_OK);
    start_shared(a, ids);
    assert_int_equal(gmc_cancel(a, ids[0]), GMC_OK);
    assert_int_equal(gmc_cancel(a, ids[2]), GMC_OK);
    int ended = 0, cancelled_choices = 0;
    double end = td_now_ms() + WAIT_MS;
    while (ended < 2) {
        assert_true(td_now_ms() < end);
        gmc_event ev[64];
        int k = gmc_poll(a, ev, 64, 1000);
        for (int e = 0; e < k; e++) {
            if (ev[e].request_id != ids[0] && ev[e].request_id != ids[2])
                continue;
            cancelled_choices += ev[e].index_finished;
            if (ev[e].finished) {
                assert_int_equal(ev[e].finish_reason, GMC_FINISH_CANCELLED);
                ended++;
            }
        }
    }
    assert_int_equal(cancelled_choices, 4 + 1); /* each choice of the n = 4 request ends */
    gmc_close(&a);
    assert_idle_accounting(ep);
    run_orders(ep); /* nothing cached was spoilt */
    /* a killed worker: the cache is gone with its KV, and what runs next is right */
    assert_int_equal(gmc_connect(ep, 10000, &a), GMC_OK);
    start_shared(a, ids);
    pid_t w = td_worker_pid(pid, 0);
    assert_true(w > 0);
    assert_int_equal(kill(w, SIGKILL), 0);
    ended = 0;
    end = td_now_ms() + WAIT_MS;
    while (ended < 4) {
        assert_true(td_now_ms() < end);
        gmc_event ev[64];
        int k = gmc_poll(a, ev, 64, 1000);
        for (int e = 0; e < k; e++)
            if (ev[e].finished) {
                assert_int_equal(ev[e].error, GMC_ERR_WORKER_FAILED);
                ended++;
            }
    }
    gmc_close(&a);
    assert_true(td_wait_ready(ep, pid, WAIT_MS));
    gmc_stats s;
    stats(ep, &s);
    assert_int_equal(s.worker_restarts, 1);
    assert_int_equal(s.kv_blocks_cached, 0);
    assert_idle_accounting(ep);
    run_orders(ep);
    assert_idle_accounting(ep);
    assert_int_equal(td_stop(pid), 0);
}

/* ---- the sampling extensions with shared blocks ---- */

/* Run p with logprobs and N_TOP alternatives into o. */
static void run_lp(gmc_client *c, const gmc_params *p0, ch_out *o)
{
    gmc_params p = *p0;
    p.logprobs = true;
    p.top_logprobs = N_TOP;
    run_choices(c, &p, o);
}

/* Choice i of a and choice j of b: the same tokens and, bit for bit, the same log-probabilities. */
static void lp_equal(const ch_out *a, int i, const ch_out *b, int j, const char *what)
{
    if (a->n[i] != b->n[j] || memcmp(a->tok[i], b->tok[j], sizeof(int32_t) * (size_t)a->n[i]) ||
        memcmp(a->lp[i], b->lp[j], sizeof(float) * (size_t)a->n[i]) ||
        memcmp(a->top[i], b->top[j], sizeof a->top[i][0] * (size_t)a->n[i]) ||
        memcmp(a->top_lp[i], b->top_lp[j], sizeof a->top_lp[i][0] * (size_t)a->n[i]))
        fail_msg("%s: choice %d differs from choice %d of the reference", what, i, j);
}

/* logprobs, min_tokens and the penalties are per choice, and the prefix cache changes none of them:
 * n = 3 with logprobs and min_tokens gives, cache on or off, the same tokens and log-probabilities,
 * choice i those of a lone request with seed + i; with penalties (which count a sequence's tokens from
 * position 0, so such requests neither fork nor take cached blocks) the same again, and no cache
 * lookup is counted for them. */
static void test_extras_with_shared_blocks(void **state)
{
    (void)state;
    char ep_off[400], ep_on[400];
    const char *const off[] = {"--prefix-cache", "false", NULL};
    pid_t p_off = start("extras-off", off, ep_off, sizeof ep_off);
    pid_t p_on = start("extras-on", NULL, ep_on, sizeof ep_on);
    gmc_client *on, *nc;
    assert_int_equal(gmc_connect(ep_on, 10000, &on), GMC_OK);
    assert_int_equal(gmc_connect(ep_off, 10000, &nc), GMC_OK);
    static ch_out a, b, one;
    for (int k = 0; k < 6; k++) { /* requests 3..5 share their system prompts with 0..2: cache hits */
        gmc_params p;
        params_of(&g_req[k], &p);
        p.temperature = 0.8f;
        p.n = 3;
        p.ignore_eos = false;
        p.min_tokens = 4;
        run_lp(on, &p, &a);
        run_lp(nc, &p, &b);
        for (int i = 0; i < 3; i++) {
            assert_true(a.n[i] >= 4);
            lp_equal(&a, i, &b, i, "cache on vs off");
            gmc_params pi = p;
            pi.n = 1;
            pi.seed = p.seed + (uint64_t)i;
            run_lp(on, &pi, &one);
            lp_equal(&a, i, &one, 0, "choice i vs a lone request with seed + i");
        }
        assert_true(memcmp(a.tok[1], a.tok[2], sizeof(int32_t) * (size_t)a.n[1]) || a.n[1] != a.n[2]);
    }
    gmc_stats s0, s1;
    stats(ep_on, &s0);
    assert_true(s0.prefix_cache_hits > 0);
    int differ = 0;
    for (int k = 0; k < 6; k++) {
        gmc_params p;
        params_of(&g_req[k], &p);
        p.temperature = 0.8f;
        p.n = 2;
        p.presence_penalty = 0.8f;
        p.frequency_penalty = 0.5f;
        p.repetition_penalty = 1.5f;
        run_lp(on, &p, &a);
        run_lp(nc, &p, &b);
        for (int i = 0; i < 2; i++)
            lp_equal(&a, i, &b, i, "penalties, cache on vs off");
        gmc_params p1 = p;
        p1.n = 1;
        p1.seed = p.seed + 1;
        run_lp(on, &p1, &one);
        lp_equal(&a, 1, &one, 0, "penalties: choice 1 vs a lone request with seed + 1");
        p1 = p;
        p1.presence_penalty = p1.frequency_penalty = 0.0f;
        p1.repetition_penalty = 1.0f;
        run_lp(nc, &p1, &one); /* the penalties do change the draws */
        differ += a.n[0] != one.n[0] || memcmp(a.tok[0], one.tok[0], sizeof(int32_t) * (size_t)a.n[0]) != 0;
    }
    assert_true(differ > 0);
    stats(ep_on, &s1);
    assert_int_equal(s1.prefix_cache_queries, s0.prefix_cache_queries);
    assert_int_equal(s1.prefix_cache_hits, s0.prefix_cache_hits);
    gmc_close(&on);
    gmc_close(&nc);
    assert_idle_accounting(ep_on);
    assert_int_equal(td_stop(p_on), 0);
    assert_int_equal(td_stop(p_off), 0);
}

static int setup(void **state)
{
    (void)state;
    if (!td_have_tiny()) {
        fprintf(stderr, "no tiny model at %s (fixture tiny_model)\n", TINY_MODEL_DIR);
        return -1;
    }
    if (!td_make_dir())
        return -1;
    make_reqs();
    reference();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    td_kill_leftovers();
    td_remove_dir();
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_cache_same_tokens),
        cmocka_unit_test(test_n_choices),
        cmocka_unit_test(test_shared_blocks_come_back),
        cmocka_unit_test(test_extras_with_shared_blocks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
