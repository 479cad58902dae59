/* textout.c - held-back text and stop-string matching for one request. */
#include "daemon/textout.h"

#include <stdlib.h>
#include <string.h>

struct txo {
    char *buf;      /* [cap] unsent text */
    size_t len, cap;
    size_t hold;    /* bytes at the end of buf not yet ready */
    bool stopped, finished;
    bool unarmed;   /* stop strings not looked for (txo_arm) */
    int n_stops;
    size_t max_stop;
    char **stops;   /* [n_stops] */
    size_t *lens;   /* [n_stops] */
};

txo *txo_new(const char *const *stops, const size_t *lens, int n)
{
    txo *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (n > 0) {
        t->stops = calloc((size_t)n, sizeof(char *));
        t->lens = calloc((size_t)n, sizeof(size_t));
        if (!t->stops || !t->lens)
            goto fail;
        for (int i = 0; i < n; i++) {
            t->stops[i] = malloc(lens[i] ? lens[i] : 1);
            if (!t->stops[i])
                goto fail;
            t->n_stops = i + 1;
            memcpy(t->stops[i], stops[i], lens[i]);
            t->lens[i] = lens[i];
            if (lens[i] > t->max_stop)
                t->max_stop = lens[i];
        }
    }
    return t;
fail:
    txo_destroy(&t);
    return NULL;
}

void txo_destroy(txo **pt)
{
    if (!pt || !*pt)
        return;
    txo *t = *pt;
    for (int i = 0; i < t->n_stops; i++)
        free(t->stops[i]);
    free(t->stops);
    free(t->lens);
    free(t->buf);
    free(t);
    *pt = NULL;
}

bool txo_stopped(const txo *t) { return t->stopped; }

void txo_arm(txo *t, bool armed) { t->unarmed = !armed; }

bool txo_append(txo *t, const char *s, size_t n)
{
    if (t->stopped || n == 0)
        return t->stopped;
    if (t->len + n > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->len + n)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b)
            return false; /* drop the delta rather than crash; the caller's text is then short */
        t->buf = b;
        t->cap = cap;
    }
    size_t old = t->len;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    if (!t->n_stops || t->unarmed) {
        t->hold = 0;
        return false;
    }
    /* earliest match that ends in the new bytes */
    size_t from = old + 1 > t->max_stop ? old + 1 - t->max_stop : 0;
    size_t best = (size_t)-1;
    for (int i = 0; i < t->n_stops; i++) {
        size_t L = t->lens[i];
        for (size_t p = from; p + L <= t->len && p < best; p++)
            if (t->buf[p] == t->stops[i][0] && !memcmp(t->buf + p, t->stops[i], L)) {
                best = p;
                break;
            }
    }
    if (best != (size_t)-1) {
        t->len = best;
        t->hold = 0;
        t->stopped = true;
        return true;
    }
    /* hold back the longest tail that is a proper prefix of a stop string */
    size_t hold = 0;
    for (int i = 0; i < t->n_stops; i++) {
        size_t L = t->lens[i];
        for (size_t k = (L - 1 < t->len ? L - 1 : t->len); k > hold; k--)
            if (!memcmp(t->buf + t->len - k, t->stops[i], k)) {
                hold = k;
                break;
            }
    }
    t->hold = hold;
    return false;
}

const char *txo_ready(const txo *t, size_t *n)
{
    *n = t->len - t->hold;
    return t->buf;
}

void txo_consume(txo *t)
{
    size_t r = t->len - t->hold;
    if (r == 0)
        return;
    memmove(t->buf, t->buf + r, t->hold);
    t->len = t->hold;
}

void txo_finish(txo *t)
{
    t->hold = 0;
    t->finished = true;
}
