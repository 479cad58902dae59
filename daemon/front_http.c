/* front_http.c - the OpenAI-compatible HTTP front door (server_int.h): http/http.h (libmicrohttpd
 * in gemmad's own loop) for the transport, http/oai.h for the bodies, admit.c for everything a
 * request means.
 *
 *   POST /v1/completions, /v1/chat/completions   generation: one JSON body, or server-sent events
 *   GET  /v1/models                              the served model
 *   POST /tokenize, /detokenize                  vLLM's shapes
 *   GET  /health                                 200 serving; 503 while the workers restart or gemmad drains
 *   GET  /metrics                                Prometheus text (http/prom.h, daemon/metrics.h)
 *   GET  /version
 *
 * Generation is here; the other routes and the routing are in front_http_routes.c (what the two
 * share: front_http_int.h).
 *
 * A generation request (an "exchange", hx) becomes one gd_req per prompt, each with n choices
 * (gd_choice, OpenAI's n); OpenAI's choice index is prompt * n + choice. steps.c marks requests dirty,
 * and gd_http_flush writes, per dirty request, one stream_write holding every byte it is owed (an event
 * per choice with news: its text of the step, its finish; and when the exchange is over the usage
 * event, prompt tokens counted once per prompt and completion tokens summed over the choices, and
 * [DONE]). No allocation
 * per token: one formatting buffer serves every write. A client that goes away cancels its requests
 * at once (their KV blocks are freed), and so does one that leaves more than HX_MAX_BACKLOG bytes
 * unread.
 *
 * Pacing: while steps are in flight, the HTTP server's socket work (one send per streaming
 * connection) runs at most half of the time: after a run that took d ms, the next waits d ms, and
 * the steps finishing meanwhile queue their events behind it, so one send carries several. With
 * few streams a run takes microseconds and nothing waits; with a thousand, sends are amortised
 * over steps instead of capping the step rate (the bytes and events are the same).
 *
 * Log-probabilities (gd_req_logprobs) go out in OpenAI's shape for the endpoint, a stream's with the
 * event of the step that produced their tokens (even when the text waits); token strings are the
 * tokenizer's (gm_tok_token_str). echo with logprobs is refused: no prompt log-probabilities here.
 *
 * Defaults follow vLLM: max_tokens 16 for completions, the rest of the context for chat;
 * temperature 1 and top_p 1 when absent (OpenAI's); a fresh random seed when none is given. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/utf8.h"
#include "http/http.h"
#include "http/oai.h"
#include "daemon/front_http_int.h"
#include "daemon/server_int.h"

_Static_assert(OAI_MAX_BEAM == SCHED_MAX_BEAM, "http/oai.c checks the beam width the scheduler takes");

#define HX_MAX_BACKLOG (8u << 20) /* unread stream bytes after which a slow client is cut off */
#define HTTP_JSON "application/json"

/* One generation request over HTTP. */
struct hx {
    http_req *h;           /* NULL once answered in full or the client left */
    oai_request q;         /* the parsed body (prompts, stop strings) */
    gd_req **sub;          /* [n_sub] one per prompt, in prompt order */
    int64_t *lp_chars;     /* [n_sub * q.n] streaming logprobs per choice: text_offset of the next token
                            * (characters), at the choice's OpenAI index */
    int32_t n_sub;
    int32_t err_sub;       /* the first sub that failed, or -1 */
    bool begun;            /* streaming: headers and the first events are out */
    bool finished;         /* answered (or abandoned); freed after this flush */
    char id[48];
    int64_t created;
    hx *prev, *next;       /* live exchanges */
    hx *free_next;
};

/* ---- small answers ---- */

void gd_http_respond_json(gd_server *s, http_req *h, int status)
{
    jsonw *w = &s->http->w;
    if (!jsonw_ok(w)) {
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory formatting the answer");
        return;
    }
    http_req_respond(h, status, HTTP_JSON, w->p, w->len);
}

void gd_http_respond_err(http_req *h, const oai_error *e)
{
    http_req_respond_oai_error(h, e);
}

