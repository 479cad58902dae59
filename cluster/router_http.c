/* router_http.c - gemma-router's OpenAI-compatible HTTP front door (--http-listen): an RPC client of
 * the router, inside it (router_int.h).
 *
 * An HTTP generation request becomes one GenerateRequest per prompt that enters the router exactly
 * as a ZeroMQ client's would (rt_on_client_msg), under a client identity no ZeroMQ peer can have
 * (RH_ID_LEN bytes starting with a zero byte: ZeroMQ's own identities are 5 bytes, and a peer may
 * not choose one that starts with zero). rt_send_to_client hands whatever the router sends such an
 * identity to rt_http_deliver: the replicas' chunks become server-sent events (or one JSON body at
 * the end), errors OpenAI-shaped ones (http/oai.h). So dispatch, queueing, failover, shedding and
 * cancellation are the router's own; a client that disconnects has its requests cancelled with a
 * CancelRequest, as a ZeroMQ client would.
 *
 * Routes: POST /v1/completions, /v1/chat/completions; GET /v1/models, /health (200 while a replica
 * serves), /metrics (the router's counters, Prometheus text). Tokenizing needs a replica:
 * /tokenize and /detokenize are answered by gemmad itself, not here.
 *
 * logprobs, the penalties, min_tokens and n go through the RPC; the replicas spell the tokens of the
 * logprobs (TokenLogprobs.token), so no tokenizer is needed here. With n > 1 a prompt's chunks name
 * their choice (GenerateChunk.index): OpenAI's index is prompt * n + choice, and the prompt's request
 * ends at the chunk with usage. best_of beyond n (without beam search) and echo are refused with a 400 naming
 * the field. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/router_int.h"
#include "common/jsonw.h"
#include "common/log.h"
#include "common/sampling.h"
#include "http/http.h"
#include "http/oai.h"
#include "http/prom.h"

#define RH_ID_LEN 14            /* 0x00 'H' + the exchange's address (8 bytes) + a check (4 bytes) */
#define RH_MAGIC 0x4a7e11u
#define RH_CANCEL_ID 0x40000000u /* request ids of our cancels: above any prompt's */

/* One choice of a prompt (n > 1: one of n). */
typedef struct rh_choice {
    int32_t finish;          /* Gemma__V1__FinishReason of its last chunk (0 while it runs) */
    char *text;              /* non-streaming: every delta so far (owned) */
    size_t len, cap;
    oai_lpbuf lp;            /* non-streaming: every token's logprobs so far */
    int64_t lp_chars;        /* streaming: text_offset of the next token's logprobs (characters) */
} rh_choice;

/* One prompt's request. */
typedef struct rh_sub {
    bool done;
    int32_t finish;          /* Gemma__V1__FinishReason of the request */
    int32_t err;             /* Gemma__V1__ErrorCode */
    char *errmsg;            /* (owned) */
    rh_choice *ch;           /* [q.n] */
    int64_t prompt_tokens, completion_tokens;
} rh_sub;

typedef struct rh_x rh_x;
struct rh_x {
    uint32_t magic, check;
    http_req *h;             /* NULL once answered or the client left */
    oai_request q;
    rh_sub *sub;             /* [n_sub] */
    int32_t n_sub, n_done;
    int32_t err_sub;         /* the first that failed, or -1 */
    bool begun, finished;
    uint8_t id[RH_ID_LEN];   /* the router client identity */
    char oid[48];
    int64_t created;
    rh_x *prev, *next;       /* live */
    rh_x *free_next;
};

struct rt_http {
    http_server *srv;
    jsonw w;
    oai_lpbuf lp;            /* a chunk's logprobs (streaming) */
    rh_x *live, *to_free;
    int32_t n_live;
    uint64_t serial;
    int64_t created;         /* unix time the router started */
    char model[256];
};

/* ---- names ---- */

/* The served name: --served-model-name, else the last component of a serving replica's model path. */
static const char *served_model(gc_router *r)
{
    rt_http *g = r->http;
    if (r->cfg->served_model_name)
        return r->cfg->served_model_name;
    for (int i = 0; i < r->n_reps; i++) {
        rt_replica *p = r->reps[i];
        if (p->up && p->serving && p->health && p->health->health->model[0]) {
            oai_model_name(p->health->health->model, g->model, sizeof g->model);
            return g->model;
        }
    }
    return g->model[0] ? g->model : "gemma";
}

