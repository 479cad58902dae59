/* admit.c - one admission path for both front doors, and the life of a request (server_int.h).
 *
 * A front door turns its own message (a protobuf GenerateRequest, an OpenAI JSON body) into a
 * gd_gen_req; everything from there on - parameter checks, tokenizing, the chat template, queueing,
 * completion and the counters - happens here, the same way for every client.
 *
 * Limits that keep one request from hurting the others:
 *  - prompt text: at most max_prompt_bytes, checked before tokenizing (PROMPT_TOO_LONG). Derived:
 *    the context x min(16, the tokenizer's longest piece in bytes): text with more bytes cannot fit
 *    the context unless its tokens average more than 16 bytes. A NUL byte is INVALID_ARGUMENT.
 *  - frames: the client socket's ZMQ_MAXMSGSIZE is max(the prompt limit, 6 bytes per token of
 *    context) + 64K; libzmq drops the connection of a peer that sends more.
 *  - tokenizing runs on a thread of its own (tokq.h): a megabyte prompt never stalls the loop.
 *  - memory of queued requests: each request not yet running is charged, per choice, 1K + 4 bytes per
 *    token it may hold (prompt + max new tokens, with its block table; the text while it is tokenized);
 *    past max_waiting_memory a new request gets OVERLOADED. The charge ends when it first runs or is
 *    freed. After large frees the heap is trimmed, so RSS comes back when a client leaves.
 *
 * A request whose prompt is tokenized on the thread is pending: it has its choices (r->n_ch, their text
 * outputs) but no sequences until gd_admit_on_tokens queues it - or completes it with an error, which
 * its front door answers like any other. Nothing of it is dirty before that. */
#define _GNU_SOURCE
#include <malloc.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/utf8.h"
#include "daemon/server_int.h"
#include "daemon/spec.h"

gd_req *gd_req_new(gd_server *s, gd_front f, uint64_t rid)
{
    gd_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->front = f;
    r->rid = rid;
    r->lp_top = -1;
    r->t_arrival = gm_now_ms();
    r->live_prev = s->live_tail;
    if (s->live_tail)
        s->live_tail->live_next = r;
    else
        s->live_head = r;
    s->live_tail = r;
    return r;
}

#define REQ_OVERHEAD 1024      /* bytes of a request beside its token arrays (gd_req, sched_seq, maps) */
#define PIECE_BYTES_CAP 16      /* prompt bytes per context token, at most (the limit above) */
#define FRAME_HEADROOM (64 << 10)
#define TRIM_BYTES (8 << 20)

void gd_req_uncharge(gd_server *s, gd_req *r)
{
    s->waiting_bytes -= r->charge;
    r->charge = 0;
}

/* r stops waiting for its prompt's ids (they came, or it ended). */
static void req_untokenize(gd_server *s, gd_req *r)
{
    if (r->tok_job) {
        u64map_del(&s->tok_jobs, r->tok_job);
        r->tok_job = 0;
        s->n_tokenizing--;
    }
    free(r->pend);
    r->pend = NULL;
}

void gd_req_free(gd_server *s, gd_req *r)
{
    req_untokenize(s, r);
    gd_req_uncharge(s, r);
    s->freed_bytes += REQ_OVERHEAD;
    gd_beam_free(s, r); /* its beams past the choices' */
    for (int32_t i = 0; i < r->n_ch; i++) {
        gd_choice *c = &r->ch[i];
        if (c->seq) {
            s->freed_bytes += 4 * (int64_t)c->seq->cap;
            sched_seq_free(s->sch, &c->seq);
        }
        gm_detok_destroy(&c->dt);
        txo_destroy(&c->tx);
        free(c->lp), free(c->lp_ids), free(c->lp_alts);
    }
    free(r->ch);
    if (r->front == GD_FRONT_RPC && r->cl)
        gd_rpc_forget(s, r);
    if (r->live_prev)
        r->live_prev->live_next = r->live_next;
    else
        s->live_head = r->live_next;
    if (r->live_next)
        r->live_next->live_prev = r->live_prev;
    else
        s->live_tail = r->live_prev;
    free(r->errmsg);
    free(r);
}