/* A request the front door refused before admission still counts as a failed request. */
static void refuse(gd_server *s, http_req *h, const oai_error *e, err_code code)
{
    s->c.requests_failed++;
    prom_count_failure(&s->met.prom, code);
    gd_http_respond_err(h, e);
}

bool gd_http_model_ok(const gd_server *s, const char *model)
{
    return !model || !strcmp(model, s->http->model) || (s->cfg->model && !strcmp(model, s->cfg->model));
}

/* The name the API serves the model under: --served-model-name, else the --model path's last component. */
static void model_name(const gd_config *cfg, char *out, size_t cap)
{
    if (cfg->served_model_name)
        gm_utf8_format(out, cap, "%s", cfg->served_model_name);
    else if (cfg->model && *cfg->model)
        oai_model_name(cfg->model, out, cap);
    else
        snprintf(out, cap, "null");
}

/* ---- exchanges ---- */

static int32_t sub_index(const hx *x, const gd_req *r)
{
    for (int32_t i = 0; i < x->n_sub; i++)
        if (x->sub[i] == r)
            return i;
    return 0;
}

static bool all_done(const hx *x)
{
    for (int32_t i = 0; i < x->n_sub; i++)
        if (!x->sub[i]->done)
            return false;
    return true;
}

/* Every request of x ended and none has output waiting in the dirty list: x is over. */
static bool all_out(const hx *x)
{
    for (int32_t i = 0; i < x->n_sub; i++)
        if (!x->sub[i]->done || x->sub[i]->dirty)
            return false;
    return true;
}

/* Some request of x still waits for its prompt's tokens (admission completes later, admit.c). */
static bool any_tokenizing(const hx *x)
{
    for (int32_t i = 0; i < x->n_sub; i++)
        if (gd_req_tokenizing(x->sub[i]))
            return true;
    return false;
}

/* A request failed (or was cancelled by the server): a client sees an error. */
static bool sub_failed(const gd_req *r)
{
    return r->finish == GEMMA__V1__FINISH_REASON__FINISH_ERROR || r->finish == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED;
}

/* How choice c ended (NONE while it runs). */
static oai_finish choice_finish(const gd_choice *c)
{
    if (!c->done)
        return OAI_FINISH_NONE;
    return c->finish == GEMMA__V1__FINISH_REASON__FINISH_LENGTH ? OAI_FINISH_LENGTH
           : c->finish == GEMMA__V1__FINISH_REASON__FINISH_STOP ? OAI_FINISH_STOP
                                                                  : OAI_FINISH_ABORT;
}

/* Choice j of prompt i: OpenAI's index (the choices of a prompt are consecutive). */
static int32_t choice_index(const hx *x, int32_t i, int32_t j)
{
    return i * x->q.n + j;
}

/* Cancel every unfinished request of x (their KV blocks are freed now). */
static void hx_cancel(gd_server *s, hx *x, const char *why)
{
    for (int32_t i = 0; i < x->n_sub; i++)
        if (!x->sub[i]->done)
            gd_req_complete(s, x->sub[i], GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED,
                            "%s", why);
}

static void hx_unlink(gd_http *g, hx *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        g->live = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
    g->n_live--;
}

static void hx_free(gd_server *s, hx *x)
{
    for (int32_t i = 0; i < x->n_sub; i++) {
        x->sub[i]->conn = NULL;
        gd_req_free(s, x->sub[i]);
    }
    free(x->sub);
    free(x->lp_chars);
    oai_request_free(&x->q);
    free(x);
}

static oai_resp hx_resp(const gd_server *s, const hx *x)
{
    return (oai_resp){x->q.endpoint, x->id, x->created, s->http->model, x->q.include_usage};
}

/* Prompt tokens once per prompt, whatever its n; completion tokens summed over every choice. */
static oai_usage hx_usage(const hx *x)
{
    oai_usage u = {0, 0};
    for (int32_t i = 0; i < x->n_sub; i++) {
        const gd_req *r = x->sub[i];
        u.prompt_tokens += r->n_prompt;
        for (int32_t j = 0; j < r->n_ch; j++)
            u.completion_tokens += r->ch[j].seq ? sched_seq_generated(r->ch[j].seq) : 0;
    }
    return u;
}

