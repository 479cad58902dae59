/* kvblocks.c - a LIFO stack of free KV block ids. */
#include "daemon/kvblocks.h"

#include <assert.h>
#include <stdlib.h>

struct kvb_pool {
    int64_t n_blocks;
    int32_t block_size;
    int64_t n_free;
    int32_t *free_ids; /* [n_blocks] stack, top at n_free - 1 */
    uint8_t *in_use;   /* [n_blocks] 1 while allocated (catches double frees) */
};

kvb_pool *kvb_new(int64_t n_blocks, int32_t block_size)
{
    if (n_blocks <= 0 || n_blocks > INT32_MAX || block_size <= 0)
        return NULL;
    kvb_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->free_ids = malloc((size_t)n_blocks * sizeof(int32_t));
    p->in_use = calloc((size_t)n_blocks, 1);
    if (!p->free_ids || !p->in_use) {
        kvb_destroy(&p);
        return NULL;
    }
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    /* lowest ids on top, so a fresh pool hands out 0, 1, 2, ... */
    for (int64_t i = 0; i < n_blocks; i++)
        p->free_ids[i] = (int32_t)(n_blocks - 1 - i);
    p->n_free = n_blocks;
    return p;
}

void kvb_destroy(kvb_pool **pp)
{
    if (!pp || !*pp)
        return;
    free((*pp)->free_ids);
    free((*pp)->in_use);
    free(*pp);
    *pp = NULL;
}

int64_t kvb_total(const kvb_pool *p) { return p->n_blocks; }
int64_t kvb_free_count(const kvb_pool *p) { return p->n_free; }
int64_t kvb_used(const kvb_pool *p) { return p->n_blocks - p->n_free; }
int32_t kvb_block_size(const kvb_pool *p) { return p->block_size; }

int64_t kvb_blocks_for(const kvb_pool *p, int64_t n_tokens)
{
    return n_tokens <= 0 ? 0 : (n_tokens + p->block_size - 1) / p->block_size;
}

bool kvb_alloc(kvb_pool *p, int32_t n, int32_t *out)
{
    if (n < 0 || n > p->n_free)
        return false;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = p->free_ids[--p->n_free];
        p->in_use[id] = 1;
        out[i] = id;
    }
    return true;
}

void kvb_release(kvb_pool *p, const int32_t *ids, int32_t n)
{
    /* release in reverse so the next alloc gets them back in the same order */
    for (int32_t i = n - 1; i >= 0; i--) {
        int32_t id = ids[i];
        assert(id >= 0 && id < p->n_blocks && p->in_use[id]);
        p->in_use[id] = 0;
        p->free_ids[p->n_free++] = id;
    }
}