bool gd_req_logprobs(const gd_req *r, int32_t ch, int32_t i, float *lp, const int32_t **top_ids,
                     const float **top_lps, int32_t *n_top)
{
    if (!r || r->lp_top < 0 || ch < 0 || ch >= r->n_ch)
        return false;
    const gd_choice *c = &r->ch[ch];
    if (i < 0 || i >= c->n_lp)
        return false;
    *lp = c->lp[i];
    *top_ids = c->lp_ids + (size_t)i * (size_t)r->lp_top;
    *top_lps = c->lp_alts + (size_t)i * (size_t)r->lp_top;
    *n_top = r->lp_top;
    return true;
}

void gd_req_add_logprobs(gd_req *r, int32_t ch, const gm_token_logprobs *lp)
{
    if (r->lp_top < 0 || ch < 0 || ch >= r->n_ch)
        return;
    gd_choice *ci = &r->ch[ch];
    size_t k = (size_t)r->lp_top;
    if (ci->n_lp == ci->lp_cap) {
        int32_t cap = ci->lp_cap ? 2 * ci->lp_cap : 64;
        float *a = realloc(ci->lp, (size_t)cap * sizeof *a);
        if (a)
            ci->lp = a;
        int32_t *b = k ? realloc(ci->lp_ids, (size_t)cap * k * sizeof *b) : ci->lp_ids;
        if (b)
            ci->lp_ids = b;
        float *c = k ? realloc(ci->lp_alts, (size_t)cap * k * sizeof *c) : ci->lp_alts;
        if (c)
            ci->lp_alts = c;
        if (!a || (k && (!b || !c))) { /* out of memory: the choice keeps the entries it has */
            GM_WARN("request %llu choice %d: no memory for log-probabilities; the rest are dropped",
                    (unsigned long long)r->rid, (int)ch);
            return;
        }
        ci->lp_cap = cap;
    }
    size_t at = (size_t)ci->n_lp * k;
    ci->lp[ci->n_lp] = lp ? lp->logprob : NAN;
    for (size_t j = 0; j < k; j++) {
        bool have = lp && (int32_t)j < lp->n_top;
        ci->lp_ids[at + j] = have ? lp->top_ids[j] : -1;
        ci->lp_alts[at + j] = have ? lp->top_logprobs[j] : NAN;
    }
    ci->n_lp++;
}

void gd_req_mark_dirty(gd_server *s, gd_req *r)
{
    if (r->dirty)
        return;
    if (r->front == GD_FRONT_RPC) {
        gd_rpc_mark_dirty(s, r);
        return;
    }
    r->dirty = true;
    r->dirty_next = NULL;
    if (s->http_dirty_tail)
        s->http_dirty_tail->dirty_next = r;
    else
        s->http_dirty_head = r;
    s->http_dirty_tail = r;
}

/* Flush what the detokenizer holds into the text output. */
static void choice_flush_text(gd_choice *c)
{
    if (c->dt && c->tx && !txo_stopped(c->tx)) {
        char buf[GM_DETOK_MAX_OUT];
        size_t n = gm_detok_flush(c->dt, buf);
        if (n)
            txo_append(c->tx, buf, n);
    }
    if (c->tx)
        txo_finish(c->tx);
}

/* Tokens generated by all of r's choices, and the most by one. */
static int32_t req_generated(const gd_req *r, int32_t *most)
{
    int32_t sum = 0, top = 0;
    for (int32_t i = 0; i < r->n_ch; i++) {
        int32_t g = r->ch[i].seq ? sched_seq_generated(r->ch[i].seq) : 0;
        sum += g;
        top = g > top ? g : top;
    }
    if (most)
        *most = top;
    return sum;
}

void gd_choice_complete(gd_server *s, gd_req *r, int32_t i, fin_reason fr)
{
    gd_choice *c = &r->ch[i];
    if (r->done || c->done)
        return;
    c->done = true;
    c->finish = fr;
    choice_flush_text(c);
    if (++r->n_done == r->n_ch)
        gd_req_complete(s, r, fr, GEMMA__V1__ERROR_CODE__ERROR_CODE_NONE, NULL);
    else if (r->stream)
        gd_req_mark_dirty(s, r);
}

