/* gemma_client.c - the C client of gemmad: one DEALER socket, many requests in flight. */
#include "client/gemma_client.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/curve.h"
#include "proto/gemma.pb-c.h"

/* ---- a bump arena for unpacking one ServerMessage (freed at once) ---- */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    max_align_t data[]; /* [cap] bytes */
} arena_blk;

typedef struct rx_msg {
    struct rx_msg *next;
    arena_blk *blks;
    Gemma__V1__ServerMessage *m;
    int64_t refs; /* events still queued or lent out */
} rx_msg;

static void *arena_alloc(void *ad, size_t size)
{
    rx_msg *r = ad;
    size = (size + 15) & ~(size_t)15;
    arena_blk *b = r->blks;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > 32768 ? size : 32768;
        b = malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = r->blks;
        r->blks = b;
    }
    void *p = (char *)b->data + b->used;
    b->used += size;
    return p;
}

static void arena_free(void *ad, void *p)
{
    (void)ad;
    (void)p;
}

static void rx_msg_free(rx_msg *r)
{
    if (!r)
        return;
    for (arena_blk *b = r->blks; b;) {
        arena_blk *n = b->next;
        free(b);
        b = n;
    }
    free(r);
}

/* ---- request table: open addressing, id -> user ---- */

typedef struct req_ent {
    uint64_t id; /* 0 = empty */
    void *user;
    uint8_t tomb;
    int32_t n;   /* sequences asked for: with n > 1 the request ends at the chunk with usage */
} req_ent;

typedef struct queued_ev {
    gmc_event ev;
    rx_msg *msg;
} queued_ev;

struct gmc_client {
    void *ctx, *sock;
    void *mon; /* PAIR receiving the DEALER's connect/disconnect events, or NULL */
    bool curve, refused; /* CurveZMQ on; the server refused our handshake */
    int timeout_ms;
    uint64_t next_id, next_probe;
    req_ent *tab; /* [tab_cap] */
    int64_t tab_cap, tab_used, n_inflight;
    queued_ev *q; /* ring [q_cap] */
    int64_t q_cap, q_head, q_len;
    rx_msg *lent;  /* messages whose events were all handed out; freed at the next call */
    uint8_t *txbuf;
    size_t txcap;
    /* blocking-call rendezvous */
    uint64_t wait_id;
    int wait_kind; /* 0 none, 1 health, 2 stats, 3 generate */
    bool wait_done;
    gmc_code wait_err;
    gmc_health *wait_health;
    gmc_stats *wait_stats;
    gmc_result *wait_result;
    void (*wait_cb)(const gmc_event *, void *);
    void *wait_arg;
    size_t wait_tok_cap, wait_txt_cap;
    char err[512];
};

static _Thread_local char connect_err[512];

const char *gmc_connect_error(void) { return connect_err; }

const char *gmc_last_error(const gmc_client *c) { return c ? c->err : ""; }

