/* worker_main.c - gemma-worker: one tensor-parallel rank of a replica.
 *
 * Connects a DEALER to the coordinator's control ROUTER (proto/control.proto),
 * says Hello, builds its engine (CPU ranks meet in a shared-memory
 * communicator), answers Ready (or the load error), then runs every StepPlan it
 * receives, in order; rank 0 answers each with a StepResult, other ranks only on
 * error. Plans are deltas (proto/control.proto): the worker keeps each slot's
 * KV block table and sampling parameters, and checks a whole plan before it
 * applies any of it; after a failed step it forgets every table, so a plan
 * that does not resend a slot in full is refused rather than run on a stale one.
 * Plans are decoded by hand (worker/plan_decode.h), other messages by protobuf-c,
 * into a bump arena that is reset after each message.
 * Exits on Shutdown, when the parent gemmad dies (PR_SET_PDEATHSIG set by the
 * spawner, plus a getppid check), or when an ipc:// coordinator socket goes away. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/log.h"
#include "common/status.h"
#include "parallel/comm.h"
#include "proto/control.pb-c.h"
#include "worker/engine.h"
#include "worker/plan_decode.h"

#ifdef GM_HAVE_NCCL
#include <nccl.h>
#endif

typedef Gemma__Control__V1__ControlMessage ctl_msg;

typedef struct wm_args {
    const char *control;
    int32_t rank, tp;
    const char *shm;
    const char *session;
    long parent_pid;
    int log_level;
    gm_engine_opts eo;
} wm_args;

/* A bump arena for protobuf-c unpacking: one block reused for every message;
 * what does not fit is malloc'd and the block grows at the next reset. */
typedef struct wm_arena {
    uint8_t *base;
    size_t cap, used;
    void **extra; /* overflow allocations, freed at reset */
    size_t n_extra, extra_cap, extra_bytes;
} wm_arena;

static void *wm_arena_alloc(void *ad, size_t n)
{
    wm_arena *a = ad;
    n = (n + 15) & ~(size_t)15;
    if (a->used + n <= a->cap) {
        void *p = a->base + a->used;
        a->used += n;
        return p;
    }
    if (a->n_extra == a->extra_cap) {
        size_t cap = a->extra_cap ? a->extra_cap * 2 : 16;
        void **e = realloc(a->extra, cap * sizeof *e);
        if (!e)
            return NULL;
        a->extra = e;
        a->extra_cap = cap;
    }
    void *p = malloc(n);
    if (!p)
        return NULL;
    a->extra[a->n_extra++] = p;
    a->extra_bytes += n;
    return p;
}

static void wm_arena_free(void *ad, void *p)
{
    (void)ad, (void)p; /* everything goes at the next reset */
}

static void wm_arena_reset(wm_arena *a)
{
    for (size_t i = 0; i < a->n_extra; i++)
        free(a->extra[i]);
    if (a->extra_bytes) {
        size_t want = (a->used + a->extra_bytes) * 2;
        uint8_t *b = malloc(want);
        if (b) {
            free(a->base);
            a->base = b;
            a->cap = want;
        }
    }
    a->n_extra = 0;
    a->extra_bytes = 0;
    a->used = 0;
}

static void wm_arena_destroy(wm_arena *a)
{
    wm_arena_reset(a);
    free(a->base);
    free(a->extra);
    memset(a, 0, sizeof *a);
}

