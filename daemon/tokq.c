/* tokq.c - the tokenizer thread (tokq.h).
 *
 * Messages, one ZeroMQ frame each, fields in host byte order (both ends are this process):
 *   loop -> thread   [u64 job][u8 kind]payload   kind 'T': the text; 'C': [u32 n] then n times
 *                    [u32 role bytes][role][u32 text bytes][text]; 'Q': stop
 *   thread -> loop   [u64 job][i32 status][i32 n] then n int32 ids (status GM_OK) or the error text */
#include "daemon/tokq.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define TOKQ_HWM 100000         /* messages each way; admission bounds the bytes */
#define TOKQ_TRIM_BYTES (1 << 20) /* after a prompt this large, give the tokenizer's memory back */

struct tokq {
    void *loop_sock, *thread_sock; /* PAIR; the thread owns the second once started */
    gm_tokenizer *tok;             /* the thread's */
    gm_chat_format chat;
    pthread_t thread;
    bool started;
};

typedef struct tokq_head {
    uint64_t job;
    int32_t status, n;
} tokq_head;

/* Send [head][payload] from the thread (blocking: the loop drains results every turn). */
static void tokq_reply(tokq *q, uint64_t job, gm_status st, const void *data, size_t len)
{
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, sizeof(tokq_head) + len) != 0)
        return;
    tokq_head h = {job, (int32_t)st, st == GM_OK ? (int32_t)(len / sizeof(int32_t)) : 0};
    memcpy(zmq_msg_data(&m), &h, sizeof h);
    if (len)
        memcpy((uint8_t *)zmq_msg_data(&m) + sizeof h, data, len);
    while (zmq_msg_send(&m, q->thread_sock, 0) < 0 && errno == EINTR) {
    }
    zmq_msg_close(&m);
}

/* A chat payload back to messages; strings point into a NUL-terminated copy (*store, caller frees). */
static gm_status tokq_parse_chat(const uint8_t *p, size_t len, gm_chat_msg **msgs, int32_t *n, char **store)
{
    uint32_t cnt;
    if (len < 4)
        return gm_fail(GM_ERR_INTERNAL, "tokq: short chat message");
    memcpy(&cnt, p, 4);
    *msgs = calloc(cnt ? cnt : 1, sizeof **msgs);
    *store = malloc(len + 2 * (size_t)cnt + 1);
    if (!*msgs || !*store)
        return gm_fail(GM_ERR_NOMEM, "tokq: chat of %u messages", cnt);
    size_t off = 4, w = 0;
    for (uint32_t i = 0; i < cnt; i++) {
        const char **field[2] = {&(*msgs)[i].role, &(*msgs)[i].text};
        for (int f = 0; f < 2; f++) {
            uint32_t l;
            if (off + 4 > len)
                return gm_fail(GM_ERR_INTERNAL, "tokq: truncated chat message");
            memcpy(&l, p + off, 4);
            off += 4;
            if (l > len - off)
                return gm_fail(GM_ERR_INTERNAL, "tokq: truncated chat message");
            memcpy(*store + w, p + off, l);
            (*store)[w + l] = 0;
            *field[f] = *store + w;
            off += l;
            w += l + 1;
        }
    }
    *n = (int32_t)cnt;
    return GM_OK;
}

static void *tokq_main(void *arg)
{
    tokq *q = arg;
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, q->thread_sock, 0) < 0) {
            zmq_msg_close(&m);
            if (errno == EINTR)
                continue;
            break; /* ETERM: the context is going away */
        }
        const uint8_t *p = zmq_msg_data(&m);
        size_t len = zmq_msg_size(&m);
        uint64_t job = 0;
        char kind = 'Q';
        if (len >= 9) {
            memcpy(&job, p, 8);
            kind = (char)p[8];
        }
        int32_t *ids = NULL, n = 0;
        gm_status st = GM_OK;
        gm_clear_error();
        if (kind == 'T') {
            st = gm_tok_encode(q->tok, (const char *)p + 9, len - 9, true, &ids, &n);
        } else if (kind == 'C') {
            gm_chat_msg *msgs = NULL;
            char *store = NULL;
            int32_t nm = 0;
            st = tokq_parse_chat(p + 9, len - 9, &msgs, &nm, &store);
            if (st == GM_OK)
                st = gm_tok_encode_chat_fmt(q->tok, &q->chat, msgs, nm, &ids, &n);
            free(msgs);
            free(store);
        }
        zmq_msg_close(&m);
        if (kind != 'T' && kind != 'C')
            break;
        if (st == GM_OK) {
            tokq_reply(q, job, st, ids, (size_t)n * sizeof(int32_t));
        } else {
            const char *e = gm_last_error();
            tokq_reply(q, job, st, e, strlen(e) + 1);
        }
        free(ids);
        if (len > TOKQ_TRIM_BYTES) /* sentencepiece takes ~100 bytes per input byte: return them now */
            malloc_trim(0);
    }
    return NULL;
}

