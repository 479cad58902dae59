/* kvblocks.c - reference-counted KV blocks, a free stack, an LRU of cached blocks and their hash
 * table (see kvblocks.h). */
#include "daemon/kvblocks.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/sampling.h"

typedef struct kvb_block {
    uint64_t name;    /* 0 = not registered */
    uint64_t parent;  /* the name it chains to */
    uint64_t hash;    /* of (parent, tokens) */
    uint64_t serial;  /* the plan that writes its last token */
    int32_t ref;
    int32_t hnext;    /* next in its hash bucket, -1 */
    int32_t prev, next; /* LRU links while cached, -1 */
} kvb_block;

struct kvb_pool {
    int64_t n_blocks;
    int32_t block_size;
    int64_t n_free, n_cached, n_used;
    int32_t *free_ids;  /* [n_blocks] stack, top at n_free - 1 */
    kvb_block *b;       /* [n_blocks] */
    int32_t *tokens;    /* [n_blocks, block_size] ids of registered blocks */
    int32_t *buckets;   /* [mask + 1] first block of each chain, -1 */
    uint64_t mask;
    uint64_t key;       /* hash key: chains are not predictable from outside */
    int32_t lru_old, lru_new; /* cached blocks, least recently released first */
    uint64_t next_name;
    int64_t evictions;
    int64_t n_shared; /* blocks with refcount > 1 */
};

kvb_pool *kvb_new(int64_t n_blocks, int32_t block_size)
{
    if (n_blocks <= 0 || n_blocks > INT32_MAX || block_size <= 0)
        return NULL;
    kvb_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    uint64_t nb = 1;
    while (nb < (uint64_t)n_blocks)
        nb <<= 1;
    p->free_ids = malloc((size_t)n_blocks * sizeof(int32_t));
    p->b = calloc((size_t)n_blocks, sizeof(kvb_block));
    p->tokens = malloc((size_t)n_blocks * (size_t)block_size * sizeof(int32_t));
    p->buckets = malloc((size_t)nb * sizeof(int32_t));
    if (!p->free_ids || !p->b || !p->tokens || !p->buckets) {
        kvb_destroy(&p);
        return NULL;
    }
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->mask = nb - 1;
    p->key = gm_mix64((uint64_t)(uintptr_t)p ^ (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32));
    for (uint64_t i = 0; i < nb; i++)
        p->buckets[i] = -1;
    /* lowest ids on top, so a fresh pool hands out 0, 1, 2, ... */
    for (int64_t i = 0; i < n_blocks; i++) {
        p->free_ids[i] = (int32_t)(n_blocks - 1 - i);
        p->b[i].hnext = p->b[i].prev = p->b[i].next = -1;
    }
    p->n_free = n_blocks;
    p->lru_old = p->lru_new = -1;
    p->next_name = 1;
    return p;
}

void kvb_destroy(kvb_pool **pp)
{
    if (!pp || !*pp)
        return;
    free((*pp)->free_ids);
    free((*pp)->b);
    free((*pp)->tokens);
    free((*pp)->buckets);
    free(*pp);
    *pp = NULL;
}

int64_t kvb_total(const kvb_pool *p) { return p->n_blocks; }
int64_t kvb_free_count(const kvb_pool *p) { return p->n_free; }
int64_t kvb_cached(const kvb_pool *p) { return p->n_cached; }
int64_t kvb_used(const kvb_pool *p) { return p->n_used; }
int64_t kvb_available(const kvb_pool *p) { return p->n_free + p->n_cached; }
int32_t kvb_block_size(const kvb_pool *p) { return p->block_size; }
int64_t kvb_evictions(const kvb_pool *p) { return p->evictions; }
int32_t kvb_refcount(const kvb_pool *p, int32_t id) { return p->b[id].ref; }
int64_t kvb_shared(const kvb_pool *p) { return p->n_shared; }

int64_t kvb_blocks_for(const kvb_pool *p, int64_t n_tokens)
{
    return n_tokens <= 0 ? 0 : (n_tokens + p->block_size - 1) / p->block_size;
}

/* ---- the LRU of cached blocks ---- */

static void lru_unlink(kvb_pool *p, int32_t id)
{
    kvb_block *b = &p->b[id];
    if (b->prev >= 0)
        p->b[b->prev].next = b->next;
    else
        p->lru_old = b->next;
    if (b->next >= 0)
        p->b[b->next].prev = b->prev;
    else
        p->lru_new = b->prev;
    b->prev = b->next = -1;
    p->n_cached--;
}

