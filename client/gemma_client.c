/* gemma_client.c - the C client of gemmad: one DEALER socket, many requests in flight. Here: names,
 * the request table, the connection, sending, and the blocking calls; what arrives (decoding, the
 * event queue, gmc_poll) is in gemma_client_rx.c (what the two share: gemma_client_int.h). */
#include "client/gemma_client.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "client/gemma_client_int.h"
#include "common/clock.h"
#include "common/curve.h"
#include "proto/gemma.pb-c.h"

static _Thread_local char connect_err[512];

const char *gmc_connect_error(void) { return connect_err; }

const char *gmc_last_error(const gmc_client *c) { return c ? c->err : ""; }

gmc_code gmc_fail(gmc_client *c, gmc_code code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c ? c->err : connect_err, sizeof(c->err), fmt, ap);
    va_end(ap);
    return code;
}

const char *gmc_code_name(gmc_code c)
{
    switch (c) {
    case GMC_OK: return "OK";
    case GMC_ERR_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case GMC_ERR_PROMPT_TOO_LONG: return "PROMPT_TOO_LONG";
    case GMC_ERR_OVERLOADED: return "OVERLOADED";
    case GMC_ERR_CANCELLED: return "CANCELLED";
    case GMC_ERR_INTERNAL: return "INTERNAL";
    case GMC_ERR_WORKER_FAILED: return "WORKER_FAILED";
    case GMC_ERR_UNSUPPORTED_VERSION: return "UNSUPPORTED_VERSION";
    case GMC_ERR_MALFORMED: return "MALFORMED";
    case GMC_ERR_NOT_FOUND: return "NOT_FOUND";
    case GMC_ERR_SHUTTING_DOWN: return "SHUTTING_DOWN";
    case GMC_ERR_UNKNOWN_TYPE: return "UNKNOWN_TYPE";
    case GMC_ERR_DUPLICATE_ID: return "DUPLICATE_ID";
    case GMC_ERR_UNAVAILABLE: return "UNAVAILABLE";
    case GMC_ERR_NONFINITE_LOGITS: return "NONFINITE_LOGITS";
    case GMC_ERR_TIMEOUT: return "TIMEOUT";
    case GMC_ERR_TRANSPORT: return "TRANSPORT";
    case GMC_ERR_PROTOCOL: return "PROTOCOL";
    case GMC_ERR_NOMEM: return "NOMEM";
    }
    return "UNKNOWN";
}

const char *gmc_finish_name(gmc_finish f)
{
    switch (f) {
    case GMC_FINISH_LENGTH: return "length";
    case GMC_FINISH_STOP: return "stop";
    case GMC_FINISH_CANCELLED: return "cancelled";
    case GMC_FINISH_ERROR: return "error";
    default: return "none";
    }
}

void gmc_params_init(gmc_params *p)
{
    memset(p, 0, sizeof(*p));
    p->top_p = 1.0f;
    p->length_penalty = 1.0f;
    p->stream = true;
}

/* ---- request table: open addressing, id -> user ---- */

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

req_ent *gmc_tab_find(gmc_client *c, uint64_t id)
{
    if (!c->tab_cap)
        return NULL;
    uint64_t mask = (uint64_t)c->tab_cap - 1;
    for (uint64_t i = hash64(id) & mask;; i = (i + 1) & mask) {
        req_ent *e = &c->tab[i];
        if (e->id == id)
            return e;
        if (!e->id && !e->tomb)
            return NULL;
    }
}

static bool tab_grow(gmc_client *c)
{
    int64_t ncap = c->tab_cap ? c->tab_cap * 2 : 1024;
    while (c->n_inflight * 2 >= ncap)
        ncap *= 2;
    req_ent *nt = calloc((size_t)ncap, sizeof(*nt));
    if (!nt)
        return false;
    uint64_t mask = (uint64_t)ncap - 1;
    for (int64_t i = 0; i < c->tab_cap; i++) {
        req_ent *e = &c->tab[i];
        if (!e->id)
            continue;
        uint64_t j = hash64(e->id) & mask;
        while (nt[j].id)
            j = (j + 1) & mask;
        nt[j] = *e;
    }
    free(c->tab);
    c->tab = nt;
    c->tab_cap = ncap;
    c->tab_used = c->n_inflight;
    return true;
}