/* The error a failed exchange answers with. */
static void hx_error(const hx *x, oai_error *e)
{
    const gd_req *r = x->sub[x->err_sub >= 0 ? x->err_sub : 0];
    const char *param = NULL; /* INVALID_ARGUMENT: oai_error_from_code finds the field in the message */
    if (r->err == GEMMA__V1__ERROR_CODE__PROMPT_TOO_LONG ||
               (r->errmsg && !strncmp(r->errmsg, "bad chat", 8))) {
        param = x->q.endpoint == OAI_CHAT ? "messages" : "prompt";
    }
    oai_error_from_code(e, r->err, param, r->errmsg ? r->errmsg : "request failed");
}

/* The generated tokens of choice j of r that have log-probabilities: [0, lp_upto(r, j)). */
static int32_t lp_upto(const gd_req *r, int32_t j)
{
    const gd_choice *c = &r->ch[j];
    if (r->lp_top < 0 || !c->seq)
        return 0;
    int32_t gen = sched_seq_generated(c->seq);
    return gen < c->n_lp ? gen : c->n_lp;
}

/* A token as logprobs show it: its string from the tokenizer, else "token_id:ID" in buf. */
static const char *token_str(const gd_server *s, int32_t id, char *buf, size_t cap, size_t *len)
{
    const char *t = s->tok ? gm_tok_token_str(s->tok, id, len) : NULL;
    if (t)
        return t;
    *len = oai_token_id_str(id, buf, cap);
    return buf;
}

/* Add the generated tokens [from, to) of choice j of r with their log-probabilities and alternatives
 * to b. */
static void lp_collect(const gd_server *s, const gd_req *r, int32_t j, int32_t from, int32_t to, oai_lpbuf *b)
{
    const sched_seq *q = r->ch[j].seq;
    const int32_t *gen = q->tokens + q->n_prompt;
    char buf[32];
    for (int32_t i = from; i < to; i++) {
        float lp;
        const int32_t *ids;
        const float *lps;
        int32_t k;
        if (!gd_req_logprobs(r, j, i, &lp, &ids, &lps, &k))
            return;
        bool in_top = false;
        for (int32_t m = 0; m < k; m++)
            in_top |= ids[m] == gen[i];
        size_t n;
        const char *t = token_str(s, gen[i], buf, sizeof buf, &n);
        oai_lpbuf_add(b, t, n, lp, in_top);
        for (int32_t m = 0; m < k; m++) {
            if (ids[m] < 0) /* the workers sent none for this token */
                continue;
            t = token_str(s, ids[m], buf, sizeof buf, &n);
            oai_lpbuf_add_top(b, t, n, lps[m]);
        }
    }
}

/* The prompt's text for echo (completions): the text given, or the ids decoded. Caller frees. */
static char *echo_text(const gd_server *s, const oai_prompt *p, size_t *len)
{
    char *t = NULL;
    if (p->text)
        t = strndup(p->text, p->text_len);
    else if (s->tok)
        t = gm_tok_decode(s->tok, p->ids, p->n_ids);
    *len = t ? strlen(t) : 0;
    return t;
}