/* ---- exchanges ---- */

static void x_unlink(rt_http *g, rh_x *x)
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

static void x_free(rh_x *x)
{
    for (int32_t i = 0; i < x->n_sub; i++) {
        free(x->sub[i].errmsg);
        for (int32_t j = 0; x->sub[i].ch && j < x->q.n; j++) {
            free(x->sub[i].ch[j].text);
            oai_lpbuf_free(&x->sub[i].ch[j].lp);
        }
        free(x->sub[i].ch);
    }
    free(x->sub);
    oai_request_free(&x->q);
    x->magic = 0;
    free(x);
}

/* x is over for the router: free it once this turn is done. */
static void x_retire(rt_http *g, rh_x *x)
{
    if (x->finished)
        return;
    x->finished = true;
    x_unlink(g, x);
    x->free_next = g->to_free;
    g->to_free = x;
}

static oai_resp x_resp(gc_router *r, const rh_x *x)
{
    return (oai_resp){x->q.endpoint, x->oid, x->created, served_model(r), x->q.include_usage};
}

static oai_usage x_usage(const rh_x *x)
{
    oai_usage u = {0, 0};
    for (int32_t i = 0; i < x->n_sub; i++) {
        u.prompt_tokens += x->sub[i].prompt_tokens;
        u.completion_tokens += x->sub[i].completion_tokens;
    }
    return u;
}

static oai_finish finish_of(int32_t fr)
{
    return fr == GEMMA__V1__FINISH_REASON__FINISH_LENGTH ? OAI_FINISH_LENGTH
           : fr == GEMMA__V1__FINISH_REASON__FINISH_STOP ? OAI_FINISH_STOP
                                                           : OAI_FINISH_ABORT;
}

static void x_error(const rh_x *x, oai_error *e)
{
    const rh_sub *s = &x->sub[x->err_sub >= 0 ? x->err_sub : 0];
    const char *param = s->err == GEMMA__V1__ERROR_CODE__PROMPT_TOO_LONG ||
                                (s->errmsg && !strncmp(s->errmsg, "bad chat", 8))
                            ? (x->q.endpoint == OAI_CHAT ? "messages" : "prompt")
                            : NULL;
    oai_error_from_code(e, s->err ? s->err : GEMMA__V1__ERROR_CODE__INTERNAL, param,
                        s->errmsg && *s->errmsg ? s->errmsg : "request failed");
}

/* Everything ended: the answer's end (if anyone listens). */
static void x_answer(gc_router *r, rh_x *x)
{
    rt_http *g = r->http;
    jsonw *w = &g->w;
    jsonw_reset(w);
    oai_resp rs = x_resp(r, x);
    if (x->h && x->begun) {
        oai_error e;
        if (x->err_sub >= 0)
            x_error(x, &e);
        oai_usage u = x_usage(x);
        oai_write_stream_end(w, &rs, x->err_sub >= 0 ? &e : NULL, &u);
        if (jsonw_ok(w))
            http_req_stream_write(x->h, w->p, w->len);
        http_req_stream_end(x->h);
    } else if (x->h && x->err_sub >= 0) {
        oai_error e;
        x_error(x, &e);
        http_req_respond_oai_error(x->h, &e);
    } else if (x->h) {
        int32_t n = x->n_sub * x->q.n;
        oai_choice *ch = calloc((size_t)n, sizeof *ch);
        bool lp_oom = !ch;
        for (int32_t i = 0; ch && i < x->n_sub; i++)
            for (int32_t j = 0; j < x->q.n; j++) {
                rh_sub *s = &x->sub[i];
                rh_choice *c = &s->ch[j];
                ch[i * x->q.n + j] = (oai_choice){.index = i * x->q.n + j, .text = c->text, .text_len = c->len,
                                                  .finish = finish_of(c->finish ? c->finish : s->finish),
                                                  .has_logprobs = x->q.logprobs, .logprobs = oai_lpbuf_view(&c->lp),
                                                  .n_logprobs = c->lp.n};
                lp_oom |= c->lp.oom;
            }
        oai_usage u = x_usage(x);
        if (ch)
            oai_write_response(w, &rs, ch, n, &u);
        free(ch);
        if (jsonw_ok(w) && !lp_oom)
            http_req_respond(x->h, 200, "application/json", w->p, w->len);
        else
            http_req_respond_error(x->h, 500, "server_error", NULL, "out of memory formatting the answer");
    }
    if (x->h)
        http_req_set_user(x->h, NULL);
    x->h = NULL;
}