typedef struct wm_state {
    wm_args a;
    void *ctx, *sock, *mon;
    bool exit_on_disconnect;
    gm_comm *comm;
    gm_engine *eng;
    int64_t kv_blocks; /* limit plans are checked against (Start may lower it) */
    int32_t *tokens;   /* [max_seqs] step output */
    uint8_t nccl_id[128]; /* CUDA, tp > 1: the ncclUniqueId every rank joins with */
    gm_seq_step *seqs; /* [max_seqs] */
    /* per slot, what the plans so far have built */
    int32_t max_seqs, max_blocks; /* slots; blocks a slot's table holds (max_context / block size) */
    int32_t *tables;   /* [max_seqs, max_blocks] block tables */
    int32_t *tlen;     /* [max_seqs] entries in each table; -1 = unknown (only a reset may name the slot) */
    gm_sampling *samp; /* [max_seqs] */
    uint32_t *stamp;   /* [max_seqs] plan number that last named the slot (duplicate check) */
    uint32_t plan_no;
    wm_arena arena;
    ProtobufCAllocator alloc; /* over arena */
    uint8_t *txbuf;    /* StepResult packing */
    size_t txcap;
} wm_state;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: gemma-worker --control ENDPOINT --rank R --tp N [--shm NAME] [engine flags]\n"
            "\n"
            "One tensor-parallel rank of a gemmad replica. gemmad starts these itself;\n"
            "a launcher (Slurm, mpirun) may start them by hand with the coordinator's endpoint.\n"
            "\n"
            "  --control ENDPOINT     coordinator's control socket (ipc://... or tcp://...)\n"
            "  --rank R               this rank, 0..N-1\n"
            "  --tp N                 tensor-parallel size\n"
            "  --shm NAME             shared-memory segment of the CPU communicator (tp > 1, cpu)\n"
            "  --model DIR            Hugging Face model directory\n"
            "  --backend cpu|cuda|null\n"
            "  --device D             CUDA device ordinal\n"
            "  --kv-block-size T      tokens per KV block\n"
            "  --kv-blocks N          exact number of KV blocks (0 = from the memory budget)\n"
            "  --kv-memory BYTES      KV budget (suffix K, M, G allowed)\n"
            "  --kv-mem-fraction F    CUDA: fraction of free memory for KV\n"
            "  --max-seqs N           most sequences in one step\n"
            "  --max-tokens N         most tokens in one step\n"
            "  --max-context N        longest sequence\n"
            "  --quant none|fp8|awq\n"
            "  --kv-dtype auto|bf16|fp8\n"
            "  --lm-head bf16|fp8\n"
            "  --no-graphs            CUDA: do not capture decode steps as graphs\n"
            "  --verbose              loading progress on stderr\n"
            "  --log-level debug|info|warn|error|off\n"
            "  --session S            tag of this worker set (set by gemmad; part of the routing id)\n"
            "  --parent-pid P         exit when the parent is no longer P (set by gemmad)\n"
            "  --help\n");
}

static int parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_bytes(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0))
        return -1;
    double mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm')
        mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g')
        mul = 1024.0 * 1024 * 1024, end++;
    if (*end == 'i')
        end++;
    if (*end == 'B')
        end++;
    if (*end || v * mul > 9e18)
        return -1;
    *out = (int64_t)(v * mul);
    return 0;
}

