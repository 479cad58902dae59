/* admit.c - one admission path for both front doors, and the life of a request (server_int.h).
 *
 * A front door turns its own message (a protobuf GenerateRequest, an OpenAI JSON body) into a
 * gd_gen_req; everything from there on - parameter checks, tokenizing, the chat template, queueing,
 * completion and the counters - happens here, the same way for every client. */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/utf8.h"
#include "daemon/server_int.h"

gd_req *gd_req_new(gd_server *s, gd_front f, uint64_t rid)
{
    gd_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->front = f;
    r->rid = rid;
    r->t_arrival = gm_now_ms();
    r->live_prev = s->live_tail;
    if (s->live_tail)
        s->live_tail->live_next = r;
    else
        s->live_head = r;
    s->live_tail = r;
    return r;
}

void gd_req_free(gd_server *s, gd_req *r)
{
    if (r->seq)
        sched_seq_free(s->sch, &r->seq);
    gm_detok_destroy(&r->dt);
    txo_destroy(&r->tx);
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
static void req_flush_text(gd_req *r)
{
    if (r->dt && r->tx && !txo_stopped(r->tx)) {
        char buf[GM_DETOK_MAX_OUT];
        size_t n = gm_detok_flush(r->dt, buf);
        if (n)
            txo_append(r->tx, buf, n);
    }
    if (r->tx)
        txo_finish(r->tx);
}

void gd_req_complete(gd_server *s, gd_req *r, fin_reason fr, err_code code, const char *fmt, ...)
{
    if (r->done)
        return;
    r->done = true;
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
    if (r->seq && r->seq->state != SCHED_FINISHED)
        sched_finish_seq(s->sch, r->seq, fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR ? SCHED_FINISH_ERROR
                                                                                       : SCHED_FINISH_CANCELLED);
    req_flush_text(r);
    GM_DEBUG("request %llu: %s, %d prompt + %d generated tokens, queue %.1f ms, ttft %.1f ms, total %.1f ms%s%s",
             (unsigned long long)r->rid,
             fr == GEMMA__V1__FINISH_REASON__FINISH_LENGTH  ? "length"
             : fr == GEMMA__V1__FINISH_REASON__FINISH_STOP  ? "stop"
             : fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR ? "error"
                                                            : "cancelled",
             r->n_prompt, r->seq ? sched_seq_generated(r->seq) : 0, r->t_sched > 0 ? r->t_sched - r->t_arrival : 0,
             r->t_first > 0 ? r->t_first - r->t_arrival : 0, r->t_end - r->t_arrival, r->errmsg ? ": " : "",
             r->errmsg ? r->errmsg : "");
    if (fr == GEMMA__V1__FINISH_REASON__FINISH_ERROR) {
        s->c.requests_failed++;
    } else if (fr == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED) {
        s->c.requests_cancelled++;
    } else {
        s->c.requests_finished++;
        if (r->t_sched > 0)
            met_ring_add(&s->queue, r->t_sched - r->t_arrival);
        if (r->t_first > 0) {
            met_ring_add(&s->ttft, r->t_first - r->t_arrival);
            int32_t gen = r->seq ? sched_seq_generated(r->seq) : 0;
            if (gen > 1)
                met_ring_add(&s->tpot, (r->t_end - r->t_first) / (gen - 1));
        }
    }
    gd_req_mark_dirty(s, r);
}

void gd_cancel_all(gd_server *s, err_code code, const char *why)
{
    for (gd_req *r = s->live_head; r; r = r->live_next)
        if (!r->done)
            gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, code, "%s", why);
}

/* Check the sampling parameters into *out; the reason into msg on failure. */
static bool check_sampling(const gd_gen_req *g, gm_sampling *out, char *msg, size_t cap)
{
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
    return true;
}