/* Ask the router to cancel every request of x that is still running. */
static void x_cancel(gc_router *r, rh_x *x)
{
    for (int32_t i = 0; i < x->n_sub && !x->finished; i++) {
        if (x->sub[i].done)
            continue;
        Gemma__V1__ClientMessage m = GEMMA__V1__CLIENT_MESSAGE__INIT;
        Gemma__V1__CancelRequest c = GEMMA__V1__CANCEL_REQUEST__INIT;
        m.protocol_version = RT_PROTO_MAJOR;
        m.request_id = RH_CANCEL_ID + (uint64_t)i;
        c.target_request_id = (uint64_t)i + 1;
        m.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL;
        m.cancel = &c;
        uint8_t buf[64];
        size_t n = gemma__v1__client_message__pack(&m, buf);
        rt_on_client_msg(r, x->id, RH_ID_LEN, buf, n); /* may end it at once (queued requests) */
    }
}

/* A request of x ended (a final chunk or an error). */
static void x_sub_end(gc_router *r, rh_x *x, int32_t i, int32_t finish, int32_t err, const char *msg)
{
    rh_sub *s = &x->sub[i];
    if (s->done)
        return;
    s->done = true;
    s->finish = finish;
    s->err = err;
    if (msg && *msg)
        s->errmsg = strdup(msg);
    x->n_done++;
    bool failed = finish == GEMMA__V1__FINISH_REASON__FINISH_ERROR || finish == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED;
    if (failed && x->err_sub < 0) {
        x->err_sub = i;
        x_cancel(r, x); /* the whole request fails with it */
    }
    if (x->n_done == x->n_sub) {
        x_answer(r, x);
        x_retire(r->http, x);
    }
}

static bool text_append(rh_choice *s, const void *p, size_t n)
{
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *t = realloc(s->text, cap);
        if (!t)
            return false;
        s->text = t;
        s->cap = cap;
    }
    memcpy(s->text + s->len, p, n);
    s->len += n;
    s->text[s->len] = '\0';
    return true;
}

/* Add a chunk's log-probabilities to b: one entry per token id, the replica's strings for them
 * ("token_id:ID" where it sent none: a replica without a tokenizer). */
static void lp_from_chunk(const Gemma__V1__GenerateChunk *ch, oai_lpbuf *b)
{
    char buf[32];
    for (size_t k = 0; k < ch->n_logprobs && k < ch->n_token_ids; k++) {
        const Gemma__V1__TokenLogprobs *t = ch->logprobs[k];
        int32_t id = ch->token_ids[k];
        size_t nt = t->n_top_ids < t->n_top_logprobs ? t->n_top_ids : t->n_top_logprobs;
        bool in_top = false;
        for (size_t j = 0; j < nt; j++)
            in_top |= t->top_ids[j] == id;
        if (t->token.len)
            oai_lpbuf_add(b, (const char *)t->token.data, t->token.len, t->logprob, in_top);
        else
            oai_lpbuf_add(b, buf, oai_token_id_str(id, buf, sizeof buf), t->logprob, in_top);
        for (size_t j = 0; j < nt; j++) {
            if (t->top_ids[j] < 0) /* the replica's workers sent none */
                continue;
            if (j < t->n_top_tokens && t->top_tokens[j].len)
                oai_lpbuf_add_top(b, (const char *)t->top_tokens[j].data, t->top_tokens[j].len, t->top_logprobs[j]);
            else
                oai_lpbuf_add_top(b, buf, oai_token_id_str(t->top_ids[j], buf, sizeof buf), t->top_logprobs[j]);
        }
    }
}