/* Parse argv; returns 0 ok, 1 help printed, -1 error printed. */
static int parse_args(int argc, char **argv, wm_args *a)
{
    memset(a, 0, sizeof *a);
    a->rank = -1;
    a->tp = 1;
    a->log_level = GM_LOG_INFO;
    gm_engine_opts_init(&a->eo);
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (!strcmp(k, "--help") || !strcmp(k, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(k, "--no-graphs")) {
            a->eo.use_graphs = 0;
            continue;
        }
        if (!strcmp(k, "--verbose")) {
            a->eo.verbose = 1;
            continue;
        }
        if (strncmp(k, "--", 2) != 0 || i + 1 >= argc) {
            fprintf(stderr, "gemma-worker: %s '%s' (try --help)\n",
                    strncmp(k, "--", 2) ? "unexpected argument" : "missing value for", k);
            return -1;
        }
        const char *v = argv[++i];
        int64_t n = 0;
        int bad = 0;
        if (!strcmp(k, "--control"))
            a->control = v;
        else if (!strcmp(k, "--rank"))
            bad = parse_i64(v, 0, 1023, &n), a->rank = (int32_t)n;
        else if (!strcmp(k, "--tp"))
            bad = parse_i64(v, 1, 1024, &n), a->tp = (int32_t)n;
        else if (!strcmp(k, "--shm"))
            a->shm = v;
        else if (!strcmp(k, "--session"))
            a->session = v;
        else if (!strcmp(k, "--parent-pid"))
            bad = parse_i64(v, 1, INT32_MAX, &n), a->parent_pid = (long)n;
        else if (!strcmp(k, "--model"))
            a->eo.model_dir = v;
        else if (!strcmp(k, "--backend")) {
            int b = gm_backend_parse(v);
            bad = b < 0;
            a->eo.backend = (gm_backend)(b < 0 ? 0 : b);
        } else if (!strcmp(k, "--device"))
            bad = parse_i64(v, 0, 1023, &n), a->eo.device = (int32_t)n;
        else if (!strcmp(k, "--kv-block-size"))
            bad = parse_i64(v, 1, 1 << 16, &n), a->eo.kv_block_size = (int32_t)n;
        else if (!strcmp(k, "--kv-blocks"))
            bad = parse_i64(v, 0, INT32_MAX, &n), a->eo.kv_num_blocks = n;
        else if (!strcmp(k, "--kv-memory"))
            bad = parse_bytes(v, &a->eo.kv_mem_bytes);
        else if (!strcmp(k, "--kv-mem-fraction")) {
            char *end = NULL;
            double f = strtod(v, &end);
            bad = end == v || *end || !(f >= 0 && f <= 1);
            a->eo.kv_mem_fraction = f;
        } else if (!strcmp(k, "--max-seqs"))
            bad = parse_i64(v, 1, 1 << 20, &n), a->eo.max_seqs = (int32_t)n;
        else if (!strcmp(k, "--max-tokens"))
            bad = parse_i64(v, 1, 1 << 24, &n), a->eo.max_tokens = (int32_t)n;
        else if (!strcmp(k, "--max-context"))
            bad = parse_i64(v, 0, 1 << 24, &n), a->eo.max_context = (int32_t)n;
        else if (!strcmp(k, "--quant")) {
            if (!strcmp(v, "none"))
                a->eo.quant = GM_QUANT_NONE;
            else if (!strcmp(v, "fp8"))
                a->eo.quant = GM_QUANT_FP8;
            else if (!strcmp(v, "awq"))
                a->eo.quant = GM_QUANT_AWQ;
            else
                bad = 1;
        } else if (!strcmp(k, "--kv-dtype")) {
            if (!strcmp(v, "auto"))
                a->eo.kv_dtype = GM_KV_AUTO;
            else if (!strcmp(v, "bf16"))
                a->eo.kv_dtype = GM_KV_BF16;
            else if (!strcmp(v, "fp8"))
                a->eo.kv_dtype = GM_KV_FP8;
            else
                bad = 1;
        } else if (!strcmp(k, "--lm-head")) {
            bad = strcmp(v, "bf16") && strcmp(v, "fp8");
            a->eo.lm_head_fp8 = !strcmp(v, "fp8");
        } else if (!strcmp(k, "--log-level")) {
            a->log_level = gm_log_parse_level(v);
            bad = a->log_level < 0;
        } else {
            fprintf(stderr, "gemma-worker: unknown flag '%s' (try --help)\n", k);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "gemma-worker: bad value '%s' for %s (try --help)\n", v, k);
            return -1;
        }
    }
    if (!a->control || a->rank < 0) {
        fprintf(stderr, "gemma-worker: --control and --rank are required (try --help)\n");
        return -1;
    }
    if (a->rank >= a->tp) {
        fprintf(stderr, "gemma-worker: --rank %d out of range for --tp %d\n", (int)a->rank, (int)a->tp);
        return -1;
    }
    if (a->tp > 1 && a->eo.backend == GM_BACKEND_CPU && !a->shm) {
        fprintf(stderr, "gemma-worker: --tp %d on the cpu backend needs --shm NAME\n", (int)a->tp);
        return -1;
    }
    a->eo.tp_rank = a->rank;
    a->eo.tp_size = a->tp;
    return 0;
}

/* Serialize and send one control message; GM_ERR_ZMQ on failure. */
static gm_status wm_send(wm_state *s, const ctl_msg *m)
{
    size_t n = gemma__control__v1__control_message__get_packed_size(m);
    if (n > s->txcap) {
        size_t cap = n < 4096 ? 4096 : n * 2;
        uint8_t *b = realloc(s->txbuf, cap);
        if (!b)
            return gm_fail(GM_ERR_NOMEM, "control message of %zu bytes", n);
        s->txbuf = b;
        s->txcap = cap;
    }
    gemma__control__v1__control_message__pack(m, s->txbuf);
    int rc;
    do
        rc = zmq_send(s->sock, s->txbuf, n, 0);
    while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return gm_fail(GM_ERR_ZMQ, "send to %s: %s", s->a.control, zmq_strerror(errno));
    return GM_OK;
}

static gm_status wm_send_hello(wm_state *s, const char *identity)
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    Gemma__Control__V1__Hello h = GEMMA__CONTROL__V1__HELLO__INIT;
    h.version = GEMMA__CONTROL__V1__CONTROL_VERSION__CONTROL_VERSION_CURRENT;
    h.rank = s->a.rank;
    h.tp_size = s->a.tp;
    h.pid = (int32_t)getpid();
    h.host = host;
    h.identity = (char *)identity;
    h.external = s->a.parent_pid == 0;
    h.backend = (char *)gm_backend_name(s->a.eo.backend);
    h.device = s->a.eo.device;
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_HELLO;
    m.hello = &h;
    return wm_send(s, &m);
}