/* Non-streaming: the whole answer, or the error. */
static void hx_respond(gd_server *s, hx *x)
{
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    if (x->err_sub >= 0) {
        oai_error e;
        hx_error(x, &e);
        err_code c = x->sub[x->err_sub]->err;
        if (c == GEMMA__V1__ERROR_CODE__OVERLOADED || c == GEMMA__V1__ERROR_CODE__UNAVAILABLE)
            http_req_add_header(x->h, "Retry-After", "1"); /* worth retrying soon (here or elsewhere) */
        gd_http_respond_err(x->h, &e);
        return;
    }
    int32_t n_ch = 0; /* every choice of every prompt, in OpenAI's index order */
    for (int32_t i = 0; i < x->n_sub; i++)
        n_ch += x->sub[i]->n_ch;
    oai_choice *ch = calloc((size_t)n_ch, sizeof *ch);
    char **joined = calloc((size_t)n_ch, sizeof *joined);
    int32_t *lp_at = calloc((size_t)n_ch + 1, sizeof *lp_at); /* choice m's entries: [lp_at[m], lp_at[m + 1]) */
    if (!ch || !joined || !lp_at) {
        http_req_respond_error(x->h, 500, "server_error", NULL, "out of memory formatting the answer");
        goto out;
    }
    oai_lpbuf *lb = &s->http->lp;
    oai_lpbuf_clear(lb);
    int32_t m = 0;
    for (int32_t i = 0; i < x->n_sub; i++)
        for (int32_t j = 0; j < x->sub[i]->n_ch; j++, m++) {
            if (x->q.logprobs)
                lp_collect(s, x->sub[i], j, 0, lp_upto(x->sub[i], j), lb);
            lp_at[m + 1] = lb->n;
        }
    const oai_token_logprob *lv = oai_lpbuf_view(lb);
    m = 0;
    for (int32_t i = 0; i < x->n_sub; i++) {
        gd_req *r = x->sub[i];
        size_t el = 0;
        char *e = x->q.echo ? echo_text(s, &x->q.prompts[i], &el) : NULL;
        for (int32_t j = 0; j < r->n_ch; j++, m++) {
            gd_choice *c = &r->ch[j];
            size_t n = 0;
            const char *t = c->tx ? txo_ready(c->tx, &n) : "";
            if (x->q.echo && (joined[m] = malloc(el + n + 1))) {
                memcpy(joined[m], e ? e : "", el);
                memcpy(joined[m] + el, t, n);
                t = joined[m];
                n += el;
            }
            ch[m] = (oai_choice){.index = choice_index(x, i, j), .text = t, .text_len = n,
                                 .finish = choice_finish(c), .has_logprobs = x->q.logprobs,
                                 .logprobs = lv + lp_at[m], .n_logprobs = lp_at[m + 1] - lp_at[m]};
        }
        free(e);
    }
    oai_resp rs = hx_resp(s, x);
    oai_usage u = hx_usage(x);
    oai_write_response(w, &rs, ch, n_ch, &u);
    if (lb->oom) /* an answer short of some logprobs would mislead */
        http_req_respond_error(x->h, 500, "server_error", NULL, "out of memory gathering the logprobs");
    else
        gd_http_respond_json(s, x->h, 200);
out:
    for (int32_t k = 0; joined && k < n_ch; k++)
        free(joined[k]);
    free(joined), free(ch), free(lp_at);
}

/* Streaming: the events after the last choice ended (error or usage, then [DONE]), appended to w. */
static void hx_stream_tail(gd_server *s, hx *x, jsonw *w)
{
    oai_error e;
    if (x->err_sub >= 0)
        hx_error(x, &e);
    oai_resp rs = hx_resp(s, x);
    oai_usage u = hx_usage(x);
    oai_write_stream_end(w, &rs, x->err_sub >= 0 ? &e : NULL, &u);
}

/* x is over: answer what is left (if anyone listens) and free it after this flush. */
static void hx_finish(gd_server *s, hx *x)
{
    gd_http *g = s->http;
    if (x->h && !x->begun) {
        hx_respond(s, x);
    } else if (x->h) {
        jsonw_reset(&g->w);
        hx_stream_tail(s, x, &g->w);
        if (jsonw_ok(&g->w))
            http_req_stream_write(x->h, g->w.p, g->w.len);
        http_req_stream_end(x->h);
    }
    if (x->h)
        http_req_set_user(x->h, NULL);
    x->h = NULL;
    x->finished = true;
    hx_unlink(g, x);
    x->free_next = g->to_free;
    g->to_free = x;
}

/* What choice c had waiting went out (its logprobs up to upto when asked, else every token). */
static void hx_choice_sent(const hx *x, gd_choice *c, int32_t upto)
{
    int32_t gen = c->seq ? sched_seq_generated(c->seq) : 0, sent = x->q.logprobs ? upto : gen;
    if (sent > c->n_sent)
        c->n_sent = sent;
    if (c->tx)
        txo_consume(c->tx);
    c->reported = c->done;
}

/* Choice j of dirty request r (prompt i) of a streaming exchange: its new text and logprobs (even when
 * the text waits) and its finish, as one event appended to w. A request that failed ends with the
 * exchange's error event instead of a finish. */