/* One chunk from the router for x: a delta (and maybe the end) of one of its requests. */
static void x_chunk(gc_router *r, rh_x *x, const Gemma__V1__GenerateChunk *ch)
{
    int64_t i = (int64_t)ch->request_id - 1;
    if (i < 0 || i >= x->n_sub || x->sub[i].done)
        return;
    rh_sub *s = &x->sub[i];
    bool failed = ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_ERROR ||
                  ch->finish_reason == GEMMA__V1__FINISH_REASON__FINISH_CANCELLED;
    /* the request's last chunk: with n > 1 each choice's last chunk has a finish_reason, and only the
     * request's last one carries usage */
    bool final = ch->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE && (x->q.n <= 1 || ch->usage);
    if (ch->index < 0 || ch->index >= x->q.n) { /* not a choice of ours: the replica is broken */
        x_sub_end(r, x, (int32_t)i, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                  "a replica answered for a choice this request does not have");
        return;
    }
    rh_choice *c = &s->ch[ch->index];
    int32_t at = (int32_t)i * x->q.n + ch->index; /* OpenAI's index */
    if (ch->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE && !c->finish)
        c->finish = ch->finish_reason;
    if (ch->usage) {
        s->prompt_tokens = ch->usage->prompt_tokens;
        s->completion_tokens = ch->usage->completion_tokens;
    }
    if (x->h && x->begun) {
        jsonw *w = &r->http->w;
        oai_lpbuf *lb = &r->http->lp;
        jsonw_reset(w);
        oai_lpbuf_clear(lb);
        if (x->q.logprobs)
            lp_from_chunk(ch, lb);
        if (ch->text.len > 0 || lb->n > 0 || (ch->finish_reason && !failed)) {
            oai_choice oc = {.index = at, .text = (const char *)ch->text.data, .text_len = ch->text.len,
                             .finish = ch->finish_reason && !failed ? finish_of(ch->finish_reason) : OAI_FINISH_NONE,
                             .has_logprobs = lb->n > 0, .logprobs = oai_lpbuf_view(lb), .n_logprobs = lb->n,
                             .text_offset = c->lp_chars};
            oai_resp rs = x_resp(r, x);
            oai_write_chunk(w, &rs, &oc, 1);
            if (jsonw_ok(w))
                http_req_stream_write(x->h, w->p, w->len);
        }
        c->lp_chars += lb->chars;
    } else if (x->h) {
        if (x->q.logprobs)
            lp_from_chunk(ch, &c->lp);
        if ((ch->text.len > 0 && !text_append(c, ch->text.data, ch->text.len)) || c->lp.oom) {
            x_sub_end(r, x, (int32_t)i, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                      "gemma-router ran out of memory");
            return;
        }
    }
    if (final)
        x_sub_end(r, x, (int32_t)i, ch->finish_reason, ch->error_code, ch->error_message);
}

bool rt_http_is_client(const uint8_t *id, size_t id_len)
{
    return id_len == RH_ID_LEN && id[0] == 0 && id[1] == 'H';
}

bool rt_http_deliver(gc_router *r, const uint8_t *id, size_t id_len, const Gemma__V1__ServerMessage *m)
{
    rh_x *x;
    uint32_t check;
    if (!r->http || !rt_http_is_client(id, id_len))
        return true;
    memcpy(&x, id + 2, sizeof x);
    memcpy(&check, id + 10, sizeof check);
    /* an exchange lives until the router ended all its requests, so the address is still valid */
    if (!x || x->magic != RH_MAGIC || x->check != check || x->finished)
        return true;
    for (size_t k = 0; k < m->n_chunks && !x->finished; k++)
        x_chunk(r, x, m->chunks[k]);
    if (m->body_case == GEMMA__V1__SERVER_MESSAGE__BODY_ERROR && m->error->request_id >= 1 &&
        m->error->request_id <= (uint64_t)x->n_sub && !x->finished)
        x_sub_end(r, x, (int32_t)m->error->request_id - 1, GEMMA__V1__FINISH_REASON__FINISH_ERROR, m->error->code,
                  m->error->message);
    return true;
}

/* ---- generation ---- */