static gm_status wm_send_ready(wm_state *s, gm_status st, const char *err)
{
    Gemma__Control__V1__Ready r = GEMMA__CONTROL__V1__READY__INIT;
    Gemma__Control__V1__ModelConfig mc = GEMMA__CONTROL__V1__MODEL_CONFIG__INIT;
    r.rank = s->a.rank;
    r.ok = st == GM_OK;
    r.status = (int32_t)st;
    r.error = (char *)(err ? err : "");
    if (s->eng) {
        const gm_model_config *c = &s->eng->cfg;
        mc.vocab_size = c->vocab_size;
        mc.hidden_size = c->hidden_size;
        mc.intermediate_size = c->intermediate_size;
        mc.num_layers = c->num_layers;
        mc.num_heads = c->num_heads;
        mc.num_kv_heads = c->num_kv_heads;
        mc.head_dim = c->head_dim;
        mc.max_position = c->max_position;
        mc.rope_theta = c->rope_theta;
        mc.rms_norm_eps = c->rms_norm_eps;
        mc.bos_id = c->bos_id;
        mc.eos_id = c->eos_id;
        mc.pad_id = c->pad_id;
        mc.torch_dtype = (char *)c->torch_dtype;
        r.model = &mc;
        r.kv_num_blocks = s->eng->kv_num_blocks;
        r.kv_block_size = s->eng->opts.kv_block_size;
        r.max_seqs = s->eng->opts.max_seqs;
        r.max_tokens = s->eng->opts.max_tokens;
        r.max_context = s->eng->opts.max_context;
    }
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_READY;
    m.ready = &r;
    return wm_send(s, &m);
}

static gm_status wm_send_result(wm_state *s, uint64_t step_id, gm_status st, const char *msg,
                                const int32_t *tokens, int32_t n)
{
    Gemma__Control__V1__StepResult r = GEMMA__CONTROL__V1__STEP_RESULT__INIT;
    r.step_id = step_id;
    r.rank = s->a.rank;
    r.status = (int32_t)st;
    r.message = (char *)(msg ? msg : "");
    if (st == GM_OK && tokens) {
        r.tokens = (int32_t *)tokens;
        r.n_tokens = (size_t)n;
    }
    ctl_msg m = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
    m.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_RESULT;
    m.result = &r;
    return wm_send(s, &m);
}

static int32_t wm_max_context(const gm_engine *e)
{
    int32_t mc = e->cfg.max_position;
    if (e->opts.max_context > 0 && (mc <= 0 || e->opts.max_context < mc))
        mc = e->opts.max_context;
    return mc;
}

/* Forget every slot's table (after a failed step: the coordinator resends them). */
static void wm_forget_slots(wm_state *s)
{
    for (int32_t i = 0; i < s->max_seqs; i++)
        s->tlen[i] = -1;
}

/* Check a whole plan against the engine's limits and the slots' tables, then
 * apply its deltas and fill s->seqs. Nothing changes when it fails. Every rank
 * decides the same way (same plan, same limits after Start, same tables). */