static gmc_code cfail(gmc_client *c, gmc_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static gmc_code cfail(gmc_client *c, gmc_code code, const char *fmt, ...)
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

/* ---- request table ---- */

static uint64_t hash64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static req_ent *tab_find(gmc_client *c, uint64_t id)
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

static void tab_remove(gmc_client *c, req_ent *e)
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
            return cfail(NULL, GMC_ERR_INVALID_ARGUMENT, "server key '%s' is not a Z85 public key (40 characters)",
                         o->server_key);
        snprintf(server, GC_KEY_Z85_LEN + 1, "%s", o->server_key);
    } else if (o->server_key_file) {
        gc_keypair sk;
        if (gc_curve_load(o->server_key_file, &sk) != GM_OK)
            return cfail(NULL, GMC_ERR_INVALID_ARGUMENT, "server key: %s", gm_last_error());
        snprintf(server, GC_KEY_Z85_LEN + 1, "%s", sk.public_z85);
    } else {
        return cfail(NULL, GMC_ERR_INVALID_ARGUMENT, "CurveZMQ needs the server's public key (--server-key NAME.key)");
    }
    if (o->client_public_key || o->client_secret_key) {
        if (!o->client_public_key || !o->client_secret_key || !gc_curve_valid_z85(o->client_public_key) ||
            !gc_curve_valid_z85(o->client_secret_key))
            return cfail(NULL, GMC_ERR_INVALID_ARGUMENT, "the client key pair must be two Z85 keys (40 characters)");
        snprintf(own->public_z85, sizeof(own->public_z85), "%s", o->client_public_key);
        snprintf(own->secret_z85, sizeof(own->secret_z85), "%s", o->client_secret_key);
    } else if (o->client_key_file) {
        if (gc_curve_load_secret(o->client_key_file, own) != GM_OK)
            return cfail(NULL, GMC_ERR_INVALID_ARGUMENT, "client key: %s", gm_last_error());
    } else {
        return cfail(NULL, GMC_ERR_INVALID_ARGUMENT,
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
        return cfail(NULL, GMC_ERR_INVALID_ARGUMENT, "no endpoint given");
    bool curve;
    gc_keypair own;
    char server_key[GC_KEY_Z85_LEN + 1];
    gmc_code kc = curve_keys(o, &curve, &own, server_key);
    if (kc != GMC_OK)
        return kc;
    gmc_client *c = calloc(1, sizeof(*c));
    if (!c)
        return cfail(NULL, GMC_ERR_NOMEM, "out of memory");
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : -1;
    c->next_id = 1;
    c->ctx = zmq_ctx_new();
    if (!c->ctx) {
        free(c);
        return cfail(NULL, GMC_ERR_TRANSPORT, "zmq_ctx_new: %s", zmq_strerror(errno));
    }
    c->sock = zmq_socket(c->ctx, ZMQ_DEALER);
    int zero = 0, hwm = 1000000, ivl = 1000, hto = 10000;
    if (!c->sock) {
        cfail(NULL, GMC_ERR_TRANSPORT, "zmq_socket: %s", zmq_strerror(errno));
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
            cfail(NULL, GMC_ERR_TRANSPORT, "%s", gm_last_error());
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
        cfail(NULL, GMC_ERR_TRANSPORT, "cannot connect to '%s': %s", endpoint, zmq_strerror(errno));
        goto fail;
    }
    if (timeout_ms > 0) {
        gmc_health h;
        gmc_code rc = gmc_health_check(c, timeout_ms, &h);
        if (rc != GMC_OK) {
            if (rc == GMC_ERR_TIMEOUT && c->curve)
                cfail(NULL, rc, "no answer from '%s' within %d ms (CurveZMQ: is the server key right, and is "
                                "curve on at the server?)", endpoint, timeout_ms);
            else if (rc == GMC_ERR_TIMEOUT)
                cfail(NULL, rc, "no answer from gemmad at '%s' within %d ms", endpoint, timeout_ms);
            else
                cfail(NULL, rc, "health probe of '%s' failed: %s", endpoint, c->err);
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

static void free_lent(gmc_client *c)
{
    while (c->lent) {
        rx_msg *n = c->lent->next;
        rx_msg_free(c->lent);
        c->lent = n;
    }
}

void gmc_close(gmc_client **pc)
{
    if (!pc || !*pc)
        return;
    gmc_client *c = *pc;
    free_lent(c);
    /* queued events: free each message once (refs counts its queued events) */
    while (c->q_len > 0) {
        queued_ev *qe = &c->q[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        if (qe->msg && --qe->msg->refs == 0)
            rx_msg_free(qe->msg);
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
            return cfail(c, GMC_ERR_NOMEM, "out of memory packing a %zu-byte request", n);
        c->txbuf = b;
        c->txcap = cap;
    }
    gemma__v1__client_message__pack(m, c->txbuf);
    if (zmq_send(c->sock, c->txbuf, n, ZMQ_DONTWAIT) < 0) {
        if (errno == EAGAIN)
            return cfail(c, GMC_ERR_TRANSPORT, "send queue full (gemmad not reading?)");
        return cfail(c, GMC_ERR_TRANSPORT, "zmq_send: %s", zmq_strerror(errno));
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
                return cfail(c, GMC_ERR_NOMEM, "out of memory");
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
            return cfail(c, GMC_ERR_INVALID_ARGUMENT, "%d chat messages: at most 64", (int)p->n_messages);
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
        if (tab_find(c, id))
            return cfail(c, GMC_ERR_DUPLICATE_ID, "request id %llu is already in flight", (unsigned long long)id);
    } else {
        do
            id = c->next_id++;
        while (!id || tab_find(c, id));
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
        return cfail(c, GMC_ERR_NOMEM, "out of memory");
    }
    gmc_code rc = send_msg(c, &cm);
    free(textbuf);
    if (rc != GMC_OK) {
        tab_remove(c, tab_find(c, id));
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

/* ---- receiving ---- */

static bool q_push(gmc_client *c, const gmc_event *ev, rx_msg *m)
{
    if (c->q_len == c->q_cap) {
        int64_t ncap = c->q_cap ? c->q_cap * 2 : 1024;
        queued_ev *nq = malloc((size_t)ncap * sizeof(*nq));
        if (!nq)
            return false;
        for (int64_t i = 0; i < c->q_len; i++)
            nq[i] = c->q[(c->q_head + i) % c->q_cap];
        free(c->q);
        c->q = nq;
        c->q_cap = ncap;
        c->q_head = 0;
    }
    c->q[(c->q_head + c->q_len) % c->q_cap] = (queued_ev){*ev, m};
    c->q_len++;
    if (m)
        m->refs++;
    return true;
}

static void usage_from(gmc_usage *u, const Gemma__V1__Usage *pu)
{
    memset(u, 0, sizeof(*u));
    if (!pu)
        return;
    u->prompt_tokens = pu->prompt_tokens;
    u->completion_tokens = pu->completion_tokens;
    u->queue_ms = pu->queue_ms;
    u->ttft_ms = pu->ttft_ms;
    u->total_ms = pu->total_ms;
    u->preemptions = pu->preemptions;
    u->cached_tokens = pu->cached_tokens;
}

/* Feed one event of the request a blocking gmc_generate waits on. */
static void capture_event(gmc_client *c, const gmc_event *ev)
{
    gmc_result *r = c->wait_result;
    if (c->wait_cb)
        c->wait_cb(ev, c->wait_arg);
    if (ev->n_tokens > 0) {
        if ((size_t)(r->n_tokens + ev->n_tokens) > c->wait_tok_cap) {
            size_t cap = c->wait_tok_cap ? c->wait_tok_cap * 2 : 256;
            while (cap < (size_t)(r->n_tokens + ev->n_tokens))
                cap *= 2;
            int32_t *t = realloc(r->tokens, cap * sizeof(int32_t));
            if (!t) {
                c->wait_err = GMC_ERR_NOMEM;
                return;
            }
            r->tokens = t;
            c->wait_tok_cap = cap;
        }
        memcpy(r->tokens + r->n_tokens, ev->tokens, (size_t)ev->n_tokens * sizeof(int32_t));
        r->n_tokens += ev->n_tokens;
    }
    if (ev->text_len > 0 || !r->text) {
        if (r->text_len + ev->text_len + 1 > c->wait_txt_cap) {
            size_t cap = c->wait_txt_cap ? c->wait_txt_cap * 2 : 256;
            while (cap < r->text_len + ev->text_len + 1)
                cap *= 2;
            char *t = realloc(r->text, cap);
            if (!t) {
                c->wait_err = GMC_ERR_NOMEM;
                return;
            }
            r->text = t;
            c->wait_txt_cap = cap;
        }
        if (ev->text_len)
            memcpy(r->text + r->text_len, ev->text, ev->text_len);
        r->text_len += ev->text_len;
        r->text[r->text_len] = 0;
    }
    if (ev->finished) {
        r->finish_reason = ev->finish_reason;
        r->error = ev->error;
        snprintf(r->error_message, sizeof(r->error_message), "%s", ev->error_message ? ev->error_message : "");
        r->usage = ev->usage;
        c->wait_done = true;
    }
}

/* Route one event: to the blocking call waiting for it, or to the queue. */
static bool deliver(gmc_client *c, const gmc_event *ev, rx_msg *m)
{
    if (c->wait_kind == 3 && ev->request_id == c->wait_id) {
        capture_event(c, ev);
        return true;
    }
    return q_push(c, ev, m);
}

static void health_from(gmc_health *h, const Gemma__V1__HealthReply *r)
{
    memset(h, 0, sizeof(*h));
    h->serving = r->serving;
    h->shutting_down = r->shutting_down;
    snprintf(h->model, sizeof(h->model), "%s", r->model ? r->model : "");
    snprintf(h->backend, sizeof(h->backend), "%s", r->backend ? r->backend : "");
    snprintf(h->version, sizeof(h->version), "%s", r->version ? r->version : "");
    h->tp = r->tp;
    h->protocol_version = GMC_PROTOCOL_VERSION;
    h->uptime_s = r->uptime_s;
}

static void stats_from(gmc_stats *s, const Gemma__V1__StatsReply *r)
{
    memset(s, 0, sizeof(*s));
    s->running = r->running;
    s->waiting = r->waiting;
    s->kv_blocks_total = r->kv_blocks_total;
    s->kv_blocks_used = r->kv_blocks_used;
    s->kv_blocks_free = r->kv_blocks_free;
    s->kv_block_size = r->kv_block_size;
    s->requests_total = r->requests_total;
    s->requests_finished = r->requests_finished;
    s->requests_failed = r->requests_failed;
    s->requests_cancelled = r->requests_cancelled;
    s->preemptions = r->preemptions;
    s->prompt_tokens = r->prompt_tokens;
    s->completion_tokens = r->completion_tokens;
    s->steps = r->steps;
    s->tokens_per_s = r->tokens_per_s;
    s->ttft_p50_ms = r->ttft_p50_ms;
    s->ttft_p99_ms = r->ttft_p99_ms;
    s->tpot_p50_ms = r->tpot_p50_ms;
    s->tpot_p99_ms = r->tpot_p99_ms;
    s->queue_p50_ms = r->queue_p50_ms;
    s->queue_p99_ms = r->queue_p99_ms;
    s->step_avg_ms = r->step_avg_ms;
    s->clients = r->clients;
    s->worker_restarts = r->worker_restarts;
    s->uptime_s = r->uptime_s;
    s->prefix_cache = r->prefix_cache;
    s->kv_blocks_cached = r->kv_blocks_cached;
    s->prefix_cache_queries = r->prefix_cache_queries;
    s->prefix_cache_hits = r->prefix_cache_hits;
    s->prefix_cache_hit_rate = r->prefix_cache_hit_rate;
    s->spec_steps = r->spec_steps;
    s->spec_drafted = r->spec_drafted_tokens;
    s->spec_accepted = r->spec_accepted_tokens;
    s->spec_acceptance_rate = r->spec_acceptance_rate;
}

/* Decode one received frame into events / replies. */
static gmc_code handle_frame(gmc_client *c, const void *data, size_t len)
{
    rx_msg *r = calloc(1, sizeof(*r));
    if (!r)
        return cfail(c, GMC_ERR_NOMEM, "out of memory");
    ProtobufCAllocator al = {arena_alloc, arena_free, r};
    r->m = gemma__v1__server_message__unpack(&al, len, data);
    if (!r->m) {
        rx_msg_free(r);
        return cfail(c, GMC_ERR_PROTOCOL, "undecodable %zu-byte message from gemmad", len);
    }
    Gemma__V1__ServerMessage *m = r->m;
    if (m->protocol_version != GMC_PROTOCOL_VERSION) {
        rx_msg_free(r);
        return cfail(c, GMC_ERR_PROTOCOL, "gemmad speaks protocol version %u, this client %d", m->protocol_version,
                     GMC_PROTOCOL_VERSION);
    }
    r->refs = 1; /* held while we route */
    for (size_t i = 0; i < m->n_chunks; i++) {
        const Gemma__V1__GenerateChunk *ch = m->chunks[i];
        req_ent *e = tab_find(c, ch->request_id);
        if (!e)
            continue; /* stale: a request we no longer track */
        gmc_event ev = {0};
        ev.request_id = ch->request_id;
        ev.user = e->user;
        ev.tokens = ch->token_ids;
        ev.n_tokens = (int32_t)ch->n_token_ids;
        gmc_logprob *lp = ch->n_logprobs ? arena_alloc(r, ch->n_logprobs * sizeof(*lp)) : NULL; /* as long as m */
        if (lp) { /* out of memory: the event goes without them */
            for (size_t k = 0; k < ch->n_logprobs; k++) {
                const Gemma__V1__TokenLogprobs *t = ch->logprobs[k];
                size_t nt = t->n_top_ids < t->n_top_logprobs ? t->n_top_ids : t->n_top_logprobs;
                lp[k] = (gmc_logprob){t->logprob, (int32_t)nt, t->top_ids, t->top_logprobs,
                                      {(const char *)t->token.data, t->token.len}, NULL};
                gmc_bytes *tt = nt ? arena_alloc(r, nt * sizeof(*tt)) : NULL;
                for (size_t j = 0; tt && j < nt; j++) /* an older gemmad sends no strings: empty ones */
                    tt[j] = j < t->n_top_tokens ? (gmc_bytes){(const char *)t->top_tokens[j].data,
                                                              t->top_tokens[j].len}
                                                : (gmc_bytes){"", 0};
                lp[k].top_tokens = tt;
            }
            ev.logprobs = lp;
            ev.n_logprobs = (int32_t)ch->n_logprobs;
        }
        ev.text = (const char *)ch->text.data;
        ev.text_len = ch->text.len;
        ev.error_message = ch->error_message ? ch->error_message : "";
        ev.index = ch->index;
        if (ch->finish_reason != GEMMA__V1__FINISH_REASON__FINISH_NONE) {
            ev.index_finished = true;
            ev.finish_reason = (gmc_finish)ch->finish_reason;
            ev.error = (gmc_code)ch->error_code;
        }
        if (ev.index_finished && (e->n <= 1 || ch->usage)) { /* n > 1: the last chunk has usage */
            ev.finished = true;
            usage_from(&ev.usage, ch->usage);
            tab_remove(c, e);
        }
        if (!deliver(c, &ev, r))
            return cfail(c, GMC_ERR_NOMEM, "out of memory");
    }
    switch (m->body_case) {
    case GEMMA__V1__SERVER_MESSAGE__BODY_HEALTH:
        if (c->wait_kind == 1 && m->health->request_id == c->wait_id) {
            health_from(c->wait_health, m->health);
            c->wait_done = true;
        }
        break;
    case GEMMA__V1__SERVER_MESSAGE__BODY_STATS:
        if (c->wait_kind == 2 && m->stats->request_id == c->wait_id) {
            stats_from(c->wait_stats, m->stats);
            c->wait_done = true;
        }
        break;
    case GEMMA__V1__SERVER_MESSAGE__BODY_ERROR: {
        const Gemma__V1__Error *er = m->error;
        req_ent *e = er->request_id ? tab_find(c, er->request_id) : NULL;
        if (e) { /* the error ends a generate request of ours */
            gmc_event ev = {0};
            ev.request_id = er->request_id;
            ev.user = e->user;
            ev.finished = true;
            ev.finish_reason = GMC_FINISH_ERROR;
            ev.error = (gmc_code)er->code;
            ev.error_message = er->message ? er->message : "";
            tab_remove(c, e);
            if (!deliver(c, &ev, r))
                return cfail(c, GMC_ERR_NOMEM, "out of memory");
        } else if ((c->wait_kind == 1 || c->wait_kind == 2) && er->request_id == c->wait_id) {
            c->wait_done = true;
            c->wait_err = (gmc_code)er->code;
            cfail(c, (gmc_code)er->code, "gemmad: %s: %s", gmc_code_name((gmc_code)er->code),
                  er->message ? er->message : "");
        } else {
            cfail(c, (gmc_code)er->code, "gemmad: %s: %s", gmc_code_name((gmc_code)er->code),
                  er->message ? er->message : "");
        }
        break;
    }
    default:
        break;
    }
    if (--r->refs == 0)
        rx_msg_free(r);
    return GMC_OK;
}

/* Receive every frame already waiting (non-blocking); -code on failure. */
static int recv_available(gmc_client *c)
{
    int got = 0;
    for (;;) {
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        int n = zmq_msg_recv(&msg, c->sock, ZMQ_DONTWAIT);
        if (n < 0) {
            zmq_msg_close(&msg);
            if (errno == EAGAIN)
                return got;
            if (errno == EINTR)
                continue;
            return -(int)cfail(c, GMC_ERR_TRANSPORT, "zmq_recv: %s", zmq_strerror(errno));
        }
        gmc_code rc = handle_frame(c, zmq_msg_data(&msg), zmq_msg_size(&msg));
        zmq_msg_close(&msg);
        if (rc == GMC_ERR_NOMEM)
            return -(int)rc;
        got++; /* an undecodable frame is skipped, its detail kept in c->err */
    }
}

/* Every request in flight ends with a TRANSPORT error: the connection dropped. */
static void fail_inflight(gmc_client *c)
{
    static const char msg[] = "lost the connection to gemmad";
    for (int64_t i = 0; i < c->tab_cap; i++) {
        req_ent *e = &c->tab[i];
        if (!e->id)
            continue;
        gmc_event ev = {0};
        ev.request_id = e->id;
        ev.user = e->user;
        ev.finished = true;
        ev.finish_reason = GMC_FINISH_ERROR;
        ev.error = GMC_ERR_TRANSPORT;
        ev.error_message = msg;
        tab_remove(c, e);
        deliver(c, &ev, NULL);
    }
    if (c->wait_kind == 1 || c->wait_kind == 2) {
        c->wait_done = true;
        c->wait_err = cfail(c, GMC_ERR_TRANSPORT, "%s", msg);
    }
}

/* Read connection events; on a disconnect, take what arrived first, then fail the rest. */
static int read_monitor(gmc_client *c)
{
    bool lost = false;
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            break;
        }
        uint16_t event = 0;
        if (zmq_msg_size(&ev) >= 2)
            memcpy(&event, zmq_msg_data(&ev), 2);
        bool more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            zmq_msg_recv(&addr, c->mon, ZMQ_DONTWAIT);
            zmq_msg_close(&addr);
        }
        if (event == ZMQ_EVENT_DISCONNECTED)
            lost = true;
        if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH || event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            c->refused = true;
    }
    if (c->refused) /* a refused key stays refused: fail now rather than time out */
        return -(int)cfail(c, GMC_ERR_TRANSPORT, "the server refused the CurveZMQ handshake: "
                                                 "this client's key is not allowed there, or the keys do not match");
    if (!lost)
        return 0;
    int n = recv_available(c);
    if (n < 0)
        return n;
    fail_inflight(c);
    return 1;
}

/* Wait up to timeout_ms (-1 forever) for the socket to become readable, then
 * receive. Returns 0 on timeout, > 0 frames, < 0 error. */
static int wait_recv(gmc_client *c, int timeout_ms)
{
    int n = recv_available(c);
    if (n != 0)
        return n;
    zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
    int pr = zmq_poll(it, c->mon ? 2 : 1, timeout_ms);
    if (pr < 0) {
        if (errno == EINTR)
            return 0;
        return -(int)cfail(c, GMC_ERR_TRANSPORT, "zmq_poll: %s", zmq_strerror(errno));
    }
    if (pr == 0)
        return 0;
    n = recv_available(c);
    if (n < 0)
        return n;
    if (c->mon && (it[1].revents & ZMQ_POLLIN)) {
        int m = read_monitor(c);
        if (m < 0)
            return m;
        n += m;
    }
    return n;
}

int gmc_poll(gmc_client *c, gmc_event *events, int max_events, int timeout_ms)
{
    free_lent(c);
    if (c->q_len == 0) {
        double deadline = timeout_ms > 0 ? gm_now_ms() + timeout_ms : 0;
        for (;;) {
            int left = timeout_ms < 0 ? -1 : timeout_ms == 0 ? 0 : (int)(deadline - gm_now_ms());
            if (timeout_ms > 0 && left < 0)
                left = 0;
            int n = wait_recv(c, left);
            if (n < 0)
                return n;
            if (c->q_len > 0 || left == 0)
                break;
        }
    } else {
        int n = recv_available(c);
        if (n >= 0 && c->mon)
            n = read_monitor(c);
        if (n < 0)
            return n;
    }
    int k = 0;
    while (k < max_events && c->q_len > 0) {
        queued_ev *qe = &c->q[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        events[k++] = qe->ev;
        if (qe->msg && --qe->msg->refs == 0) {
            qe->msg->next = c->lent;
            c->lent = qe->msg;
        }
    }
    return k;
}

/* Wait until c->wait_done or the timeout; GMC_OK or the failure. */
static gmc_code wait_for(gmc_client *c, int timeout_ms)
{
    int t = timeout_ms == 0 ? c->timeout_ms : timeout_ms;
    double deadline = t > 0 ? gm_now_ms() + t : 0;
    while (!c->wait_done) {
        int left = t < 0 ? -1 : (int)(deadline - gm_now_ms());
        if (t > 0 && left <= 0)
            return cfail(c, GMC_ERR_TIMEOUT, "no answer from gemmad within %d ms", t);
        int n = wait_recv(c, left);
        if (n < 0)
            return (gmc_code)-n;
    }
    return c->wait_err;
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
    free_lent(c);
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
        rc = wait_for(c, timeout_ms);
    wait_reset(c);
    return rc;
}

gmc_code gmc_stats_get(gmc_client *c, int timeout_ms, gmc_stats *out)
{
    free_lent(c);
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
        rc = wait_for(c, timeout_ms);
    wait_reset(c);
    return rc;
}

gmc_code gmc_generate(gmc_client *c, const gmc_params *p, int timeout_ms,
                      void (*on_chunk)(const gmc_event *ev, void *arg), void *arg, gmc_result *r)
{
    free_lent(c);
    memset(r, 0, sizeof(*r));
    if (p->n > 1) {
        r->finish_reason = GMC_FINISH_ERROR;
        r->error = GMC_ERR_INVALID_ARGUMENT;
        snprintf(r->error_message, sizeof(r->error_message), "gmc_generate returns one sequence: n > 1 goes "
                                                             "through gmc_submit and gmc_poll");
        return cfail(c, GMC_ERR_INVALID_ARGUMENT, "%s", r->error_message);
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
    rc = wait_for(c, timeout_ms);
    wait_reset(c);
    if (rc == GMC_ERR_TIMEOUT) {
        gmc_cancel(c, id); /* the daemon's final chunk is then dropped as stale */
        req_ent *e = tab_find(c, id);
        if (e)
            tab_remove(c, e);
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
        cfail(c, r->error, "%s", r->error_message);
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
