/* kvblocks.h - the coordinator's paged-KV block manager: which physical blocks are free.
 *
 * The workers own the KV memory; gemmad only hands out block ids. A sequence
 * holding n tokens needs ceil(n / block_size) blocks, listed in logical order
 * in its block table (gm_seq_step.block_table). Allocation and release are
 * O(blocks moved): a LIFO stack of free ids. */
#ifndef GM_KVBLOCKS_H
#define GM_KVBLOCKS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct kvb_pool kvb_pool;

/* A pool of n_blocks blocks of block_size tokens; NULL on bad sizes or no memory. */
kvb_pool *kvb_new(int64_t n_blocks, int32_t block_size);
void kvb_destroy(kvb_pool **p);

int64_t kvb_total(const kvb_pool *p);
int64_t kvb_free_count(const kvb_pool *p);
int64_t kvb_used(const kvb_pool *p);
int32_t kvb_block_size(const kvb_pool *p);

/* Blocks needed to hold n_tokens tokens. */
int64_t kvb_blocks_for(const kvb_pool *p, int64_t n_tokens);

/* Take n blocks into out[0..n); false (and nothing taken) when fewer are free. */
bool kvb_alloc(kvb_pool *p, int32_t n, int32_t *out);

/* Give back n blocks (ids from kvb_alloc; a double free is a programmer error, asserted). */
void kvb_release(kvb_pool *p, const int32_t *ids, int32_t n);

#endif