static gm_status wm_check_plan(wm_state *s, const Gemma__Control__V1__StepPlan *p)
{
    const gm_engine *e = s->eng;
    int32_t max_seqs = s->max_seqs, bs = e->opts.kv_block_size, vocab = e->cfg.vocab_size;
    int32_t max_ctx = wm_max_context(e);
    if (p->n_seqs == 0)
        return gm_fail(GM_ERR_INVALID_ARG, "step %llu: no sequences", (unsigned long long)p->step_id);
    if (p->n_seqs > (size_t)max_seqs)
        return gm_fail(GM_ERR_INVALID_ARG, "step %llu: %zu sequences > max_seqs %d",
                       (unsigned long long)p->step_id, p->n_seqs, (int)max_seqs);
    if (++s->plan_no == 0) { /* wrapped: clear the stamps */
        memset(s->stamp, 0, (size_t)max_seqs * sizeof *s->stamp);
        s->plan_no = 1;
    }
    int64_t total = 0;
    for (size_t i = 0; i < p->n_seqs; i++) {
        const Gemma__Control__V1__SeqPlan *q = p->seqs[i];
        if (q->slot < 0 || q->slot >= max_seqs)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: slot %d out of range 0..%d", i, (int)q->slot,
                           (int)max_seqs - 1);
        if (s->stamp[q->slot] == s->plan_no)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: slot %d appears twice in step %llu", i, (int)q->slot,
                           (unsigned long long)p->step_id);
        s->stamp[q->slot] = s->plan_no;
        if (q->n_tokens == 0)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: no tokens", i);
        total += (int64_t)q->n_tokens;
        bool fed = q->n_tokens == 1 && q->tokens[0] == -1; /* the slot's previous sample (engine.h) */
        if (fed && q->start_pos == 0)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: token -1 (previous sample) at position 0", i);
        for (size_t j = 0; j < q->n_tokens && !fed; j++)
            if (q->tokens[j] < 0 || q->tokens[j] >= vocab)
                return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: token %d out of range 0..%d", i,
                               (int)q->tokens[j], (int)vocab - 1);
        if (q->start_pos < 0 || (int64_t)q->start_pos + (int64_t)q->n_tokens > max_ctx)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: positions %d..%lld exceed the context %d", i,
                           (int)q->start_pos, (long long)q->start_pos + (long long)q->n_tokens - 1, (int)max_ctx);
        int64_t have = q->reset ? 0 : s->tlen[q->slot];
        if (have < 0)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: slot %d has no block table (a step failed since; "
                                               "the plan must reset it)", i, (int)q->slot);
        int64_t len = have + (int64_t)q->n_block_table;
        if (len > s->max_blocks)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: slot %d would hold %lld KV blocks; at most %d", i,
                           (int)q->slot, (long long)len, (int)s->max_blocks);
        int64_t need = ((int64_t)q->start_pos + (int64_t)q->n_tokens + bs - 1) / bs;
        if (len < need)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: %lld KV blocks for %lld positions (need %lld)", i,
                           (long long)len, (long long)q->start_pos + (long long)q->n_tokens, (long long)need);
        for (size_t j = 0; j < q->n_block_table; j++)
            if (q->block_table[j] < 0 || q->block_table[j] >= s->kv_blocks)
                return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: KV block %d out of range 0..%lld", i,
                               (int)q->block_table[j], (long long)s->kv_blocks - 1);
        if (q->logits_mode < GM_LOGITS_NONE || q->logits_mode > GM_LOGITS_ALL)
            return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: logits_mode %d", i, (int)q->logits_mode);
        if (q->sampling) {
            const Gemma__Control__V1__Sampling *sp = q->sampling;
            if (!isfinite(sp->temperature) || sp->temperature < 0 || sp->top_k < 0 || !isfinite(sp->top_p) ||
                sp->top_p <= 0 || sp->top_p > 1)
                return gm_fail(GM_ERR_INVALID_ARG, "seq %zu: sampling temperature %g top_k %d top_p %g", i,
                               (double)sp->temperature, (int)sp->top_k, (double)sp->top_p);
        }
    }
    if (total > e->opts.max_tokens)
        return gm_fail(GM_ERR_INVALID_ARG, "step %llu: %lld tokens > max_tokens %d", (unsigned long long)p->step_id,
                       (long long)total, (int)e->opts.max_tokens);
    /* all good: apply */
    for (size_t i = 0; i < p->n_seqs; i++) {
        const Gemma__Control__V1__SeqPlan *q = p->seqs[i];
        int32_t *t = s->tables + (int64_t)q->slot * s->max_blocks;
        int32_t have = q->reset ? 0 : s->tlen[q->slot];
        if (q->n_block_table)
            memcpy(t + have, q->block_table, q->n_block_table * sizeof *t);
        s->tlen[q->slot] = have + (int32_t)q->n_block_table;
        if (q->sampling) {
            gm_sampling *sp = &s->samp[q->slot];
            sp->temperature = q->sampling->temperature;
            sp->top_k = q->sampling->top_k;
            sp->top_p = q->sampling->top_p;
            sp->seed = q->sampling->seed;
        } else if (q->reset) {
            s->samp[q->slot] = GM_SAMPLING_GREEDY;
        }
        gm_seq_step *o = &s->seqs[i];
        o->slot = q->slot;
        o->tokens = q->tokens;
        o->n_tokens = (int32_t)q->n_tokens;
        o->start_pos = q->start_pos;
        o->block_table = t;
        o->n_blocks = s->tlen[q->slot];
        o->logits_mode = q->logits_mode;
        o->sampling = s->samp[q->slot];
    }
    return GM_OK;
}