static void hx_stream_choice(gd_server *s, hx *x, gd_req *r, int32_t i, int32_t j, jsonw *w)
{
    gd_http *g = s->http;
    gd_choice *c = &r->ch[j];
    int32_t at = choice_index(x, i, j), upto = lp_upto(r, j);
    size_t n = 0;
    const char *t = c->tx ? txo_ready(c->tx, &n) : "";
    bool failed = r->done && sub_failed(r), ends = c->done && !c->reported;
    oai_lpbuf_clear(&g->lp);
    if (x->q.logprobs && upto > c->n_sent)
        lp_collect(s, r, j, c->n_sent, upto, &g->lp);
    if (n > 0 || g->lp.n > 0 || (ends && !failed)) {
        oai_choice oc = {.index = at, .text = t, .text_len = n, .finish = failed ? OAI_FINISH_NONE : choice_finish(c),
                         .has_logprobs = g->lp.n > 0, .logprobs = oai_lpbuf_view(&g->lp), .n_logprobs = g->lp.n,
                         .text_offset = x->lp_chars[at]};
        oai_resp rs = hx_resp(s, x);
        oai_write_chunk(w, &rs, &oc, 1);
    }
    if (g->lp.oom)
        GM_WARN("http: out of memory gathering logprobs: a chunk of %s lacks some", x->id);
    x->lp_chars[at] += g->lp.chars;
    hx_choice_sent(x, c, upto);
}

/* One dirty request of a streaming exchange: an event per choice with news, plus the exchange's tail
 * when this was its last request, in one write. */
static void hx_stream_step(gd_server *s, hx *x, gd_req *r)
{
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    int32_t i = sub_index(x, r);
    for (int32_t j = 0; j < r->n_ch; j++)
        hx_stream_choice(s, x, r, i, j, w);
    bool last = all_out(x);
    if (last)
        hx_stream_tail(s, x, w);
    if (w->len > 0 && jsonw_ok(w))
        http_req_stream_write(x->h, w->p, w->len);
    if (last) {
        http_req_stream_end(x->h);
        http_req_set_user(x->h, NULL);
        x->h = NULL;
        return;
    }
    if (http_req_stream_pending(x->h) > HX_MAX_BACKLOG) {
        GM_WARN("http: a streaming client left %zu bytes unread: cancelling its request",
                http_req_stream_pending(x->h));
        http_req_stream_end(x->h);
        http_req_set_user(x->h, NULL);
        x->h = NULL;
        hx_cancel(s, x, "the client reads too slowly");
    }
}

static void hx_begin_stream(gd_server *s, hx *x);

void gd_http_flush(gd_server *s)
{
    gd_http *g = s->http;
    if (!g)
        return;
    gd_req *r;
    while ((r = s->http_dirty_head)) {
        s->http_dirty_head = r->dirty_next;
        if (!s->http_dirty_head)
            s->http_dirty_tail = NULL;
        r->dirty = false;
        r->dirty_next = NULL;
        hx *x = r->conn;
        if (!x || x->finished)
            continue;
        if (r->done && sub_failed(r) && x->err_sub < 0) {
            /* one prompt failed: the whole request does (its siblings join the dirty list) */
            x->err_sub = sub_index(x, r);
            hx_cancel(s, x, "another prompt of the same request failed");
        }
        if (x->h && x->q.stream && !x->begun && x->err_sub < 0 && !any_tokenizing(x)) {
            /* the stream waited for every prompt's admission: a refusal (of any prompt, this one or
             * another admitted in the same turn) is still an HTTP error; else the headers now, and every
             * other request's output waiting so far after this one's */
            for (int32_t i = 0; i < x->n_sub && x->err_sub < 0; i++)
                if (x->sub[i]->done && sub_failed(x->sub[i])) {
                    x->err_sub = i;
                    hx_cancel(s, x, "another prompt of the same request failed");
                }
            if (x->err_sub < 0) {
                hx_begin_stream(s, x);
                for (int32_t i = 0; i < x->n_sub; i++)
                    if (x->sub[i] != r)
                        gd_req_mark_dirty(s, x->sub[i]);
            }
        }
        if (x->h && x->begun)
            hx_stream_step(s, x, r);
        else if (x->h == NULL) /* nobody listens: drop what waits */
            for (int32_t j = 0; j < r->n_ch; j++)
                hx_choice_sent(x, &r->ch[j], lp_upto(r, j));
        if (all_out(x))
            hx_finish(s, x);
    }
    while (g->to_free) {
        hx *x = g->to_free;
        g->to_free = x->free_next;
        hx_free(s, x);
    }
}