/* What the router does not do (no prompt text to echo for id prompts): the first one asked for, or
 * NULL. */
static const char *unsupported_field(const oai_request *q)
{
    if (q->best_of > q->n && !q->use_beam_search)
        return "best_of";
    if (q->echo)
        return "echo";
    return NULL;
}

/* Send prompt i of x to the router as a GenerateRequest. */
static void x_submit(gc_router *r, rh_x *x, int32_t i, const gm_chat_msg *msgs, int32_t n_msgs)
{
    const oai_request *q = &x->q;
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__GenerateRequest gr = GEMMA__V1__GENERATE_REQUEST__INIT;
    Gemma__V1__SamplingParams sp = GEMMA__V1__SAMPLING_PARAMS__INIT;
    Gemma__V1__TokenIds tk = GEMMA__V1__TOKEN_IDS__INIT;
    Gemma__V1__ChatPrompt chat = GEMMA__V1__CHAT_PROMPT__INIT;
    Gemma__V1__ChatMessage *cms = NULL, **cmp = NULL;
    cm.protocol_version = RT_PROTO_MAJOR;
    cm.request_id = (uint64_t)i + 1;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = &gr;
    if (q->endpoint == OAI_CHAT) {
        cms = calloc((size_t)n_msgs, sizeof *cms);
        cmp = calloc((size_t)n_msgs, sizeof *cmp);
        if (!cms || !cmp) {
            free(cms);
            free(cmp);
            x_sub_end(r, x, i, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                      "gemma-router ran out of memory");
            return;
        }
        for (int32_t k = 0; k < n_msgs; k++) {
            cms[k] = (Gemma__V1__ChatMessage)GEMMA__V1__CHAT_MESSAGE__INIT;
            cms[k].role = (char *)msgs[k].role;
            cms[k].text = (char *)msgs[k].text;
            cmp[k] = &cms[k];
        }
        chat.n_messages = (size_t)n_msgs;
        chat.messages = cmp;
        gr.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_CHAT;
        gr.chat = &chat;
    } else if (q->prompts[i].text) {
        gr.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TEXT;
        gr.text = q->prompts[i].text;
    } else {
        tk.n_ids = (size_t)q->prompts[i].n_ids;
        tk.ids = q->prompts[i].ids;
        gr.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
        gr.tokens = &tk;
    }
    gr.max_tokens = q->max_tokens >= 0 ? q->max_tokens : q->endpoint == OAI_COMPLETIONS ? OAI_COMPLETIONS_DEFAULT_MAX_TOKENS : 0;
    sp.temperature = q->has_temperature ? (float)q->temperature : 1.0f;
    sp.top_p = q->has_top_p ? (float)q->top_p : 1.0f;
    sp.top_k = q->top_k;
    sp.seed = q->has_seed ? q->seed : oai_seed(++r->http->serial);
    sp.presence_penalty = (float)q->presence_penalty;
    sp.frequency_penalty = (float)q->frequency_penalty;
    sp.repetition_penalty = (float)q->repetition_penalty;
    gr.sampling = &sp;
    gr.min_tokens = q->min_tokens;
    gr.logprobs = q->logprobs;
    gr.top_logprobs = q->top_logprobs;
    gr.n_stop = (size_t)q->n_stop;
    gr.stop = q->stop;
    gr.n_stop_token_ids = (size_t)q->n_stop_ids;
    gr.stop_token_ids = q->stop_ids;
    gr.stream = q->stream;
    gr.ignore_eos = q->ignore_eos;
    gr.n = q->n;
    /* speculative decoding: absent = the replica's default (0 on the RPC), 0 = off (-1), else k */
    gr.speculative_tokens = q->num_speculative_tokens < 0 ? 0 : q->num_speculative_tokens == 0 ? -1
                                                                                           : q->num_speculative_tokens;
    if (q->use_beam_search) { /* the replica checks the width and what goes with it, as gemmad's own HTTP does */
        gr.beam_width = q->best_of > 0 ? q->best_of : q->n;
        gr.length_penalty_set_case = GEMMA__V1__GENERATE_REQUEST__LENGTH_PENALTY_SET_LENGTH_PENALTY;
        gr.length_penalty = (float)q->length_penalty;
        gr.early_stopping = q->early_stopping;
    }
    size_t n = gemma__v1__client_message__get_packed_size(&cm);
    uint8_t *buf = malloc(n);
    if (buf) {
        gemma__v1__client_message__pack(&cm, buf);
        rt_on_client_msg(r, x->id, RH_ID_LEN, buf, n); /* an immediate refusal comes back through deliver */
    } else {
        x_sub_end(r, x, i, GEMMA__V1__FINISH_REASON__FINISH_ERROR, GEMMA__V1__ERROR_CODE__INTERNAL,
                  "gemma-router ran out of memory");
    }
    free(buf);
    free(cms);
    free(cmp);
}