/* Run one plan; rank 0 always answers, other ranks only when their engine fails. */
static void wm_run_plan(wm_state *s, const Gemma__Control__V1__StepPlan *p)
{
    gm_clear_error();
    gm_status st = wm_check_plan(s, p);
    if (st != GM_OK) {
        wm_forget_slots(s);
        if (s->a.rank == 0) { /* every rank rejects it alike; rank 0 answers */
            GM_WARN("step %llu rejected: %s", (unsigned long long)p->step_id, gm_last_error());
            wm_send_result(s, p->step_id, st, gm_last_error(), NULL, 0);
        }
        return;
    }
    int32_t n = (int32_t)p->n_seqs;
    for (int32_t i = 0; i < n; i++)
        s->tokens[i] = -1;
    gm_step_out out = {s->tokens, NULL, 0};
    st = gm_engine_step(s->eng, s->seqs, n, &out);
    if (st != GM_OK) {
        wm_forget_slots(s);
        const char *why = gm_last_error();
        GM_ERROR("step %llu failed: %s: %s", (unsigned long long)p->step_id, gm_status_str(st), why);
        char msg[1024];
        snprintf(msg, sizeof msg, "rank %d: %s", (int)s->a.rank, why && *why ? why : gm_status_str(st));
        wm_send_result(s, p->step_id, st, msg, NULL, 0);
        return;
    }
    if (s->a.rank == 0)
        wm_send_result(s, p->step_id, GM_OK, NULL, s->tokens, n);
}