static bool tab_insert(gmc_client *c, uint64_t id, void *user, int32_t n)
{
    if ((c->tab_used + 1) * 2 > c->tab_cap && !tab_grow(c))
        return false;
    uint64_t mask = (uint64_t)c->tab_cap - 1;
    uint64_t i = hash64(id) & mask;
    while (c->tab[i].id)
        i = (i + 1) & mask;
    if (!c->tab[i].tomb)
        c->tab_used++;
    c->tab[i] = (req_ent){id, user, 0, n};
    c->n_inflight++;
    return true;
}

void gmc_tab_remove(gmc_client *c, req_ent *e)
{
    e->id = 0;
    e->user = NULL;
    e->tomb = 1;
    c->n_inflight--;
}

/* ---- connection ---- */

void gmc_connect_opts_init(gmc_connect_opts *o)
{
    memset(o, 0, sizeof(*o));
}

/* The CurveZMQ keys of o: *on = false when o asks for a plain connection. */
static gmc_code curve_keys(const gmc_connect_opts *o, bool *on, gc_keypair *own, char server[GC_KEY_Z85_LEN + 1])
{
    *on = false;
    if (!o || (!o->server_key_file && !o->client_key_file && !o->server_key && !o->client_public_key &&
               !o->client_secret_key))
        return GMC_OK;
    *on = true;
    memset(own, 0, sizeof(*own));
    if (o->server_key) {
        if (!gc_curve_valid_z85(o->server_key))
            return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT, "server key '%s' is not a Z85 public key (40 characters)",
                            o->server_key);
        snprintf(server, GC_KEY_Z85_LEN + 1, "%s", o->server_key);
    } else if (o->server_key_file) {
        gc_keypair sk;
        if (gc_curve_load(o->server_key_file, &sk) != GM_OK)
            return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT, "server key: %s", gm_last_error());
        snprintf(server, GC_KEY_Z85_LEN + 1, "%s", sk.public_z85);
    } else {
        return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT,
                        "CurveZMQ needs the server's public key (--server-key NAME.key)");
    }
    if (o->client_public_key || o->client_secret_key) {
        if (!o->client_public_key || !o->client_secret_key || !gc_curve_valid_z85(o->client_public_key) ||
            !gc_curve_valid_z85(o->client_secret_key))
            return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT, "the client key pair must be two Z85 keys (40 characters)");
        snprintf(own->public_z85, sizeof(own->public_z85), "%s", o->client_public_key);
        snprintf(own->secret_z85, sizeof(own->secret_z85), "%s", o->client_secret_key);
    } else if (o->client_key_file) {
        if (gc_curve_load_secret(o->client_key_file, own) != GM_OK)
            return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT, "client key: %s", gm_last_error());
    } else {
        return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT,
                        "CurveZMQ needs this client's key pair (--client-key NAME.key_secret from gemma-keygen)");
    }
    return GMC_OK;
}

gmc_code gmc_connect(const char *endpoint, int timeout_ms, gmc_client **out)
{
    gmc_connect_opts o;
    gmc_connect_opts_init(&o);
    o.timeout_ms = timeout_ms;
    return gmc_connect_with(endpoint, &o, out);
}