void gd_req_complete(gd_server *s, gd_req *r, fin_reason fr, err_code code, const char *fmt, ...)
{
    if (r->done)
        return;
    r->done = true;
    req_untokenize(s, r); /* its ids, if they still come, are dropped */
    r->finish = fr;
    r->err = code;
    r->t_end = gm_now_ms();
    if (fmt) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        gm_utf8_vformat(msg, sizeof(msg), fmt, ap); /* client text in it: valid UTF-8, cut between characters */
        va_end(ap);
        r->errmsg = strdup(msg);
    }
    gd_beam_end(s, r);
    for (int32_t i = 0; i < r->n_ch; i++) { /* the choices still going end with the request */
        gd_choice *c = &r->ch[i];
        if (c->done)
            continue;
        c->done = true;
        c->finish = fr;
        if (c->seq && c->seq->state != SCHED_FINISHED)
            sched_finish_seq(s->sch, c->seq, fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR ? SCHED_FINISH_ERROR
                                                                                          : SCHED_FINISH_CANCELLED);
        choice_flush_text(c);
    }
    r->n_done = r->n_ch;
    int32_t most = 0, gen = req_generated(r, &most);
    GM_DEBUG("request %llu: %s, %d prompt + %d generated tokens, queue %.1f ms, ttft %.1f ms, total %.1f ms%s%s",
             (unsigned long long)r->rid,
             fr == GEMMA__V1__FINISH_REASON__FINISH_LENGTH  ? "length"
             : fr == GEMMA__V1__FINISH_REASON__FINISH_STOP  ? "stop"
             : fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR ? "error"
                                                            : "cancelled",
             r->n_prompt, gen, r->t_sched > 0 ? r->t_sched - r->t_arrival : 0,
             r->t_first > 0 ? r->t_first - r->t_arrival : 0, r->t_end - r->t_arrival, r->errmsg ? ": " : "",
             r->errmsg ? r->errmsg : "");
    if (fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR)
        s->c.requests_failed++;
    else if (fr == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED)
        s->c.requests_cancelled++;
    else
        s->c.requests_finished++;
    met_req mr = {r->t_arrival, r->t_sched, r->t_first, r->t_end, r->n_prompt, gen, most};
    met_request_done(&s->met, &mr,
                     fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR       ? MET_ERROR
                     : fr == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED ? MET_CANCELLED
                     : fr == GEMMA__V1__FINISH_REASON__FINISH_LENGTH    ? MET_LENGTH
                                                                        : MET_STOP,
                     code);
    gd_req_mark_dirty(s, r);
}

void gd_cancel_all(gd_server *s, err_code code, const char *why)
{
    for (gd_req *r = s->live_head; r; r = r->live_next)
        if (!r->done)
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, code, "%s", why);
}

/* The penalties, logprobs and min_tokens of g (OpenAI's and vLLM's ranges); the reason into msg. */
static bool check_extensions(const gd_gen_req *g, char *msg, size_t cap)
{
    if (g->top_logprobs < 0 || g->top_logprobs > GM_MAX_TOP_LOGPROBS) {
        snprintf(msg, cap, "top_logprobs %d must be in 0..%d", g->top_logprobs, GM_MAX_TOP_LOGPROBS);
        return false;
    }
    const float pen[2] = {g->presence_penalty, g->frequency_penalty};
    const char *name[2] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++)
        if (!(pen[i] >= -2.0f && pen[i] <= 2.0f)) {
            snprintf(msg, cap, "%s %g must be in [-2, 2]", name[i], (double)pen[i]);
            return false;
        }
    if (!isfinite(g->repetition_penalty) || g->repetition_penalty < 0.0f) {
        snprintf(msg, cap, "repetition_penalty %g must be > 0 and finite (0 = unset = 1)", (double)g->repetition_penalty);
        return false;
    }
    if (g->min_tokens < 0) {
        snprintf(msg, cap, "min_tokens %d is negative", g->min_tokens);
        return false;
    }
    if (g->max_tokens > 0 && g->min_tokens > g->max_tokens) {
        snprintf(msg, cap, "min_tokens %d exceeds max_tokens %lld", g->min_tokens, (long long)g->max_tokens);
        return false;
    }
    return true;
}

