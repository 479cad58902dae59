/* gemma_client_int.h - what the C client's files share (not installed; the API is gemma_client.h).
 *
 *   gemma_client.c     names, the request table, the connection, sending, the blocking calls
 *   gemma_client_rx.c  receiving: frames, the event queue, gmc_poll, waiting for a blocking call's answer */
#ifndef GM_GEMMA_CLIENT_INT_H
#define GM_GEMMA_CLIENT_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/gemma_client.h"
#include "proto/gemma.pb-c.h"

/* A bump arena for unpacking one ServerMessage (freed at once, gemma_client_rx.c). */
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

/* The request table: open addressing, id -> user (gemma_client.c). */
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

/* ---- gemma_client.c ---- */

/* Set c's error (connect_err's when c is NULL) and return code. */
gmc_code gmc_fail(gmc_client *c, gmc_code code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
req_ent *gmc_tab_find(gmc_client *c, uint64_t id); /* the in-flight request id, or NULL */
void gmc_tab_remove(gmc_client *c, req_ent *e);    /* e's id is no longer in flight */

/* ---- gemma_client_rx.c ---- */

void gmc_rx_msg_free(rx_msg *r);                     /* a message and its arena; accepts NULL */
void gmc_rx_free_lent(gmc_client *c);                /* free the messages whose events were handed out */
gmc_code gmc_rx_wait(gmc_client *c, int timeout_ms); /* receive until c->wait_done or the timeout */

#endif