/* ---- generation ---- */

/* The request's sampling and limits as admission takes them (prompt set by the caller). */
static void gen_from_oai(gd_server *s, const oai_request *q, gd_gen_req *g, const char **stops)
{
    memset(g, 0, sizeof(*g));
    g->max_tokens = q->max_tokens >= 0 ? q->max_tokens
                    : q->endpoint == OAI_COMPLETIONS ? OAI_COMPLETIONS_DEFAULT_MAX_TOKENS
                                                     : 0; /* chat: until a stop or the context is full */
    g->temperature = q->has_temperature ? (float)q->temperature : 1.0f;
    g->top_p = q->has_top_p ? (float)q->top_p : 1.0f;
    g->top_k = q->top_k;
    g->seed = q->has_seed ? q->seed : oai_seed(s->http_serial);
    for (int32_t i = 0; i < q->n_stop && i < GD_MAX_STOP; i++)
        stops[i] = q->stop[i];
    g->stops = stops;
    g->n_stops = (size_t)q->n_stop;
    g->stop_ids = q->stop_ids;
    g->n_stop_ids = (size_t)q->n_stop_ids;
    g->stream = q->stream;
    g->ignore_eos = q->ignore_eos;
    g->logprobs = q->logprobs;
    g->top_logprobs = q->top_logprobs;
    g->presence_penalty = (float)q->presence_penalty;
    g->frequency_penalty = (float)q->frequency_penalty;
    g->repetition_penalty = (float)q->repetition_penalty;
    g->min_tokens = q->min_tokens;
    g->n = q->n;
    if (q->use_beam_search) { /* vLLM's names: best_of beams (completions; else n), the n best come back */
        g->beam_width = q->best_of > 0 ? q->best_of : q->n;
        g->length_penalty = (float)q->length_penalty;
        g->early_stopping = q->early_stopping;
    }
    g->spec_k = q->num_speculative_tokens < 0 ? 0 : q->num_speculative_tokens == 0 ? -1 : q->num_speculative_tokens;
}

/* Streaming: headers now, then the events that open every choice (chat: the role; echo: the prompt). */
static void hx_begin_stream(gd_server *s, hx *x)
{
    jsonw *w = &s->http->w;
    jsonw_reset(w);
    http_req_stream_begin(x->h, 200, "text/event-stream; charset=utf-8");
    x->begun = true;
    oai_resp rs = hx_resp(s, x);
    for (int32_t i = 0; i < x->n_sub; i++) {
        if (x->q.endpoint == OAI_COMPLETIONS && !x->q.echo)
            continue;
        size_t el = 0;
        char *e = x->q.endpoint == OAI_COMPLETIONS ? echo_text(s, &x->q.prompts[i], &el) : NULL;
        for (int32_t j = 0; j < x->sub[i]->n_ch; j++) {
            oai_choice c = {.index = choice_index(x, i, j), .first = true, .text = e, .text_len = el};
            oai_write_chunk(w, &rs, &c, 1);
        }
        free(e);
    }
    if (w->len > 0 && jsonw_ok(w))
        http_req_stream_write(x->h, w->p, w->len);
}