/* Check the sampling parameters into *out; the reason into msg on failure. */
static bool check_sampling(const gd_gen_req *g, gm_sampling *out, char *msg, size_t cap)
{
    if (!check_extensions(g, msg, cap))
        return false;
    if (!isfinite(g->temperature) || g->temperature < 0) {
        snprintf(msg, cap, "temperature %g must be finite and >= 0", (double)g->temperature);
        return false;
    }
    if (g->top_k < 0) {
        snprintf(msg, cap, "top_k %d must be >= 0", g->top_k);
        return false;
    }
    float tp = g->top_p == 0.0f ? 1.0f : g->top_p;
    if (!(tp > 0.0f && tp <= 1.0f)) {
        snprintf(msg, cap, "top_p %g must be in (0, 1]", (double)g->top_p);
        return false;
    }
    out->temperature = g->temperature;
    out->top_k = g->top_k;
    out->top_p = tp;
    out->seed = g->seed;
    out->presence_penalty = g->presence_penalty;
    out->frequency_penalty = g->frequency_penalty;
    out->repetition_penalty = g->repetition_penalty == 0.0f ? 1.0f : g->repetition_penalty;
    out->logprobs = g->logprobs || g->top_logprobs > 0;
    out->top_logprobs = g->top_logprobs;
    return true;
}

/* Beam search's settings, and what it cannot go with (the search picks tokens itself and returns
 * whole hypotheses at the end). */
static bool check_beam(const gd_gen_req *g, char *msg, size_t cap)
{
    if (g->beam_width < 0 || g->beam_width > SCHED_MAX_BEAM) {
        snprintf(msg, cap, "beam_width %d: 0 or 1 (off), or 2..%d", g->beam_width, SCHED_MAX_BEAM);
        return false;
    }
    if (g->beam_width <= 1)
        return true;
    const char *bad = g->n > g->beam_width                 ? "n larger than beam_width"
                      : g->temperature > 0.0f              ? "temperature > 0 (beam search is deterministic)"
                      : g->top_k > 1                       ? "top_k"
                      : g->top_p > 0.0f && g->top_p < 1.0f ? "top_p < 1"
                      : g->stream                          ? "streaming (hypotheses come back whole at the end)"
                      : g->n_stops > 0                     ? "stop strings"
                      : g->min_tokens > 0                  ? "min_tokens"
                      : g->top_logprobs > 0                ? "top_logprobs (logprobs alone is supported)"
                      : g->presence_penalty != 0.0f || g->frequency_penalty != 0.0f ||
                              (g->repetition_penalty != 0.0f && g->repetition_penalty != 1.0f)
                          ? "penalties"
                          : NULL;
    if (bad) {
        snprintf(msg, cap, "beam search (beam_width %d) does not go with %s", g->beam_width, bad);
        return false;
    }
    if (!isfinite(g->length_penalty)) {
        snprintf(msg, cap, "length_penalty %g must be finite", (double)g->length_penalty);
        return false;
    }
    return true;
}

/* What a request keeps while its prompt is tokenized off the loop. */
struct gd_pending {
    sched_req sr;                      /* everything but the prompt */
    int32_t stop_ids[GD_MAX_STOP_IDS]; /* sr.stop_ids points here */
};

/* The prompt byte limit for a context of ctx tokens (the rule above). */
static int64_t prompt_limit(const gd_server *s, int64_t ctx)
{
    if (s->cfg->max_prompt_bytes > 0)
        return s->cfg->max_prompt_bytes;
    int64_t per = s->tok_piece_max > 0 && s->tok_piece_max < PIECE_BYTES_CAP ? s->tok_piece_max : PIECE_BYTES_CAP;
    return ctx * per > 4096 ? ctx * per : 4096;
}