/* True when the monitor reports that the coordinator's connection went away. */
static bool wm_monitor_disconnected(wm_state *s)
{
    bool gone = false;
    for (;;) {
        zmq_msg_t ev;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, s->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        if (zmq_msg_size(&ev) >= 2) {
            uint16_t id;
            memcpy(&id, zmq_msg_data(&ev), 2);
            if (id == ZMQ_EVENT_DISCONNECTED)
                gone = true;
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        while (more) { /* the endpoint frame */
            zmq_msg_t f;
            zmq_msg_init(&f);
            if (zmq_msg_recv(&f, s->mon, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(&f);
                break;
            }
            more = zmq_msg_more(&f);
            zmq_msg_close(&f);
        }
    }
    return gone;
}

static bool wm_parent_gone(const wm_state *s)
{
    return s->a.parent_pid > 0 && (long)getppid() != s->a.parent_pid;
}

/* Receive and handle control messages until Shutdown or the coordinator is gone. */
static int wm_loop(wm_state *s)
{
    for (;;) {
        zmq_pollitem_t items[2] = {{s->sock, 0, ZMQ_POLLIN, 0}, {s->mon, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, s->mon ? 2 : 1, 500);
        if (rc < 0 && errno != EINTR) {
            GM_ERROR("poll: %s", zmq_strerror(errno));
            return 1;
        }
        if (wm_parent_gone(s)) {
            GM_WARN("parent process exited; stopping");
            return 1;
        }
        if (s->mon && (items[1].revents & ZMQ_POLLIN) && wm_monitor_disconnected(s) && s->exit_on_disconnect) {
            GM_WARN("coordinator socket %s went away; stopping", s->a.control);
            return 1;
        }
        if (!(items[0].revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, s->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            continue;
        }
        /* the per-step plan by hand; anything else (or an odd plan) through protobuf-c */
        ctl_msg *m = pd_decode_plan(zmq_msg_data(&msg), zmq_msg_size(&msg), &s->alloc);
        if (!m) {
            wm_arena_reset(&s->arena);
            m = gemma__control__v1__control_message__unpack(&s->alloc, zmq_msg_size(&msg), zmq_msg_data(&msg));
        }
        zmq_msg_close(&msg);
        if (!m) {
            wm_arena_reset(&s->arena);
            GM_WARN("malformed control message ignored");
            continue;
        }
        int stop = 0;
        switch (m->body_case) {
        case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_PLAN:
            wm_run_plan(s, m->plan);
            break;
        case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_START:
            if (m->start->kv_num_blocks > 0 && m->start->kv_num_blocks < s->kv_blocks)
                s->kv_blocks = m->start->kv_num_blocks;
            break;
        case GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN:
            GM_INFO("shutdown: %s", m->shutdown->reason ? m->shutdown->reason : "");
            stop = 1;
            break;
        default:
            GM_WARN("unexpected control message (case %d) ignored", (int)m->body_case);
            break;
        }
        wm_arena_reset(&s->arena); /* frees m */
        if (stop)
            return 0;
    }
}

static gm_status wm_connect(wm_state *s, char *identity, size_t cap)
{
    if (s->a.session)
        snprintf(identity, cap, "%d.%s", (int)s->a.rank, s->a.session);
    else
        snprintf(identity, cap, "%d", (int)s->a.rank);
    s->ctx = zmq_ctx_new();
    if (!s->ctx)
        return gm_fail(GM_ERR_ZMQ, "zmq_ctx_new: %s", zmq_strerror(errno));
    s->sock = zmq_socket(s->ctx, ZMQ_DEALER);
    if (!s->sock)
        return gm_fail(GM_ERR_ZMQ, "zmq_socket: %s", zmq_strerror(errno));
    int linger = 2000;
    zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s->sock, ZMQ_ROUTING_ID, identity, strlen(identity));
    char mon_ep[64];
    snprintf(mon_ep, sizeof mon_ep, "inproc://gm-worker-mon-%d", (int)getpid());
    if (zmq_socket_monitor(s->sock, mon_ep, ZMQ_EVENT_DISCONNECTED) == 0) {
        s->mon = zmq_socket(s->ctx, ZMQ_PAIR);
        if (s->mon && zmq_connect(s->mon, mon_ep) != 0) {
            zmq_close(s->mon);
            s->mon = NULL;
        }
    }
    s->exit_on_disconnect = strncmp(s->a.control, "ipc://", 6) == 0;
    if (zmq_connect(s->sock, s->a.control) != 0)
        return gm_fail(GM_ERR_ZMQ, "connect %s: %s", s->a.control, zmq_strerror(errno));
    return GM_OK;
}

/* NCCL bootstrap over the control plane: rank 0 makes the unique id and sends it
 * (NcclUniqueId); the coordinator relays it to the other ranks, which wait for it
 * here. The engine then joins the NCCL communicator with it (opts.nccl_id). */
static gm_status wm_nccl_bootstrap(wm_state *s)
{
#ifdef GM_HAVE_NCCL
    if (s->a.rank == 0) {
        ncclUniqueId id;
        ncclResult_t nr = ncclGetUniqueId(&id);
        if (nr != ncclSuccess)
            return gm_fail(GM_ERR_NCCL, "ncclGetUniqueId: %s", ncclGetErrorString(nr));
        _Static_assert(sizeof id == sizeof s->nccl_id, "ncclUniqueId is 128 bytes");
        memcpy(s->nccl_id, &id, sizeof s->nccl_id);
        Gemma__Control__V1__NcclUniqueId m = GEMMA__CONTROL__V1__NCCL_UNIQUE_ID__INIT;
        m.id.data = s->nccl_id;
        m.id.len = sizeof s->nccl_id;
        m.tp_size = s->a.tp;
        ctl_msg cm = GEMMA__CONTROL__V1__CONTROL_MESSAGE__INIT;
        cm.body_case = GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_NCCL_ID;
        cm.nccl_id = &m;
        return wm_send(s, &cm);
    }
    for (;;) {
        zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&it, 1, 500);
        if (rc < 0 && errno != EINTR)
            return gm_fail(GM_ERR_ZMQ, "poll: %s", zmq_strerror(errno));
        if (wm_parent_gone(s))
            return gm_fail(GM_ERR_CANCELLED, "parent exited while waiting for the NCCL id");
        if (!(it.revents & ZMQ_POLLIN))
            continue;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, s->sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&msg);
            continue;
        }
        ctl_msg *m = gemma__control__v1__control_message__unpack(NULL, zmq_msg_size(&msg), zmq_msg_data(&msg));
        zmq_msg_close(&msg);
        if (!m)
            continue;
        gm_status st = GM_ERR_INTERNAL; /* keep waiting */
        if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_NCCL_ID) {
            if (m->nccl_id->id.len != sizeof s->nccl_id) {
                st = gm_fail(GM_ERR_FORMAT, "NCCL id of %zu bytes, want %zu", m->nccl_id->id.len,
                             sizeof s->nccl_id);
            } else {
                memcpy(s->nccl_id, m->nccl_id->id.data, sizeof s->nccl_id);
                st = GM_OK;
            }
        } else if (m->body_case == GEMMA__CONTROL__V1__CONTROL_MESSAGE__BODY_SHUTDOWN) {
            st = gm_fail(GM_ERR_CANCELLED, "shut down while waiting for the NCCL id");
        }
        gemma__control__v1__control_message__free_unpacked(m, NULL);
        if (st != GM_ERR_INTERNAL)
            return st;
    }