static void lru_push_new(kvb_pool *p, int32_t id)
{
    kvb_block *b = &p->b[id];
    b->next = -1;
    b->prev = p->lru_new;
    if (p->lru_new >= 0)
        p->b[p->lru_new].next = id;
    else
        p->lru_old = id;
    p->lru_new = id;
    p->n_cached++;
}

/* ---- the hash table of registered blocks ---- */

/* Multiply-xor over the tokens two at a time, mixed once at the end (a block is hashed once when it
 * is registered and once per lookup: this is on the serving path). Lookups compare the tokens, so the
 * hash only needs to spread. */
static uint64_t block_hash(const kvb_pool *p, uint64_t parent, const int32_t *tokens)
{
    uint64_t h = p->key ^ gm_mix64(parent);
    int32_t i = 0;
    for (; i + 1 < p->block_size; i += 2) {
        uint64_t two;
        memcpy(&two, tokens + i, 8);
        h = (h ^ two) * 0xc6a4a7935bd1e995ull;
        h ^= h >> 29;
    }
    if (i < p->block_size)
        h = (h ^ (uint32_t)tokens[i]) * 0xc6a4a7935bd1e995ull;
    return gm_mix64(h);
}

static void unregister(kvb_pool *p, int32_t id)
{
    kvb_block *b = &p->b[id];
    int32_t *link = &p->buckets[b->hash & p->mask];
    while (*link != id) {
        assert(*link >= 0);
        link = &p->b[*link].hnext;
    }
    *link = b->hnext;
    b->hnext = -1;
    b->name = 0;
}

static int32_t find(const kvb_pool *p, uint64_t h, uint64_t parent, const int32_t *tokens)
{
    size_t bytes = (size_t)p->block_size * sizeof(int32_t);
    for (int32_t id = p->buckets[h & p->mask]; id >= 0; id = p->b[id].hnext) {
        const kvb_block *b = &p->b[id];
        if (b->hash == h && b->parent == parent && !memcmp(p->tokens + (int64_t)id * p->block_size, tokens, bytes))
            return id;
    }
    return -1;
}

uint64_t kvb_register(kvb_pool *p, int32_t id, uint64_t parent, const int32_t *tokens, uint64_t serial)
{
    kvb_block *b = &p->b[id];
    assert(b->ref > 0);
    if (b->name) /* shared, and registered by another holder: the same tokens after the same parent */
        return b->name;
    uint64_t h = block_hash(p, parent, tokens);
    int32_t same = find(p, h, parent, tokens);
    if (same >= 0)
        return p->b[same].name;
    memcpy(p->tokens + (int64_t)id * p->block_size, tokens, (size_t)p->block_size * sizeof(int32_t));
    b->name = p->next_name++;
    b->parent = parent;
    b->hash = h;
    b->serial = serial;
    int32_t *head = &p->buckets[h & p->mask];
    b->hnext = *head;
    *head = id;
    return b->name;
}

int32_t kvb_lookup(const kvb_pool *p, uint64_t parent, const int32_t *tokens, uint64_t before_serial,
                   uint64_t *name)
{
    int32_t id = find(p, block_hash(p, parent, tokens), parent, tokens);
    if (id < 0 || p->b[id].serial >= before_serial)
        return -1;
    *name = p->b[id].name;
    return id;
}

/* ---- references ---- */

bool kvb_alloc(kvb_pool *p, int32_t n, int32_t *out)
{
    if (n < 0 || n > kvb_available(p))
        return false;
    for (int32_t i = 0; i < n; i++) {
        int32_t id;
        if (p->n_free > 0) {
            id = p->free_ids[--p->n_free];
        } else { /* evict the least recently released cached block */
            id = p->lru_old;
            lru_unlink(p, id);
            unregister(p, id);
            p->evictions++;
        }
        p->b[id].ref = 1;
        p->n_used++;
        out[i] = id;
    }
    return true;
}

void kvb_ref(kvb_pool *p, int32_t id)
{
    kvb_block *b = &p->b[id];
    if (b->ref == 0) {
        assert(b->name != 0); /* only cached blocks are found with no reference */
        lru_unlink(p, id);
        p->n_used++;
    }
    if (++b->ref == 2)
        p->n_shared++;
}

