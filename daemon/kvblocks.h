/* kvblocks.h - the coordinator's paged-KV block manager: which physical blocks hold what.
 *
 * The workers own the KV memory; gemmad only hands out block ids. A sequence
 * holding n tokens needs ceil(n / block_size) blocks, listed in logical order
 * in its block table (gm_seq_step.block_table).
 *
 * Blocks are shared: each has a reference count (the block tables holding
 * it). Every block is in exactly one of three states, and free + cached +
 * used == total at all times (kvb_check walks it all):
 *   used    refcount > 0;
 *   cached  refcount 0 and registered: its content (a full block of known
 *           tokens) is kept in an LRU until the pool needs the block;
 *   free    refcount 0, content forgotten (a LIFO stack).
 * kvb_alloc takes free blocks first, then evicts the least recently released
 * cached ones.
 *
 * A full block is registered under its name: a 64-bit id given at
 * registration, looked up by a hash of (its parent block's name, its
 * block_size token ids), where the parent is the block before it in the
 * sequence (0 for the first block). So equal prefixes map to the same chain
 * of names, whatever sequence computed them. Lookups compare the parent name
 * and the tokens exactly (the hash only picks the bucket), and a name is never
 * reused: once a block is evicted, the chains hanging from it can no longer
 * be reached (they age out of the LRU), so a hit is always a block computed
 * from exactly the same tokens at the same positions.
 *
 * Registration carries the serial of the plan that writes the block's last
 * token; a lookup made for plan P only sees blocks registered before P, so a
 * step never reads a block that the same step writes. */
#ifndef GM_KVBLOCKS_H
#define GM_KVBLOCKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvb_pool kvb_pool;

/* A pool of n_blocks blocks of block_size tokens; NULL on bad sizes or no memory. */
kvb_pool *kvb_new(int64_t n_blocks, int32_t block_size);
void kvb_destroy(kvb_pool **p);

int64_t kvb_total(const kvb_pool *p);
int64_t kvb_free_count(const kvb_pool *p); /* free: no content kept */
int64_t kvb_cached(const kvb_pool *p);     /* refcount 0, content kept for the prefix cache */
int64_t kvb_used(const kvb_pool *p);       /* refcount > 0 */
int64_t kvb_available(const kvb_pool *p);  /* free + cached: what kvb_alloc can take */
int32_t kvb_block_size(const kvb_pool *p);
int64_t kvb_evictions(const kvb_pool *p);  /* cached blocks taken back by kvb_alloc so far */

/* Blocks needed to hold n_tokens tokens. */
int64_t kvb_blocks_for(const kvb_pool *p, int64_t n_tokens);

/* Take n blocks into out[0..n), each with refcount 1: free ones first, then
 * the oldest cached ones (unregistered as they go); false (and nothing taken)
 * when fewer than n are available. */
bool kvb_alloc(kvb_pool *p, int32_t n, int32_t *out);

/* One more reference to a used or cached block (a cached one leaves the LRU). */
void kvb_ref(kvb_pool *p, int32_t id);

/* Drop one reference to each of ids[0..n), last first: a block reaching 0
 * becomes cached (most recently used) if registered, else free. Releasing a
 * block with no reference is a programmer error (asserted). */
void kvb_release(kvb_pool *p, const int32_t *ids, int32_t n);

int32_t kvb_refcount(const kvb_pool *p, int32_t id);
int64_t kvb_shared(const kvb_pool *p); /* blocks with refcount > 1 (0: no copy-on-write can be needed) */

/* Register used block id, holding tokens[0..block_size) after the block
 * named parent (0: first block), written by plan `serial`. Returns the name
 * the next block chains to: id's new name, or the name of an equal block
 * registered earlier (id then stays unregistered: its content is the same). */
uint64_t kvb_register(kvb_pool *p, int32_t id, uint64_t parent, const int32_t *tokens, uint64_t serial);

/* The registered block holding tokens[0..block_size) after parent, registered
 * by a plan before `before_serial`; -1 if none. *name gets its name. */
int32_t kvb_lookup(const kvb_pool *p, uint64_t parent, const int32_t *tokens, uint64_t before_serial,
                   uint64_t *name);

/* The workers lost the KV contents: unregister every block (cached ones become free). */
void kvb_forget_all(kvb_pool *p);

/* Walk the whole pool: every block in exactly one state, the counts, the LRU
 * and free stack, the hash chains. false with the first problem in why. */
bool kvb_check(const kvb_pool *p, char *why, size_t cap);

#endif