static void on_generate(gc_router *r, http_req *h, oai_endpoint ep)
{
    rt_http *g = r->http;
    oai_error e;
    if (r->cfg->http_max_requests > 0 && g->n_live >= r->cfg->http_max_requests) {
        char msg[160];
        snprintf(msg, sizeof msg, "gemma-router has %d requests in flight over HTTP (http_max_requests); retry later",
                 g->n_live);
        oai_error_from_code(&e, GEMMA__V1__ERROR_CODE__OVERLOADED, NULL, msg);
        http_req_add_header(h, "Retry-After", "1");
        http_req_respond_oai_error(h, &e);
        return;
    }
    rh_x *x = calloc(1, sizeof(*x));
    if (!x) {
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory");
        return;
    }
    size_t blen;
    const char *body = http_req_body(h, &blen);
    gm_chat_msg *msgs = NULL;
    int32_t n_msgs = 0;
    gm_status st = oai_parse_request(ep, body, blen, &x->q, &e);
    const char *model = served_model(r);
    const char *bad = st == GM_OK ? unsupported_field(&x->q) : NULL;
    if (st == GM_OK && x->q.model && strcmp(x->q.model, model) != 0) {
        oai_error_model_not_found(&e, x->q.model);
        st = GM_ERR_NOT_FOUND;
    } else if (bad) {
        st = oai_fail(&e, 400, "invalid_request_error", bad, "unsupported_parameter",
                      "Unsupported parameter: '%s' is not supported by gemma-router yet.", bad);
    } else if (st == GM_OK && ep == OAI_CHAT) {
        st = oai_chat_to_gemma(x->q.messages, x->q.n_messages, &msgs, &n_msgs, &e);
    }
    int32_t n = ep == OAI_COMPLETIONS ? x->q.n_prompts : 1;
    if (st == GM_OK && !(x->sub = calloc((size_t)n, sizeof(*x->sub))))
        st = oai_fail(&e, 500, "server_error", NULL, NULL, "out of memory");
    if (x->sub)
        x->n_sub = n; /* x_free frees what the loop below allocates */
    for (int32_t i = 0; st == GM_OK && i < n; i++)
        if (!(x->sub[i].ch = calloc((size_t)x->q.n, sizeof(*x->sub[i].ch))))
            st = oai_fail(&e, 500, "server_error", NULL, NULL, "out of memory");
    if (st != GM_OK) {
        http_req_respond_oai_error(h, &e);
        free(msgs);
        x_free(x);
        return;
    }
    x->magic = RH_MAGIC;
    x->check = (uint32_t)oai_seed(++g->serial);
    x->id[0] = 0;
    x->id[1] = 'H';
    memcpy(x->id + 2, &x, sizeof x);
    memcpy(x->id + 10, &x->check, sizeof x->check);
    x->n_sub = n;
    x->err_sub = -1;
    x->h = h;
    x->created = (int64_t)time(NULL);
    oai_make_id(x->oid, sizeof x->oid, ep, g->serial);
    x->next = g->live;
    if (g->live)
        g->live->prev = x;
    g->live = x;
    g->n_live++;
    http_req_set_user(h, x);
    if (x->q.stream) { /* headers now; a refusal before the first token becomes an error event */
        http_req_stream_begin(h, 200, "text/event-stream; charset=utf-8");
        x->begun = true;
        if (ep == OAI_CHAT) {
            jsonw *w = &g->w;
            jsonw_reset(w);
            oai_resp rs = x_resp(r, x);
            for (int32_t i = 0; i < n * x->q.n; i++) {
                oai_choice c = {.index = i, .first = true};
                oai_write_chunk(w, &rs, &c, 1);
            }
            if (jsonw_ok(w))
                http_req_stream_write(h, w->p, w->len);
        }
    }
    for (int32_t i = 0; i < n && !x->finished && x->err_sub < 0; i++)
        x_submit(r, x, i, msgs, n_msgs);
    /* a prompt refused before the others were sent: those never reach the router */
    for (int32_t i = 0; i < n && !x->finished; i++)
        if (!x->sub[i].done && x->err_sub >= 0 && i > x->err_sub)
            x_sub_end(r, x, i, GEMMA__V1__FINISH_REASON__FINISH_CANCELLED, GEMMA__V1__ERROR_CODE__CANCELLED, NULL);
    free(msgs);
}

