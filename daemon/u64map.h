/* u64map.h - open-addressing hash map from a non-zero uint64 key to a pointer. */
#ifndef GM_U64MAP_H
#define GM_U64MAP_H

#include <stdbool.h>
#include <stdint.h>

typedef struct u64map_ent {
    uint64_t key; /* 0 = empty */
    void *val;    /* NULL with key 0 = never used; tombstone = key 0, val != NULL */
} u64map_ent;

typedef struct u64map {
    u64map_ent *ents; /* [cap], cap a power of two */
    int64_t cap, n, used; /* used = live + tombstones */
} u64map;

/* A zeroed u64map is empty and valid. */
void *u64map_get(const u64map *m, uint64_t key);
/* Insert or replace; false when out of memory. key must not be 0. */
bool u64map_put(u64map *m, uint64_t key, void *val);
/* Remove; returns the old value or NULL. */
void *u64map_del(u64map *m, uint64_t key);
void u64map_free(u64map *m);

/* Iterate: for (int64_t i = 0; i < m->cap; i++) if (m->ents[i].key) ... */

#endif
