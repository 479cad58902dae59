/* u64map.c - linear probing with tombstones; grows at half load. */
#include "daemon/u64map.h"

#include <stdlib.h>

static void *const TOMB = (void *)1;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

void *u64map_get(const u64map *m, uint64_t key)
{
    if (!m->cap || !key)
        return NULL;
    uint64_t mask = (uint64_t)m->cap - 1;
    for (uint64_t i = mix(key) & mask;; i = (i + 1) & mask) {
        const u64map_ent *e = &m->ents[i];
        if (e->key == key)
            return e->val;
        if (!e->key && !e->val)
            return NULL;
    }
}

static bool grow(u64map *m)
{
    int64_t cap = m->cap ? m->cap : 64;
    while (cap < (m->n + 1) * 4)
        cap *= 2;
    u64map_ent *ne = calloc((size_t)cap, sizeof(*ne));
    if (!ne)
        return false;
    uint64_t mask = (uint64_t)cap - 1;
    for (int64_t i = 0; i < m->cap; i++) {
        u64map_ent *e = &m->ents[i];
        if (!e->key)
            continue;
        uint64_t j = mix(e->key) & mask;
        while (ne[j].key)
            j = (j + 1) & mask;
        ne[j] = *e;
    }
    free(m->ents);
    m->ents = ne;
    m->cap = cap;
    m->used = m->n;
    return true;
}

bool u64map_put(u64map *m, uint64_t key, void *val)
{
    if (!key)
        return false;
    if ((m->used + 1) * 2 > m->cap && !grow(m))
        return false;
    uint64_t mask = (uint64_t)m->cap - 1;
    int64_t tomb = -1;
    for (uint64_t i = mix(key) & mask;; i = (i + 1) & mask) {
        u64map_ent *e = &m->ents[i];
        if (e->key == key) {
            e->val = val;
            return true;
        }
        if (!e->key) {
            if (e->val == TOMB) {
                if (tomb < 0)
                    tomb = (int64_t)i;
                continue;
            }
            if (tomb >= 0) {
                e = &m->ents[tomb];
            } else {
                m->used++;
            }
            e->key = key;
            e->val = val;
            m->n++;
            return true;
        }
    }
}

void *u64map_del(u64map *m, uint64_t key)
{
    if (!m->cap || !key)
        return NULL;
    uint64_t mask = (uint64_t)m->cap - 1;
    for (uint64_t i = mix(key) & mask;; i = (i + 1) & mask) {
        u64map_ent *e = &m->ents[i];
        if (e->key == key) {
            void *v = e->val;
            e->key = 0;
            e->val = TOMB;
            m->n--;
            return v;
        }
        if (!e->key && !e->val)
            return NULL;
    }
}

void u64map_free(u64map *m)
{
    free(m->ents);
    m->ents = NULL;
    m->cap = m->n = m->used = 0;
}