gmc_code gmc_connect_with(const char *endpoint, const gmc_connect_opts *o, gmc_client **out)
{
    *out = NULL;
    connect_err[0] = 0;
    int timeout_ms = o ? o->timeout_ms : 0;
    if (!endpoint || !*endpoint)
        return gmc_fail(NULL, GMC_ERR_INVALID_ARGUMENT, "no endpoint given");
    bool curve;
    gc_keypair own;
    char server_key[GC_KEY_Z85_LEN + 1];
    gmc_code kc = curve_keys(o, &curve, &own, server_key);
    if (kc != GMC_OK)
        return kc;
    gmc_client *c = calloc(1, sizeof(*c));
    if (!c)
        return gmc_fail(NULL, GMC_ERR_NOMEM, "out of memory");
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : -1;
    c->next_id = 1;
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        free(c);
        return gmc_fail(NULL, GMC_ERR_TRANSPORT, "zmq_ctx_new: %s", zmq_strerror(errno));
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    int zero = 0, hwm = 1000000, ivl = 1000, hto = 10000;
    if (!c->sock) {
        gmc_fail(NULL, GMC_ERR_TRANSPORT, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(c->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
    zmq_setsockopt(c->sock, ZMQ_RCVHWM, &zero, sizeof(zero)); /* unlimited: never make gemmad wait */
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof(ivl));
    zmq_setsockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, &hto, sizeof(hto));
    /* watch the connection: requests in flight on a dropped connection are lost */
    char mon_addr[64];
    snprintf(mon_addr, sizeof(mon_addr), "inproc://gmc-monitor-%p", (void *)c);
    int events = ZMQ_EVENT_DISCONNECTED;
    if (curve) {
        c->curve = true;
        events |= ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
        gm_status cs = gc_curve_set_client(c->sock, &own, server_key);
        memset(&own, 0, sizeof(own));
        if (cs != GM_OK) {
            gmc_fail(NULL, GMC_ERR_TRANSPORT, "%s", gm_last_error());
            goto fail;
        }
    }
    if (zmq_socket_monitor(c->sock, mon_addr, events) == 0) {
        c->mon = zmq_socket(c->ctx, ZMQ_PAIR);
        if (c->mon) {
            zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof(zero));
            if (zmq_connect(c->mon, mon_addr) != 0) {
                zmq_close(c->mon);
                c->mon = NULL;
            }
        }
    }
    if (zmq_connect(c->sock, endpoint) != 0) {
        gmc_fail(NULL, GMC_ERR_TRANSPORT, "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    if (timeout_ms > 0) {
        gmc_health h;
        gmc_code rc = gmc_health_check(c, timeout_ms, &h);
        if (rc != GMC_OK) {
            if (rc == GMC_ERR_TIMEOUT && c->curve)
                gmc_fail(NULL, rc, "no answer from '%s' within %d ms (CurveZMQ: is the server key right, and is "
                                   "curve on at the server?)", endpoint, timeout_ms);
            else if (rc == GMC_ERR_TIMEOUT)
                gmc_fail(NULL, rc, "no answer from gemmad at '%s' within %d ms", endpoint, timeout_ms);
            else
                gmc_fail(NULL, rc, "health probe of '%s' failed: %s", endpoint, c->err);
            gmc_close(&c);
            return rc;
        }
    }
    *out = c;
    return GMC_OK;
fail:
    if (c->mon)
        zmq_close(c->mon);
    if (c->sock)
        zmq_close(c->sock);
    zmq_ctx_term(c->ctx);
    free(c);
    return errno == ENOMEM ? GMC_ERR_NOMEM : GMC_ERR_TRANSPORT;
}

void gmc_close(gmc_client **pc)
{
    if (!pc || !*pc)
        return;
    gmc_client *c = *pc;
    gmc_rx_free_lent(c);
    /* queued events: free each message once (refs counts its queued events) */
    while (c->q_len > 0) {
        queued_ev *qe = &c->q[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        if (qe->msg && --qe->msg->refs == 0)
            gmc_rx_msg_free(qe->msg);
    }
    if (c->mon)
        zmq_close(c->mon);
    zmq_close(c->sock);
    zmq_ctx_term(c->ctx);
    free(c->q);
    free(c->tab);
    free(c->txbuf);
    free(c);
    *pc = NULL;
}

void *gmc_socket(gmc_client *c) { return c->sock; }
int64_t gmc_pending(const gmc_client *c) { return c->q_len; }
int64_t gmc_in_flight(const gmc_client *c) { return c->n_inflight; }

/* Pack and send one ClientMessage. */
static gmc_code send_msg(gmc_client *c, Gemma__V1__ClientMessage *m)
{
    m->protocol_version = GMC_PROTOCOL_VERSION;
    size_t n = gemma__v1__client_message__get_packed_size(m);
    if (n > c->txcap) {
        size_t cap = n < 4096 ? 4096 : n * 2;
        uint8_t *b = realloc(c->txbuf, cap);
        if (!b)
            return gmc_fail(c, GMC_ERR_NOMEM, "out of memory packing a %zu-byte request", n);
        c->txbuf = b;
        c->txcap = cap;
    }
    gemma__v1__client_message__pack(m, c->txbuf);
    if (zmq_send(c->sock, c->txbuf, n, ZMQ_DONTWAIT) < 0) {
        if (errno == EAGAIN)
            return gmc_fail(c, GMC_ERR_TRANSPORT, "send queue full (gemmad not reading?)");
        return gmc_fail(c, GMC_ERR_TRANSPORT, "zmq_send: %s", zmq_strerror(errno));
    }
    return GMC_OK;
}

gmc_code gmc_submit(gmc_client *c, const gmc_params *p, void *user, uint64_t *id_out)
{
    c->err[0] = 0;
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__GenerateRequest g = GEMMA__V1__GENERATE_REQUEST__INIT;
    Gemma__V1__SamplingParams sp = GEMMA__V1__SAMPLING_PARAMS__INIT;
    Gemma__V1__TokenIds tk = GEMMA__V1__TOKEN_IDS__INIT;
    Gemma__V1__ChatPrompt chat = GEMMA__V1__CHAT_PROMPT__INIT;
    Gemma__V1__ChatMessage cmsg[64];
    Gemma__V1__ChatMessage *cmsgp[64];
    char *textbuf = NULL;

    if (p->prompt && (p->prompt_len ? p->prompt_len : strlen(p->prompt)) > 0) {
        size_t len = p->prompt_len ? p->prompt_len : strlen(p->prompt);
        if (p->prompt[len] != 0 || memchr(p->prompt, 0, len)) {
            textbuf = malloc(len + 1);
            if (!textbuf)
                return gmc_fail(c, GMC_ERR_NOMEM, "out of memory");
            memcpy(textbuf, p->prompt, len);
            textbuf[len] = 0;
        }
        g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TEXT;
        g.text = textbuf ? textbuf : (char *)p->prompt;
    } else if (p->prompt_ids && p->n_prompt_ids > 0) {
        tk.n_ids = (size_t)p->n_prompt_ids;
        tk.ids = (int32_t *)p->prompt_ids;
        g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_TOKENS;
        g.tokens = &tk;
    } else if (p->messages && p->n_messages > 0) {
        if (p->n_messages > 64)
            return gmc_fail(c, GMC_ERR_INVALID_ARGUMENT, "%d chat messages: at most 64", (int)p->n_messages);
        for (int i = 0; i < p->n_messages; i++) {
            cmsg[i] = (Gemma__V1__ChatMessage)GEMMA__V1__CHAT_MESSAGE__INIT;
            cmsg[i].role = (char *)(p->messages[i].role ? p->messages[i].role : "");
            cmsg[i].text = (char *)(p->messages[i].text ? p->messages[i].text : "");
            cmsgp[i] = &cmsg[i];
        }
        chat.n_messages = (size_t)p->n_messages;
        chat.messages = cmsgp;
        g.prompt_case = GEMMA__V1__GENERATE_REQUEST__PROMPT_CHAT;
        g.chat = &chat;
    }
    /* An empty prompt is still sent: the daemon answers with INVALID_ARGUMENT. */

    uint64_t id = p->request_id;
    if (id) {
        if (gmc_tab_find(c, id))
            return gmc_fail(c, GMC_ERR_DUPLICATE_ID, "request id %llu is already in flight", (unsigned long long)id);
    } else {
        do
            id = c->next_id++;
        while (!id || gmc_tab_find(c, id));
    }
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.seed = p->seed;
    sp.presence_penalty = p->presence_penalty;
    sp.frequency_penalty = p->frequency_penalty;
    sp.repetition_penalty = p->repetition_penalty;
    g.sampling = &sp;
    g.min_tokens = p->min_tokens;
    g.speculative_tokens = p->speculative_tokens;
    g.logprobs = p->logprobs;
    g.top_logprobs = p->top_logprobs;
    g.max_tokens = p->max_tokens;
    g.n_stop = p->n_stop > 0 ? (size_t)p->n_stop : 0;
    g.stop = (char **)p->stop;
    g.n_stop_token_ids = p->n_stop_ids > 0 ? (size_t)p->n_stop_ids : 0;
    g.stop_token_ids = (int32_t *)p->stop_ids;
    g.stream = p->stream;
    g.ignore_eos = p->ignore_eos;
    g.n = p->n;
    g.beam_width = p->beam_width;
    if (p->beam_width > 1) {
        g.length_penalty_set_case = GEMMA__V1__GENERATE_REQUEST__LENGTH_PENALTY_SET_LENGTH_PENALTY;
        g.length_penalty = p->length_penalty;
        g.early_stopping = p->early_stopping;
    }
    cm.request_id = id;
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_GENERATE;
    cm.generate = &g;
    if (!tab_insert(c, id, user, p->n)) {
        free(textbuf);
        return gmc_fail(c, GMC_ERR_NOMEM, "out of memory");
    }
    gmc_code rc = send_msg(c, &cm);
    free(textbuf);
    if (rc != GMC_OK) {
        gmc_tab_remove(c, gmc_tab_find(c, id));
        return rc;
    }
    if (id_out)
        *id_out = id;
    return GMC_OK;
}

gmc_code gmc_cancel(gmc_client *c, uint64_t request_id)
{
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__CancelRequest cr = GEMMA__V1__CANCEL_REQUEST__INIT;
    cr.target_request_id = request_id;
    cm.request_id = 0; /* the reply is not waited for */
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_CANCEL;
    cm.cancel = &cr;
    return send_msg(c, &cm);
}

static void wait_reset(gmc_client *c)
{
    c->wait_kind = 0;
    c->wait_id = 0;
    c->wait_done = false;
    c->wait_err = GMC_OK;
    c->wait_health = NULL;
    c->wait_stats = NULL;
    c->wait_result = NULL;
    c->wait_cb = NULL;
}

/* Request ids of health/stats probes: from the top of the id space, away from
 * the generate ids the library hands out. */
static uint64_t probe_id(gmc_client *c)
{
    return 0x8000000000000000ull | ++c->next_probe;
}

gmc_code gmc_health_check(gmc_client *c, int timeout_ms, gmc_health *out)
{
    gmc_rx_free_lent(c);
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__HealthRequest hr = GEMMA__V1__HEALTH_REQUEST__INIT;
    cm.request_id = probe_id(c);
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_HEALTH;
    cm.health = &hr;
    wait_reset(c);
    c->wait_kind = 1;
    c->wait_id = cm.request_id;
    c->wait_health = out;
    gmc_code rc = send_msg(c, &cm);
    if (rc == GMC_OK)
        rc = gmc_rx_wait(c, timeout_ms);
    wait_reset(c);
    return rc;
}

gmc_code gmc_stats_get(gmc_client *c, int timeout_ms, gmc_stats *out)
{
    gmc_rx_free_lent(c);
    Gemma__V1__ClientMessage cm = GEMMA__V1__CLIENT_MESSAGE__INIT;
    Gemma__V1__StatsRequest sr = GEMMA__V1__STATS_REQUEST__INIT;
    cm.request_id = probe_id(c);
    cm.body_case = GEMMA__V1__CLIENT_MESSAGE__BODY_STATS;
    cm.stats = &sr;
    wait_reset(c);
    c->wait_kind = 2;
    c->wait_id = cm.request_id;
    c->wait_stats = out;
    gmc_code rc = send_msg(c, &cm);
    if (rc == GMC_OK)
        rc = gmc_rx_wait(c, timeout_ms);
    wait_reset(c);
    return rc;
}

gmc_code gmc_generate(gmc_client *c, const gmc_params *p, int timeout_ms,
                      void (*on_chunk)(const gmc_event *ev, void *arg), void *arg, gmc_result *r)
{
    gmc_rx_free_lent(c);
    memset(r, 0, sizeof(*r));
    if (p->n > 1) {
        r->finish_reason = GMC_FINISH_ERROR;
        r->error = GMC_ERR_INVALID_ARGUMENT;
        snprintf(r->error_message, sizeof(r->error_message), "gmc_generate returns one sequence: n > 1 goes "
                                                             "through gmc_submit and gmc_poll");
        return gmc_fail(c, GMC_ERR_INVALID_ARGUMENT, "%s", r->error_message);
    }
    uint64_t id;
    wait_reset(c);
    c->wait_kind = 3;
    c->wait_result = r;
    c->wait_cb = on_chunk;
    c->wait_arg = arg;
    c->wait_tok_cap = c->wait_txt_cap = 0;
    gmc_code rc = gmc_submit(c, p, NULL, &id);
    if (rc != GMC_OK) {
        wait_reset(c);
        r->finish_reason = GMC_FINISH_ERROR;
        r->error = rc;
        snprintf(r->error_message, sizeof(r->error_message), "%.255s", c->err);
        return rc;
    }
    c->wait_id = id;
    rc = gmc_rx_wait(c, timeout_ms);
    wait_reset(c);
    if (rc == GMC_ERR_TIMEOUT) {
        gmc_cancel(c, id); /* the daemon's final chunk is then dropped as stale */
        req_ent *e = gmc_tab_find(c, id);
        if (e)
            gmc_tab_remove(c, e);
    }
    if (!r->text) {
        r->text = calloc(1, 1);
        if (!r->text)
            return GMC_ERR_NOMEM;
    }
    if (rc != GMC_OK) {
        r->finish_reason = GMC_FINISH_ERROR;
        r->error = rc;
        snprintf(r->error_message, sizeof(r->error_message), "%.255s", c->err);
        return rc;
    }
    if (r->error != GMC_OK) {
        gmc_fail(c, r->error, "%s", r->error_message);
        return r->error;
    }
    return GMC_OK;
}

void gmc_result_free(gmc_result *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->text);
    r->tokens = NULL;
    r->text = NULL;
    r->n_tokens = 0;
    r->text_len = 0;
}