gm_status gd_admit_open(gd_server *s, int64_t ctx_bound)
{
    if (s->tok) {
        char buf[512];
        int32_t V = gm_tok_vocab_size(s->tok);
        for (int32_t id = 0; id < V; id++) {
            int32_t n = (int32_t)gm_tok_piece_bytes(s->tok, id, buf, sizeof buf);
            if (n > s->tok_piece_max)
                s->tok_piece_max = n;
        }
    }
    int64_t ids = 6 * ctx_bound, text = prompt_limit(s, ctx_bound);
    s->frame_limit = s->cfg->max_message_bytes > 0 ? s->cfg->max_message_bytes
                                                   : (ids > text ? ids : text) + FRAME_HEADROOM;
    GM_INFO("client limits: frames of at most %lld bytes, prompt text of at most %lld bytes (context %lld, "
            "longest piece %d bytes)", (long long)s->frame_limit, (long long)text, (long long)ctx_bound,
            (int)s->tok_piece_max);
    return GM_OK;
}

void gd_admit_close(gd_server *s)
{
    tokq_destroy(&s->tokq);
    u64map_free(&s->tok_jobs);
}

void gd_admit_trim(gd_server *s, double now)
{
    /* soon after large frees; within 10 s after any (clients' sockets go a little after their requests) */
    if (!(s->freed_bytes >= TRIM_BYTES && now - s->last_trim_ms >= 1000) &&
        !(s->freed_bytes > 0 && now - s->last_trim_ms >= 10000))
        return;
    malloc_trim(0);
    s->freed_bytes = 0;
    s->last_trim_ms = now;
}

/* Reject r before it reaches the scheduler. */
#define REJECT(code, ...)                                                                                              \
    do {                                                                                                               \
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__##code, __VA_ARGS__);    \
        goto out;                                                                                                      \
    } while (0)

/* Queue r with its prompt ids (copied) and sr's parameters: its choices get their sequences. */
static void admit_queue(gd_server *s, gd_req *r, sched_req *sr, const int32_t *ids, int32_t n_ids)
{
    sched_seq *seqs[SCHED_MAX_N];
    r->n_prompt = n_ids;
    sr->prompt = ids;
    sr->n_prompt = n_ids;
    sr->user = r;
    int64_t room = sr->max_tokens > 0 ? sr->max_tokens : s->max_context; /* what a sequence may hold */
    int64_t n_seqs = sr->beam_width > r->n_ch ? sr->beam_width : r->n_ch; /* beams: one sequence each */
    int64_t charge = n_seqs * (REQ_OVERHEAD + 5 * ((int64_t)n_ids + room)); /* tokens + block tables, rounded up */
    if (s->waiting_bytes + charge > s->cfg->max_waiting_memory && s->cfg->max_waiting_memory > 0)
        REJECT(OVERLOADED, "the waiting queue holds %lld bytes of requests; this one would pass max_waiting_memory "
               "(%lld): retry later", (long long)s->waiting_bytes, (long long)s->cfg->max_waiting_memory);
    switch (sched_add(s->sch, sr, seqs)) {
    case SCHED_ACCEPTED:
        break;
    case SCHED_REJECT_INVALID:
        REJECT(INVALID_ARGUMENT, "%s", gm_last_error());
    case SCHED_REJECT_TOO_LONG:
        REJECT(PROMPT_TOO_LONG, "%s", gm_last_error());
    case SCHED_REJECT_FULL:
        REJECT(OVERLOADED, "%s", gm_last_error());
    default:
        REJECT(INTERNAL, "%s", gm_last_error());
    }
    r->charge = 0;
    for (int32_t i = 0; i < n_seqs; i++) {
        if (i < r->n_ch)
            r->ch[i].seq = seqs[i];
        r->charge += REQ_OVERHEAD + 4 * ((int64_t)seqs[i]->cap + seqs[i]->blocks_cap);
    }
    if (sr->beam_width > 1 && gd_beam_start(s, r, seqs, sr->beam_width) != GM_OK) {
        for (int32_t i = r->n_ch; i < n_seqs; i++) /* the choices' are freed with r */
            sched_seq_free(s->sch, &seqs[i]);
        r->charge = 0;
        REJECT(INTERNAL, "%s", gm_last_error());
    }
    s->waiting_bytes += r->charge;
    s->c.requests_total++;
    s->c.prompt_tokens += n_ids;
out:
    return;
}

