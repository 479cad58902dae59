/* textout.h - one request's outgoing text: stop strings matched across deltas, trimmed.
 *
 * The detokenizer's UTF-8 deltas go in; what comes out is the text the client
 * may see now. A tail that could still grow into a stop string is held back;
 * when a stop string completes, the text from its first byte on is dropped
 * and the request stops. Without stop strings every delta is ready at once. */
#ifndef GM_TEXTOUT_H
#define GM_TEXTOUT_H

#include <stdbool.h>
#include <stddef.h>

typedef struct txo txo;

/* stops[0..n) copied (lens[i] bytes each, none empty); NULL when out of memory. */
txo *txo_new(const char *const *stops, const size_t *lens, int n);
void txo_destroy(txo **t);

/* Append a delta. Returns true when a stop string has now matched (the text
 * from the match on is discarded; later appends are ignored). */
bool txo_append(txo *t, const char *s, size_t n);

/* Look for stop strings in what is appended from now on (armed, the default) or not (min_tokens not
 * reached: the text passes untouched and nothing is held back). A match that ends in text appended
 * while armed may begin in earlier text not yet sent (txo_consume). */
void txo_arm(txo *t, bool armed);

/* True once a stop string matched. */
bool txo_stopped(const txo *t);

/* The bytes ready to send: *n of them at the returned pointer (borrowed until
 * the next call). txo_consume drops them after they were sent. */
const char *txo_ready(const txo *t, size_t *n);
void txo_consume(txo *t);

/* End of the stream: what was held back becomes ready. */
void txo_finish(txo *t);

#endif