void gd_http_on_generate(gd_server *s, http_req *h, oai_endpoint ep)
{
    gd_http *g = s->http;
    oai_error e;
    if (s->cfg->http_max_requests > 0 && g->n_live >= s->cfg->http_max_requests) {
        char msg[160];
        snprintf(msg, sizeof msg, "gemmad has %d requests in flight over HTTP (http_max_requests); retry later",
                 g->n_live);
        oai_error_from_code(&e, GEMMA__V1__ERROR_CODE__OVERLOADED, NULL, msg);
        http_req_add_header(h, "Retry-After", "1");
        refuse(s, h, &e, GEMMA__V1__ERROR_CODE__OVERLOADED);
        return;
    }
    hx *x = calloc(1, sizeof(*x));
    if (!x) {
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory");
        return;
    }
    size_t blen;
    const char *body = http_req_body(h, &blen);
    gm_status st = oai_parse_request(ep, body, blen, &x->q, &e);
    if (st == GM_OK && !gd_http_model_ok(s, x->q.model)) {
        oai_error_model_not_found(&e, x->q.model);
        st = GM_ERR_NOT_FOUND;
    }
    if (st == GM_OK && x->q.echo && x->q.logprobs)
        st = oai_fail(&e, 400, "invalid_request_error", "echo", "unsupported_parameter",
                      "Unsupported parameter: 'echo' with 'logprobs': gemmad does not compute the log-probabilities "
                      "of prompt tokens; ask for one or the other.");
    if (st == GM_OK && x->q.n > SCHED_MAX_N)
        st = oai_fail(&e, 400, "invalid_request_error", "n", "invalid_value",
                      "Invalid 'n': %d choices; gemmad generates at most %d per prompt.", x->q.n, SCHED_MAX_N);
    if (st == GM_OK && x->q.best_of > x->q.n && !x->q.use_beam_search)
        st = oai_fail(&e, 400, "invalid_request_error", "best_of", "unsupported_parameter",
                      "Unsupported parameter: 'best_of' larger than n is not supported.");
    if (st != GM_OK) {
        refuse(s, h, &e, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT);
        oai_request_free(&x->q);
        free(x);
        return;
    }
    int32_t n = ep == OAI_COMPLETIONS ? x->q.n_prompts : 1;
    gm_chat_msg *msgs = NULL;
    int32_t n_msgs = 0;
    if (ep == OAI_CHAT && oai_chat_to_gemma(x->q.messages, x->q.n_messages, &msgs, &n_msgs, &e) != GM_OK) {
        refuse(s, h, &e, GEMMA__V1__ERROR_CODE__INVALID_ARGUMENT);
        oai_request_free(&x->q);
        free(x);
        return;
    }
    x->sub = calloc((size_t)n, sizeof(*x->sub));
    x->lp_chars = calloc((size_t)n * (size_t)x->q.n, sizeof(*x->lp_chars));
    if (!x->sub || !x->lp_chars) {
        free(x->sub);
        free(x->lp_chars);
        free(msgs);
        oai_request_free(&x->q);
        free(x);
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory");
        return;
    }
    x->h = h;
    x->err_sub = -1;
    x->created = (int64_t)time(NULL);
    oai_make_id(x->id, sizeof x->id, ep, s->http_serial + 1);
    x->next = g->live;
    if (g->live)
        g->live->prev = x;
    g->live = x;
    g->n_live++;
    http_req_set_user(h, x);

    const char *stops[GD_MAX_STOP];
    for (int32_t i = 0; i < n; i++) {
        gd_req *r = gd_req_new(s, GD_FRONT_HTTP, ++s->http_serial);
        if (!r) {
            hx_cancel(s, x, "out of memory");
            x->err_sub = x->n_sub > 0 ? 0 : -1;
            break;
        }
        r->conn = x;
        x->sub[x->n_sub++] = r;
        gd_gen_req gg;
        gen_from_oai(s, &x->q, &gg, stops);
        if (ep == OAI_CHAT) {
            gg.kind = GD_PROMPT_CHAT;
            gg.msgs = msgs;
            gg.n_msgs = (size_t)n_msgs;
        } else if (x->q.prompts[i].text) {
            gg.kind = GD_PROMPT_TEXT;
            gg.text = x->q.prompts[i].text;
            gg.text_len = x->q.prompts[i].text_len;
        } else {
            gg.kind = GD_PROMPT_IDS;
            gg.ids = x->q.prompts[i].ids;
            gg.n_ids = (size_t)x->q.prompts[i].n_ids;
        }
        gd_admit(s, r, &gg);
        if (r->done) /* refused: the flush answers with its error (and cancels the others) */
            break;
    }
    free(msgs);
    if (x->n_sub == 0) { /* not even one request: answer now */
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory");
        x->h = NULL;
        hx_unlink(g, x);
        hx_free(s, x);
        return;
    }
    bool refused = false;
    for (int32_t i = 0; i < x->n_sub; i++)
        refused |= x->sub[i]->done;
    if (x->n_sub < n && !refused) /* out of memory part way */
        hx_cancel(s, x, "out of memory");
    else if (x->q.stream && !refused && !any_tokenizing(x)) /* else at the flush once all are admitted */
        hx_begin_stream(s, x);
}

