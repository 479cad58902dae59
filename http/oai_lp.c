/* oai_lp.c - log-probabilities gathered for OpenAI's response shapes (oai.h: oai_lpbuf). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/oai.h"

size_t oai_token_id_str(int32_t id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "token_id:%d", id);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

void oai_lpbuf_clear(oai_lpbuf *b)
{
    b->n = 0;
    b->n_top = b->str_len = 0;
    b->chars = 0;
    b->oom = false;
}

void oai_lpbuf_free(oai_lpbuf *b)
{
    free(b->tok), free(b->off), free(b->n_tops), free(b->top), free(b->top_off), free(b->str);
    memset(b, 0, sizeof(*b));
}

/* Grow *p (elements of size sz) to hold at least need; false when out of memory. */
static bool grow(void **p, size_t sz, size_t *cap, size_t need)
{
    if (need <= *cap)
        return true;
    size_t c = *cap ? *cap * 2 : 64;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * sz);
    if (!q)
        return false;
    *p = q;
    *cap = c;
    return true;
}

/* Copy a token's bytes into b->str; its offset into *off. */
static bool str_add(oai_lpbuf *b, const char *s, size_t n, size_t *off)
{
    if (!grow((void **)&b->str, 1, &b->str_cap, b->str_len + n + 1))
        return false;
    if (n)
        memcpy(b->str + b->str_len, s, n);
    *off = b->str_len;
    b->str_len += n;
    return true;
}

bool oai_lpbuf_add(oai_lpbuf *b, const char *tok, size_t len, float logprob, bool in_top)
{
    size_t cap = (size_t)b->cap, c1 = cap, c2 = cap;
    if (b->oom || !grow((void **)&b->tok, sizeof *b->tok, &cap, (size_t)b->n + 1) ||
        !grow((void **)&b->off, sizeof *b->off, &c1, (size_t)b->n + 1) ||
        !grow((void **)&b->n_tops, sizeof *b->n_tops, &c2, (size_t)b->n + 1))
        goto oom;
    size_t low = cap < c1 ? cap : c1; /* the arrays grow together: their common size */
    b->cap = (int32_t)(low < c2 ? low : c2);
    size_t off;
    if (!str_add(b, tok, len, &off))
        goto oom;
    b->tok[b->n] = (oai_token_logprob){.token_len = len, .logprob = logprob, .in_top = in_top};
    b->off[b->n] = off;
    b->n_tops[b->n] = 0;
    b->n++;
    b->chars += oai_text_chars(tok, len);
    return true;
oom:
    b->oom = true;
    return false;
}

bool oai_lpbuf_add_top(oai_lpbuf *b, const char *tok, size_t len, float logprob)
{
    if (b->oom || b->n == 0)
        return false;
    size_t c1 = b->top_cap, c2 = b->top_cap;
    if (!grow((void **)&b->top, sizeof *b->top, &c1, b->n_top + 1) ||
        !grow((void **)&b->top_off, sizeof *b->top_off, &c2, b->n_top + 1))
        goto oom;
    b->top_cap = c1 < c2 ? c1 : c2;
    size_t off;
    if (!str_add(b, tok, len, &off))
        goto oom;
    b->top[b->n_top] = (oai_top_logprob){.token_len = len, .logprob = logprob};
    b->top_off[b->n_top] = off;
    b->n_top++;
    b->n_tops[b->n - 1]++;
    return true;
oom:
    b->oom = true;
    return false;
}

const oai_token_logprob *oai_lpbuf_view(oai_lpbuf *b)
{
    for (size_t j = 0; j < b->n_top; j++)
        b->top[j].token = b->str + b->top_off[j];
    size_t at = 0;
    for (int32_t i = 0; i < b->n; i++) {
        b->tok[i].token = b->str + b->off[i];
        b->tok[i].top = b->n_tops[i] ? b->top + at : NULL;
        b->tok[i].n_top = b->n_tops[i];
        at += (size_t)b->n_tops[i];
    }
    return b->tok;
}