static void on_abort(void *core, http_req *h, void *user)
{
    gc_router *r = core;
    (void)h;
    rh_x *x = user;
    if (!x || x->finished)
        return;
    x->h = NULL;
    x_cancel(r, x);
}

/* ---- other routes ---- */

static void respond_w(http_req *h, jsonw *w, int status, const char *ctype)
{
    if (jsonw_ok(w))
        http_req_respond(h, status, ctype, w->p, w->len);
    else
        http_req_respond_error(h, 500, "server_error", NULL, "out of memory formatting the answer");
}

static bool any_serving(const gc_router *r)
{
    for (int i = 0; i < r->n_reps; i++)
        if (r->reps[i]->up && r->reps[i]->serving && !r->reps[i]->draining)
            return !r->stopping;
    return false;
}

static void on_health(gc_router *r, http_req *h)
{
    jsonw *w = &r->http->w;
    jsonw_reset(w);
    bool ok = any_serving(r);
    jsonw_obj_begin(w);
    jsonw_key(w, "status");
    jsonw_str(w, ok ? "ok" : r->stopping ? "draining" : "no replica serving");
    jsonw_key(w, "replicas_serving");
    jsonw_int(w, atomic_load(&r->c_serving));
    jsonw_obj_end(w);
    respond_w(h, w, ok ? 200 : 503, "application/json");
}

static void on_models(gc_router *r, http_req *h)
{
    jsonw *w = &r->http->w;
    jsonw_reset(w);
    /* the replicas do not report their context length: max_model_len is null */
    oai_write_models(w, served_model(r), r->http->created, 0);
    respond_w(h, w, 200, "application/json");
}

static void counter(jsonw *w, const char *name, const char *help, int64_t v)
{
    prom_write_family(w, name, help, PROM_COUNTER);
    prom_write_u64(w, name, NULL, 0, (uint64_t)(v > 0 ? v : 0));
}

static void gauge(jsonw *w, const char *name, const char *help, double v)
{
    prom_write_family(w, name, help, PROM_GAUGE);
    prom_write_sample(w, name, NULL, 0, v);
}

static void on_metrics(gc_router *r, http_req *h)
{
    jsonw *w = &r->http->w;
    jsonw_reset(w);
    counter(w, "gemma_router_requests_total", "Generate requests the router took.", atomic_load(&r->c_accepted));
    counter(w, "gemma_router_requests_finished_total", "Requests that ended with a replica's final chunk.",
            atomic_load(&r->c_finished));
    counter(w, "gemma_router_requests_failed_total", "Requests the router ended with an error.",
            atomic_load(&r->c_failed));
    counter(w, "gemma_router_requests_shed_total", "Requests answered OVERLOADED: every replica was full.",
            atomic_load(&r->c_shed));
    counter(w, "gemma_router_requests_cancelled_total", "Requests cancelled before a replica ended them.",
            atomic_load(&r->c_cancelled));
    counter(w, "gemma_router_requests_resent_total", "Requests moved to another replica after a failure.",
            atomic_load(&r->c_resent));
    counter(w, "gemma_router_replica_failures_total", "Times a replica was taken out.", atomic_load(&r->c_rep_fail));
    gauge(w, "gemma_router_replicas_known", "Replicas the router knows.", atomic_load(&r->c_known));
    gauge(w, "gemma_router_replicas_up", "Replicas answering their probes.", atomic_load(&r->c_up));
    gauge(w, "gemma_router_replicas_serving", "Replicas up, serving and not draining.", atomic_load(&r->c_serving));
    gauge(w, "gemma_router_requests_in_flight", "Requests at replicas or held.", (double)r->n_reqs);
    gauge(w, "gemma_router_requests_queued", "Requests held while every replica is full.", r->q_len);
    gauge(w, "gemma_router_http_connections", "Open HTTP connections.", (double)http_server_connections(r->http->srv));
    gauge(w, "gemma_router_uptime_seconds", "Seconds since the router started.", (gm_now_ms() - r->t_start) / 1e3);
    respond_w(h, w, 200, PROM_CONTENT_TYPE);
}