void gd_admit(gd_server *s, gd_req *r, const gd_gen_req *g)
{
    r->stream = g->stream;
    int32_t *ids = NULL;
    int32_t n_ids = 0;
    char msg[512];
    gm_sampling samp = GM_SAMPLING_GREEDY;
    size_t stop_lens[GD_MAX_STOP];
    int64_t text_bytes = 0;
    int32_t n = g->n > 1 ? g->n : 1;

    if (g->n < 0 || g->n > SCHED_MAX_N)
        n = 1; /* the choice the rejection below reports */
    r->ch = calloc((size_t)n, sizeof *r->ch);
    if (!r->ch)
        REJECT(INTERNAL, "out of memory");
    r->n_ch = n;
    if (s->stopping)
        REJECT(SHUTTING_DOWN, "gemmad is shutting down and accepts no new requests");
    if (!s->pool_ok) /* no worker to run it: say so now rather than keep it waiting through the outage */
        REJECT(UNAVAILABLE, "%s", s->sch ? "gemmad's workers failed and are restarting: retry shortly"
                                         : "gemmad is still starting its workers (loading the model): retry shortly");
    if (!check_sampling(g, &samp, msg, sizeof(msg)))
        REJECT(INVALID_ARGUMENT, "%s", msg);
    if (g->n < 0 || g->n > SCHED_MAX_N)
        REJECT(INVALID_ARGUMENT, "n = %d sequences: 1..%d allowed", g->n, SCHED_MAX_N);
    if (!check_beam(g, msg, sizeof msg))
        REJECT(INVALID_ARGUMENT, "%s", msg);
    if (g->max_tokens < 0)
        REJECT(INVALID_ARGUMENT, "max_tokens %lld is negative", (long long)g->max_tokens);
    if (g->max_tokens > s->max_context)
        REJECT(INVALID_ARGUMENT, "max_tokens %lld exceeds the context of %d tokens", (long long)g->max_tokens,
               s->max_context);
    if (g->n_stops > GD_MAX_STOP)
        REJECT(INVALID_ARGUMENT, "%zu stop strings: at most %d", g->n_stops, GD_MAX_STOP);
    if (g->n_stops > 0 && !s->tok)
        REJECT(INVALID_ARGUMENT, "stop strings need a tokenizer; this gemmad has none (start it with --model)");
    for (size_t i = 0; i < g->n_stops; i++) {
        size_t L = strlen(g->stops[i]);
        if (L == 0 || L > GD_MAX_STOP_LEN)
            REJECT(INVALID_ARGUMENT, "stop string %zu has %zu bytes: 1..%d allowed", i, L, GD_MAX_STOP_LEN);
        if (!gm_utf8_valid(g->stops[i], L))
            REJECT(INVALID_ARGUMENT, "stop string %zu is not valid UTF-8", i);
        stop_lens[i] = L;
    }
    if (g->n_stop_ids > GD_MAX_STOP_IDS)
        REJECT(INVALID_ARGUMENT, "%zu stop token ids: at most %d", g->n_stop_ids, GD_MAX_STOP_IDS);
    for (size_t i = 0; i < g->n_stop_ids; i++)
        if (g->stop_ids[i] < 0 || g->stop_ids[i] >= s->mcfg.vocab_size)
            REJECT(INVALID_ARGUMENT, "stop token id %d is outside the vocabulary [0, %d)", g->stop_ids[i],
                   s->mcfg.vocab_size);

    /* the prompt, checked without tokenizing it */
    int64_t limit = prompt_limit(s, s->max_context);
    switch (g->kind) {
    case GD_PROMPT_TEXT: {
        if (g->text_len == 0)
            REJECT(INVALID_ARGUMENT, "the prompt is empty");
        if (!s->tok)
            REJECT(INVALID_ARGUMENT, "text prompts need a tokenizer; this gemmad has none: send token ids");
        const char *nul = memchr(g->text, 0, g->text_len);
        if (nul)
            REJECT(INVALID_ARGUMENT, "the prompt has a NUL byte at position %zu", (size_t)(nul - g->text));
        text_bytes = (int64_t)g->text_len;
        break;
    }
    case GD_PROMPT_IDS: {
        if (g->n_ids == 0)
            REJECT(INVALID_ARGUMENT, "the prompt is empty");
        if (g->n_ids > (size_t)s->max_context)
            REJECT(PROMPT_TOO_LONG, "the prompt has %zu tokens; the context is %d", g->n_ids, s->max_context);
        for (size_t i = 0; i < g->n_ids; i++)
            if (g->ids[i] < 0 || g->ids[i] >= s->mcfg.vocab_size)
                REJECT(INVALID_ARGUMENT, "prompt token %zu is %d, outside the vocabulary [0, %d)", i, g->ids[i],
                       s->mcfg.vocab_size);
        break;
    }
    case GD_PROMPT_CHAT: {
        if (g->n_msgs == 0)
            REJECT(INVALID_ARGUMENT, "the chat has no messages");
        if (!s->tok)
            REJECT(INVALID_ARGUMENT, "chat prompts need a tokenizer; this gemmad has none: send token ids");
        if (g->n_msgs > GD_MAX_CHAT_MSGS)
            REJECT(INVALID_ARGUMENT, "%zu chat messages: at most %d", g->n_msgs, GD_MAX_CHAT_MSGS);
        for (size_t i = 0; i < g->n_msgs; i++) {
            if (!g->msgs[i].role || !g->msgs[i].text)
                REJECT(INVALID_ARGUMENT, "chat message %zu has no role or text", i);
            text_bytes += (int64_t)strlen(g->msgs[i].role) + (int64_t)strlen(g->msgs[i].text);
        }
        break;
    }
    default:
        REJECT(INVALID_ARGUMENT, "the prompt is empty (no text, tokens or chat given)");
    }
    if (text_bytes > limit)
        REJECT(PROMPT_TOO_LONG, "the prompt has %lld bytes of text; at most %lld can fit the context of %d tokens "
               "(max_prompt_bytes)", (long long)text_bytes, (long long)limit, s->max_context);

    for (int32_t i = 0; i < n; i++) {
        gd_choice *c = &r->ch[i];
        c->tx = txo_new((const char **)g->stops, stop_lens, (int)g->n_stops);
        if (s->tok)
            c->dt = gm_detok_new(s->tok);
        if (!c->tx || (s->tok && !c->dt))
            REJECT(INTERNAL, "out of memory");
    }
    r->min_tokens = g->min_tokens;
    r->lp_top = samp.logprobs ? samp.top_logprobs : -1;
    if (g->beam_width > 1) { /* every beam asks for its top 2W; what it samples (greedy) is not used */
        r->beam_length_penalty = g->length_penalty;
        r->beam_early_stopping = g->early_stopping;
        samp.logprobs = 1;
        samp.top_logprobs = 2 * g->beam_width;
    }
    sched_req sr = {0};
    sr.max_tokens = (int32_t)g->max_tokens;
    sr.sampling = samp;
    sr.stop_ids = g->stop_ids;
    sr.n_stop_ids = (int32_t)g->n_stop_ids;
    sr.ignore_eos = g->ignore_eos;
    sr.stop_at_eot = g->kind == GD_PROMPT_CHAT;
    sr.min_tokens = g->min_tokens;
    sr.n = g->beam_width > 1 ? 1 : n;
    sr.beam_width = g->beam_width > 1 ? g->beam_width : 0;
    if (g->spec_k < -1 || g->spec_k > SPEC_MAX_K)
        REJECT(INVALID_ARGUMENT, "speculative_tokens %d: -1 (off), 0 (the default) or 1..%d", g->spec_k, SPEC_MAX_K);
    sr.spec_k = g->spec_k < 0 ? 0 : g->spec_k > 0 ? g->spec_k : s->cfg->speculative_tokens;
    /* stop strings armed at min_tokens may match text not yet sent (textout.h), which depends on when
     * the front door sent it: with several tokens a step that would differ, so such requests decode
     * one token a step */
    if (g->min_tokens > 0 && g->n_stops > 0)
        sr.spec_k = 0;
    if (sr.beam_width > 1) /* beams choose their tokens themselves */
        sr.spec_k = 0;
    if (g->kind == GD_PROMPT_IDS) {
        admit_queue(s, r, &sr, g->ids, (int32_t)g->n_ids);
        goto out;
    }
    if (s->tokq) { /* off the loop: the ids come back through gd_admit_on_tokens */
        if (s->waiting_bytes + REQ_OVERHEAD + text_bytes > s->cfg->max_waiting_memory && s->cfg->max_waiting_memory > 0)
            REJECT(OVERLOADED, "the waiting queue holds %lld bytes of requests; this one would pass "
                   "max_waiting_memory (%lld): retry later", (long long)s->waiting_bytes,
                   (long long)s->cfg->max_waiting_memory);
        r->pend = malloc(sizeof *r->pend);
        uint64_t job = ++s->tok_serial;
        if (!r->pend || !u64map_put(&s->tok_jobs, job, r))
            REJECT(INTERNAL, "out of memory");
        r->tok_job = job;
        s->n_tokenizing++;
        r->pend->sr = sr;
        if (g->n_stop_ids)
            memcpy(r->pend->stop_ids, g->stop_ids, g->n_stop_ids * sizeof(int32_t));
        r->pend->sr.stop_ids = r->pend->stop_ids;
        gm_status st = g->kind == GD_PROMPT_TEXT ? tokq_submit_text(s->tokq, job, g->text, g->text_len)
                                                 : tokq_submit_chat(s->tokq, job, g->msgs, (int32_t)g->n_msgs);
        if (st != GM_OK)
            REJECT(OVERLOADED, "cannot queue the prompt for tokenizing: %s", gm_last_error());
        r->charge = REQ_OVERHEAD + text_bytes;
        s->waiting_bytes += r->charge;
        goto out;
    }
    if ((g->kind == GD_PROMPT_TEXT ? gm_tok_encode(s->tok, g->text, g->text_len, true, &ids, &n_ids)
                                   : gm_tok_encode_chat_fmt(s->tok, &s->chat, g->msgs, (int32_t)g->n_msgs, &ids,
                                                            &n_ids)) != GM_OK)
        REJECT(INVALID_ARGUMENT, "%s: %s", sr.stop_at_eot ? "bad chat" : "cannot tokenize the prompt",
               gm_last_error());
    admit_queue(s, r, &sr, ids, n_ids);
out:
    free(ids);
}

void gd_admit_on_tokens(gd_server *s)
{
    tokq_result t;
    for (int k = 0; k < GD_RECV_BATCH && tokq_take(s->tokq, &t); k++) {
        gd_req *r = u64map_get(&s->tok_jobs, t.job);
        if (!r || r->done) { /* cancelled, or its client went away meanwhile */
            free(t.ids);
            continue;
        }
        gd_pending *p = r->pend;
        r->pend = NULL;
        req_untokenize(s, r);
        gd_req_uncharge(s, r);
        if (t.status != GM_OK)
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT,
                            "%s: %s", p->sr.stop_at_eot ? "bad chat" : "cannot tokenize the prompt", t.error);
        else if (s->stopping)
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__SHUTTING_DOWN,
                            "gemmad is shutting down and accepts no new requests");
        else if (!s->pool_ok)
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__UNAVAILABLE,
                            "gemmad's workers failed and are restarting: retry shortly");
        else
            admit_queue(s, r, &p->sr, t.ids, t.n_ids);
        if (r->front == GD_FRONT_HTTP && !r->done) /* admitted: a stream's headers may go now (front_http.c) */
            gd_req_mark_dirty(s, r);
        free(p);
        free(t.ids);
    }
}
#undef REJECT
