/* test_router_fake.h - an in-process stand-in for gemmad (gemma.proto over a ROUTER socket)
 * that tests drive step by step: hold requests, stream one chunk then hold, freeze, drop
 * the connection, come back.
 *
 * Output of a request whose prompt ids are [2, marker, seed]: max_tokens tokens,
 * token i = fake_token(seed, i), one per chunk, the last with FINISH_LENGTH.
 * marker FAKE_MARK_FIRST: in hold mode the first chunk is sent at once. */
#ifndef TEST_ROUTER_FAKE_H
#define TEST_ROUTER_FAKE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define FAKE_MARK_FIRST 1000
#define FAKE_MAX_HELD 256

static inline int32_t fake_token(int32_t seed, int32_t i)
{
    return 10 + (seed * 7 + i * 13) % 997;
}

typedef enum fake_mode { FAKE_RUN = 0, FAKE_FREEZE, FAKE_KILL } fake_mode;

typedef struct fake_held {
    uint8_t id[256];
    size_t id_len;
    uint64_t rid;
    int32_t seed, max_tokens, sent;
    bool stream;
} fake_held;

typedef struct fake_replica {
    void *ctx;
    char ep[128];
    pthread_t th;
    _Atomic int mode;          /* fake_mode, set by the test */
    _Atomic bool hold;         /* hold generate requests until hold is cleared */
    _Atomic bool serving;      /* what Health says */
    _Atomic bool mute_health;  /* Health gets no answer (Stats and generation go on) */
    _Atomic bool bad_utf8;     /* like an old gemmad: invalid UTF-8 in Health's model and error messages;
                                  generate requests end at once with FINISH_ERROR */
    _Atomic bool quit;
    _Atomic int n_generate;    /* generate requests received */
    _Atomic int n_cancel;
    _Atomic int n_held;
    _Atomic int n_health;
    _Atomic bool alive;        /* the socket is bound (after KILL: false) */
    /* thread-only state */
    void *sock;
    fake_held held[FAKE_MAX_HELD];
    int nh;
} fake_replica;

/* Bind on ep ("tcp://127.0.0.1:*" picks a port; fake->ep is the result) and start. */
fake_replica *fake_start(void *ctx, const char *ep);
/* Stop and free. */
void fake_stop(fake_replica *f);

#endif