#else
    return gm_fail(GM_ERR_UNSUPPORTED, "tp %d on the cuda backend: built without NCCL", (int)s->a.tp);
#endif
}

/* Build the communicator and the engine. */
static gm_status wm_load(wm_state *s)
{
    gm_engine_opts eo = s->a.eo;
    if (s->a.tp > 1) {
        if (eo.backend == GM_BACKEND_CPU) {
            gm_status st = gm_shm_comm_open(s->a.shm, s->a.rank, s->a.tp, &s->comm);
            if (st != GM_OK)
                return st;
            eo.comm = s->comm;
        } else if (eo.backend == GM_BACKEND_CUDA) {
            gm_status st = wm_nccl_bootstrap(s);
            if (st != GM_OK)
                return st;
            eo.nccl_id = s->nccl_id;
        }
    }
    gm_status st = gm_engine_create(&eo, &s->eng);
    if (st != GM_OK)
        return st;
    s->kv_blocks = s->eng->kv_num_blocks;
    int32_t ms = s->eng->opts.max_seqs > 0 ? s->eng->opts.max_seqs : 1;
    int32_t bs = s->eng->opts.kv_block_size > 0 ? s->eng->opts.kv_block_size : 1;
    s->max_seqs = ms;
    s->max_blocks = (int32_t)(((int64_t)wm_max_context(s->eng) + bs - 1) / bs);
    if (s->max_blocks < 1)
        s->max_blocks = 1;
    s->tokens = calloc((size_t)ms, sizeof *s->tokens);
    s->seqs = calloc((size_t)ms, sizeof *s->seqs);
    s->tables = malloc((size_t)ms * (size_t)s->max_blocks * sizeof *s->tables);
    s->tlen = malloc((size_t)ms * sizeof *s->tlen);
    s->samp = calloc((size_t)ms, sizeof *s->samp);
    s->stamp = calloc((size_t)ms, sizeof *s->stamp);
    if (!s->tokens || !s->seqs || !s->tables || !s->tlen || !s->samp || !s->stamp)
        return gm_fail(GM_ERR_NOMEM, "step buffers for %d sequences of %d KV blocks", (int)ms, (int)s->max_blocks);
    wm_forget_slots(s);
    return GM_OK;
}

static void wm_close(wm_state *s)
{
    gm_engine_destroy(&s->eng);
    gm_comm_destroy(&s->comm);
    free(s->tokens);
    free(s->seqs);
    free(s->tables);
    free(s->tlen);
    free(s->samp);
    free(s->stamp);
    free(s->txbuf);
    wm_arena_destroy(&s->arena);
    if (s->mon) {
        zmq_socket_monitor(s->sock, NULL, 0);
        zmq_close(s->mon);
    }
    if (s->sock)
        zmq_close(s->sock);
    if (s->ctx)
        zmq_ctx_term(s->ctx);
}

int main(int argc, char **argv)
{
    wm_state s;
    memset(&s, 0, sizeof s);
    s.alloc.alloc = wm_arena_alloc;
    s.alloc.free = wm_arena_free;
    s.alloc.allocator_data = &s.arena;
    int pr = parse_args(argc, argv, &s.a);
    if (pr != 0)
        return pr > 0 ? 0 : 2;
    static char tag[48];
    snprintf(tag, sizeof tag, "gemma-worker[%d]", (int)s.a.rank);
    gm_log_init(tag, (gm_log_level)s.a.log_level);
    if (wm_parent_gone(&s))
        return 1;

    char identity[128];
    gm_status st = wm_connect(&s, identity, sizeof identity);
    if (st == GM_OK)
        st = wm_send_hello(&s, identity);
    if (st != GM_OK) {
        GM_ERROR("%s", gm_last_error());
        wm_close(&s);
        return 1;
    }
    st = wm_load(&s);
    if (st != GM_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", gm_last_error()[0] ? gm_last_error() : gm_status_str(st));
        GM_ERROR("load failed: %s", err);
        wm_send_ready(&s, st, err);
        wm_close(&s); /* linger delivers the Ready */
        return 1;
    }
    GM_INFO("rank %d/%d ready: %s backend, %lld KV blocks", (int)s.a.rank, (int)s.a.tp,
            gm_backend_name(s.a.eo.backend), (long long)s.kv_blocks);
    if (wm_send_ready(&s, GM_OK, NULL) != GM_OK) {
        GM_ERROR("%s", gm_last_error());
        wm_close(&s);
        return 1;
    }
    int rc = wm_loop(&s);
    wm_close(&s);
    return rc;
}