/* The client went away (or the server dropped the request): cancel what it asked for. */
static void on_abort(void *core, http_req *h, void *user)
{
    gd_server *s = core;
    (void)h;
    hx *x = user;
    if (!x || x->finished)
        return;
    x->h = NULL;
    GM_DEBUG("http: client of %s disconnected: cancelling", x->id);
    hx_cancel(s, x, "the client disconnected");
    if (all_done(x)) /* nothing left to wait for: free it at the next flush */
        gd_req_mark_dirty(s, x->sub[0]);
}

/* ---- lifecycle ---- */

gm_status gd_http_open(gd_server *s)
{
    const gd_config *cfg = s->cfg;
    if (!cfg->http_listen)
        return GM_OK;
    gd_http *g = calloc(1, sizeof(*g));
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "http: out of memory");
    s->http = g;
    model_name(cfg, g->model, sizeof g->model);
    g->created = (int64_t)time(NULL);
    http_opts o;
    http_opts_init(&o);
    o.listen = cfg->http_listen;
    o.max_body = (size_t)cfg->http_max_body;
    o.api_key = cfg->api_key;
    o.max_connections = (uint32_t)cfg->http_max_connections;
    http_callbacks cb = {gd_http_on_request, on_abort};
    gm_status st = http_server_new(&o, &cb, s, &g->srv);
    if (st != GM_OK)
        return st;
    GM_INFO("OpenAI-compatible HTTP API on %s (port %d), model \"%s\"%s", cfg->http_listen, http_server_port(g->srv),
            g->model, cfg->api_key ? ", bearer key required on /v1/" : "");
    return GM_OK;
}

/* True while the socket work should wait (steps in flight, the last run too recent). */
static bool paced(const gd_server *s, double now)
{
    return s->n_plans > 0 && now < s->http->next_run_ms;
}

int gd_http_fd(const gd_server *s, double now)
{
    if (!s->http || !s->http->srv || paced(s, now))
        return -1;
    return http_server_fd(s->http->srv);
}

long gd_http_timeout_ms(gd_server *s, long t, double now)
{
    if (!s->http || !s->http->srv)
        return t;
    if (paced(s, now)) {
        long left = (long)(s->http->next_run_ms - now) + 1;
        return left < t ? left : t;
    }
    return http_server_wait_ms(s->http->srv, t);
}

void gd_http_run(gd_server *s, bool force)
{
    gd_http *g = s->http;
    if (!g || !g->srv)
        return;
    double t0 = gm_now_ms();
    if (!force && paced(s, t0))
        return;
    if (http_server_run(g->srv) != GM_OK)
        GM_WARN("%s", gm_last_error());
    double t1 = gm_now_ms();
    g->next_run_ms = t1 + (t1 - t0);
}

void gd_flush_fronts(gd_server *s)
{
    gd_rpc_flush(s);
    gd_http_flush(s);
    gd_http_run(s, true);
}

void gd_http_close(gd_server *s)
{
    gd_http *g = s->http;
    if (!g)
        return;
    while (g->live) {
        hx *x = g->live;
        hx_unlink(g, x);
        hx_free(s, x);
    }
    while (g->to_free) {
        hx *x = g->to_free;
        g->to_free = x->free_next;
        hx_free(s, x);
    }
    s->http_dirty_head = s->http_dirty_tail = NULL;
    http_server_destroy(&g->srv);
    jsonw_free(&g->w);
    oai_lpbuf_free(&g->lp);
    free(g);
    s->http = NULL;
}