/* Reject r before it reaches the scheduler. */
#define REJECT(code, ...)                                                                                              \
    do {                                                                                                               \
        gd_req_complete(s, r, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__##code, __VA_ARGS__);    \
        goto out;                                                                                                      \
    } while (0)

void gd_admit(gd_server *s, gd_req *r, const gd_gen_req *g)
{
    r->stream = g->stream;
    int32_t *ids = NULL;
    int32_t n_ids = 0;
    bool chat = false;
    char msg[512];
    gm_sampling samp = GM_SAMPLING_GREEDY;
    size_t stop_lens[GD_MAX_STOP];

    if (s->stopping)
        REJECT(SHUTTING_DOWN, "gemmad is shutting down and accepts no new requests");
    if (!s->pool_ok) /* no worker to run it: say so now rather than keep it waiting through the outage */
        REJECT(UNAVAILABLE, "%s", s->sch ? "gemmad's workers failed and are restarting: retry shortly"
                                         : "gemmad is still starting its workers (loading the model): retry shortly");
    if (!check_sampling(g, &samp, msg, sizeof(msg)))
        REJECT(INVALID_ARGUMENT, "%s", msg);
    if (g->logprobs || g->top_logprobs || g->presence_penalty != 0.0f || g->frequency_penalty != 0.0f ||
        (g->repetition_penalty != 0.0f && g->repetition_penalty != 1.0f) || g->min_tokens || g->n > 1)
        REJECT(INVALID_ARGUMENT, "logprobs, penalties, min_tokens and n > 1 are not supported by this gemmad yet");
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

    switch (g->kind) {
    case GD_PROMPT_TEXT: {
        if (g->text_len == 0)
            REJECT(INVALID_ARGUMENT, "the prompt is empty");
        if (!s->tok)
            REJECT(INVALID_ARGUMENT, "text prompts need a tokenizer; this gemmad has none: send token ids");
        if (gm_tok_encode(s->tok, g->text, g->text_len, true, &ids, &n_ids) != GM_OK)
            REJECT(INVALID_ARGUMENT, "cannot tokenize the prompt: %s", gm_last_error());
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
        ids = malloc(g->n_ids * sizeof(int32_t));
        if (!ids)
            REJECT(INTERNAL, "out of memory");
        memcpy(ids, g->ids, g->n_ids * sizeof(int32_t));
        n_ids = (int32_t)g->n_ids;
        break;
    }
    case GD_PROMPT_CHAT: {
        if (g->n_msgs == 0)
            REJECT(INVALID_ARGUMENT, "the chat has no messages");
        if (!s->tok)
            REJECT(INVALID_ARGUMENT, "chat prompts need a tokenizer; this gemmad has none: send token ids");
        if (g->n_msgs > GD_MAX_CHAT_MSGS)
            REJECT(INVALID_ARGUMENT, "%zu chat messages: at most %d", g->n_msgs, GD_MAX_CHAT_MSGS);
        if (gm_tok_encode_chat_fmt(s->tok, &s->chat, g->msgs, (int32_t)g->n_msgs, &ids, &n_ids) != GM_OK)
            REJECT(INVALID_ARGUMENT, "bad chat: %s", gm_last_error());
        chat = true;
        break;
    }
    default:
        REJECT(INVALID_ARGUMENT, "the prompt is empty (no text, tokens or chat given)");
    }
    r->n_prompt = n_ids;

    sched_req sr = {0};
    sr.prompt = ids;
    sr.n_prompt = n_ids;
    sr.max_tokens = (int32_t)g->max_tokens;
    sr.sampling = samp;
    sr.stop_ids = g->stop_ids;
    sr.n_stop_ids = (int32_t)g->n_stop_ids;
    sr.ignore_eos = g->ignore_eos;
    sr.stop_at_eot = chat;
    sr.user = r;
    switch (sched_add(s->sch, &sr, &r->seq)) {
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
    r->tx = txo_new((const char **)g->stops, stop_lens, (int)g->n_stops);
    if (s->tok)
        r->dt = gm_detok_new(s->tok);
    if (!r->tx || (s->tok && !r->dt))
        REJECT(INTERNAL, "out of memory");
    s->c.requests_total++;
    s->c.prompt_tokens += n_ids;
out:
    free(ids);
}
#undef REJECT