gm_status tokq_new(void *zctx, gm_tokenizer *tok, const gm_chat_format *chat, tokq **out)
{
    *out = NULL;
    tokq *q = calloc(1, sizeof *q);
    if (!q) {
        gm_tok_destroy(&tok);
        return gm_fail(GM_ERR_NOMEM, "tokenizer thread");
    }
    q->tok = tok;
    q->chat = *chat;
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://gm-tokq-%p", (void *)q);
    q->loop_sock = zmq_socket(zctx, ZMQ_PAIR);
    q->thread_sock = zmq_socket(zctx, ZMQ_PAIR);
    int hwm = TOKQ_HWM, zero = 0;
    for (int i = 0; i < 2; i++) {
        void *s = i ? q->thread_sock : q->loop_sock;
        if (!s)
            continue;
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    }
    if (!q->loop_sock || !q->thread_sock || zmq_bind(q->loop_sock, ep) != 0 || zmq_connect(q->thread_sock, ep) != 0) {
        gm_status st = gm_fail(GM_ERR_ZMQ, "tokenizer thread sockets: %s", zmq_strerror(errno));
        tokq_destroy(&q);
        return st;
    }
    if (pthread_create(&q->thread, NULL, tokq_main, q) != 0) {
        tokq_destroy(&q);
        return gm_fail(GM_ERR_INTERNAL, "cannot start the tokenizer thread");
    }
    q->started = true;
    *out = q;
    return GM_OK;
}

void tokq_destroy(tokq **pq)
{
    if (!pq || !*pq)
        return;
    tokq *q = *pq;
    *pq = NULL;
    if (q->started) {
        uint8_t quit[9] = {0, 0, 0, 0, 0, 0, 0, 0, 'Q'};
        zmq_send(q->loop_sock, quit, sizeof quit, 0);
        pthread_join(q->thread, NULL);
    }
    if (q->thread_sock)
        zmq_close(q->thread_sock);
    if (q->loop_sock)
        zmq_close(q->loop_sock);
    gm_tok_destroy(&q->tok);
    free(q);
}

void *tokq_socket(tokq *q)
{
    return q ? q->loop_sock : NULL;
}

/* Queue one job message of kind: the header, then len bytes that fill writes. */
static gm_status tokq_send(tokq *q, uint64_t job, char kind, size_t len, void (*fill)(uint8_t *, const void *),
                           const void *arg)
{
    zmq_msg_t m;
    if (zmq_msg_init_size(&m, 9 + len) != 0)
        return gm_fail(GM_ERR_NOMEM, "tokenizer job of %zu bytes", len);
    uint8_t *p = zmq_msg_data(&m);
    memcpy(p, &job, 8);
    p[8] = (uint8_t)kind;
    fill(p + 9, arg);
    if (zmq_msg_send(&m, q->loop_sock, ZMQ_DONTWAIT) < 0) {
        int e = errno;
        zmq_msg_close(&m);
        return gm_fail(GM_ERR_ZMQ, "tokenizer queue: %s", zmq_strerror(e));
    }
    return GM_OK;
}

typedef struct text_arg {
    const char *text;
    size_t len;
} text_arg;

static void fill_text(uint8_t *out, const void *arg)
{
    const text_arg *t = arg;
    if (t->len)
        memcpy(out, t->text, t->len);
}

gm_status tokq_submit_text(tokq *q, uint64_t job, const char *text, size_t len)
{
    text_arg a = {text, len};
    return tokq_send(q, job, 'T', len, fill_text, &a);
}

typedef struct chat_arg {
    const gm_chat_msg *msgs;
    int32_t n;
} chat_arg;

static void fill_chat(uint8_t *out, const void *arg)
{
    const chat_arg *c = arg;
    uint32_t cnt = (uint32_t)c->n;
    memcpy(out, &cnt, 4);
    size_t off = 4;
    for (int32_t i = 0; i < c->n; i++) {
        const char *f[2] = {c->msgs[i].role ? c->msgs[i].role : "", c->msgs[i].text ? c->msgs[i].text : ""};
        for (int k = 0; k < 2; k++) {
            uint32_t l = (uint32_t)strlen(f[k]);
            memcpy(out + off, &l, 4);
            memcpy(out + off + 4, f[k], l);
            off += 4 + l;
        }
    }
}

gm_status tokq_submit_chat(tokq *q, uint64_t job, const gm_chat_msg *msgs, int32_t n_msgs)
{
    size_t len = 4;
    for (int32_t i = 0; i < n_msgs; i++)
        len += 8 + (msgs[i].role ? strlen(msgs[i].role) : 0) + (msgs[i].text ? strlen(msgs[i].text) : 0);
    chat_arg a = {msgs, n_msgs};
    return tokq_send(q, job, 'C', len, fill_chat, &a);
}

bool tokq_take(tokq *q, tokq_result *out)
{
    memset(out, 0, sizeof *out);
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (!q || zmq_msg_recv(&m, q->loop_sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&m);
        return false;
    }
    const uint8_t *p = zmq_msg_data(&m);
    size_t len = zmq_msg_size(&m);
    tokq_head h = {0, GM_ERR_INTERNAL, 0};
    if (len >= sizeof h)
        memcpy(&h, p, sizeof h);
    out->job = h.job;
    out->status = h.status >= 0 && h.status < GM_STATUS_COUNT ? (gm_status)h.status : GM_ERR_INTERNAL;
    size_t body = len >= sizeof h ? len - sizeof h : 0;
    if (out->status == GM_OK) {
        out->n_ids = (int32_t)(body / sizeof(int32_t));
        out->ids = malloc(body ? body : 1);
        if (!out->ids) {
            out->status = GM_ERR_NOMEM;
            snprintf(out->error, sizeof out->error, "out of memory for %d prompt tokens", (int)out->n_ids);
            out->n_ids = 0;
        } else if (body) {
            memcpy(out->ids, p + sizeof h, body);
        }
    } else {
        snprintf(out->error, sizeof out->error, "%.*s", (int)(body < sizeof out->error ? body : sizeof out->error - 1),
                 body ? (const char *)p + sizeof h : "tokenizer failed");
    }
    zmq_msg_close(&m);
    return true;
}