void kvb_release(kvb_pool *p, const int32_t *ids, int32_t n)
{
    /* last first: a sequence's tail blocks are evicted before its head, and a
     * later alloc gets freed blocks back in the same order */
    for (int32_t i = n - 1; i >= 0; i--) {
        int32_t id = ids[i];
        assert(id >= 0 && id < p->n_blocks && p->b[id].ref > 0);
        if (--p->b[id].ref > 0) {
            p->n_shared -= p->b[id].ref == 1;
            continue;
        }
        p->n_used--;
        if (p->b[id].name)
            lru_push_new(p, id);
        else
            p->free_ids[p->n_free++] = id;
    }
}

void kvb_forget_all(kvb_pool *p)
{
    for (int64_t i = 0; i < p->n_blocks; i++) {
        int32_t id = (int32_t)i;
        if (!p->b[id].name)
            continue;
        if (p->b[id].ref == 0) {
            lru_unlink(p, id);
            p->free_ids[p->n_free++] = id;
        }
        unregister(p, id);
    }
}

/* ---- the accounting check ---- */

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            snprintf(why, cap, __VA_ARGS__);                                                                           \
            goto fail;                                                                                                 \
        }                                                                                                              \
    } while (0)

bool kvb_check(const kvb_pool *p, char *why, size_t cap)
{
    bool ok = false;
    uint8_t *seen = calloc((size_t)p->n_blocks, 1); /* 1 free, 2 cached */
    CHECK(seen, "out of memory");
    CHECK(p->n_free + p->n_cached + p->n_used == p->n_blocks, "free %lld + cached %lld + used %lld != total %lld",
          (long long)p->n_free, (long long)p->n_cached, (long long)p->n_used, (long long)p->n_blocks);
    for (int64_t i = 0; i < p->n_free; i++) {
        int32_t id = p->free_ids[i];
        CHECK(id >= 0 && id < p->n_blocks && !seen[id], "free stack entry %lld: block %d twice or out of range",
              (long long)i, id);
        seen[id] = 1;
        CHECK(p->b[id].ref == 0 && p->b[id].name == 0, "free block %d has refcount %d, name %llu", id, p->b[id].ref,
              (unsigned long long)p->b[id].name);
    }
    int64_t n = 0;
    for (int32_t id = p->lru_old, prev = -1; id >= 0; prev = id, id = p->b[id].next) {
        CHECK(id < p->n_blocks && !seen[id] && p->b[id].prev == prev, "LRU broken at block %d", id);
        seen[id] = 2;
        CHECK(p->b[id].ref == 0 && p->b[id].name != 0, "cached block %d has refcount %d, name %llu", id,
              p->b[id].ref, (unsigned long long)p->b[id].name);
        CHECK(++n <= p->n_cached, "LRU longer than %lld", (long long)p->n_cached);
    }
    CHECK(n == p->n_cached, "LRU holds %lld blocks, count says %lld", (long long)n, (long long)p->n_cached);
    int64_t used = 0, named = 0, shared = 0;
    for (int64_t i = 0; i < p->n_blocks; i++) {
        const kvb_block *b = &p->b[i];
        CHECK(b->ref >= 0, "block %lld: refcount %d", (long long)i, b->ref);
        shared += b->ref > 1;
        if (!seen[i]) {
            CHECK(b->ref > 0, "block %lld is in no state (refcount 0, not free, not cached)", (long long)i);
            used++;
        }
        if (b->name) {
            named++;
            CHECK(find(p, b->hash, b->parent, p->tokens + i * p->block_size) == (int32_t)i,
                  "registered block %lld is not found under its hash", (long long)i);
        }
    }
    CHECK(used == p->n_used, "%lld blocks referenced, count says %lld", (long long)used, (long long)p->n_used);
    CHECK(shared == p->n_shared, "%lld blocks shared, count says %lld", (long long)shared, (long long)p->n_shared);
    int64_t chained = 0;
    for (uint64_t h = 0; h <= p->mask; h++)
        for (int32_t id = p->buckets[h]; id >= 0; id = p->b[id].hnext) {
            CHECK(p->b[id].name != 0 && (p->b[id].hash & p->mask) == h, "bucket %llu holds block %d wrongly",
                  (unsigned long long)h, id);
            CHECK(++chained <= named, "hash chains hold more blocks than are registered");
        }
    CHECK(chained == named, "%lld blocks chained, %lld registered", (long long)chained, (long long)named);
    ok = true;
fail:
    free(seen);
    return ok;
}
#undef CHECK