enum { R_COMPLETIONS, R_CHAT, R_MODELS, R_HEALTH, R_METRICS };

static void on_request(void *core, http_req *h)
{
    static const http_route routes[] = {
        {"/v1/completions", "POST", R_COMPLETIONS}, {"/v1/chat/completions", "POST", R_CHAT},
        {"/v1/models", "GET", R_MODELS},            {"/health", "GET", R_HEALTH},
        {"/metrics", "GET", R_METRICS},
    };
    gc_router *r = core;
    switch (http_route_find(h, routes, sizeof routes / sizeof routes[0],
                            "/v1/completions, /v1/chat/completions, /v1/models, /health, /metrics (/tokenize and "
                            "/detokenize are a gemmad's)")) {
    case R_COMPLETIONS: on_generate(r, h, OAI_COMPLETIONS); break;
    case R_CHAT: on_generate(r, h, OAI_CHAT); break;
    case R_MODELS: on_models(r, h); break;
    case R_HEALTH: on_health(r, h); break;
    case R_METRICS: on_metrics(r, h); break;
    default: break; /* answered: 404 or 405 */
    }
}

/* ---- lifecycle ---- */

gm_status rt_http_open(gc_router *r)
{
    const gc_router_config *c = r->cfg;
    if (!c->http_listen)
        return GM_OK;
    rt_http *g = calloc(1, sizeof(*g));
    if (!g)
        return gm_fail(GM_ERR_NOMEM, "http: out of memory");
    r->http = g;
    g->created = (int64_t)time(NULL);
    http_opts o;
    http_opts_init(&o);
    o.listen = c->http_listen;
    o.max_body = (size_t)c->http_max_body;
    o.api_key = c->api_key;
    o.max_connections = (uint32_t)c->http_max_connections;
    http_callbacks cb = {on_request, on_abort};
    gm_status st = http_server_new(&o, &cb, r, &g->srv);
    if (st == GM_OK)
        GM_INFO("OpenAI-compatible HTTP API on %s (port %d)%s", c->http_listen, http_server_port(g->srv),
                c->api_key ? ", bearer key required on /v1/" : "");
    return st;
}

int rt_http_fd(const gc_router *r)
{
    return r->http && r->http->srv ? http_server_fd(r->http->srv) : -1;
}

long rt_http_timeout_ms(gc_router *r, long t)
{
    return r->http && r->http->srv ? http_server_wait_ms(r->http->srv, t) : t;
}

void rt_http_run(gc_router *r)
{
    rt_http *g = r->http;
    if (!g || !g->srv)
        return;
    if (http_server_run(g->srv) != GM_OK)
        GM_WARN("%s", gm_last_error());
    while (g->to_free) {
        rh_x *x = g->to_free;
        g->to_free = x->free_next;
        x_free(x);
    }
}

void rt_http_close(gc_router *r)
{
    rt_http *g = r->http;
    if (!g)
        return;
    http_server_destroy(&g->srv); /* no callbacks: the exchanges are freed below */
    while (g->live) {
        rh_x *x = g->live;
        x_unlink(g, x);
        x_free(x);
    }
    while (g->to_free) {
        rh_x *x = g->to_free;
        g->to_free = x->free_next;
        x_free(x);
    }
    jsonw_free(&g->w);
    oai_lpbuf_free(&g->lp);
    free(g);
    r->http = NULL;
}
