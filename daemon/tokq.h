/* tokq.h - prompts tokenized off gemmad's loop: one thread with its own tokenizer, fed and answered
 * by messages over an inproc PAIR socket (no state is shared with the loop).
 *
 * A large prompt takes the tokenizer about a second per megabyte; on the loop that would stall
 * every other client (Health, Cancel, streaming). Here the loop hands the text over, polls
 * tokq_socket() with its other sockets, and finishes the admission when the ids come back.
 * Jobs are answered in order. */
#ifndef GM_TOKQ_H
#define GM_TOKQ_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "common/tokenizer.h"

typedef struct tokq tokq;

/* Start the thread with tok, which it owns from now on (destroyed with the queue, also on
 * failure); chat is copied. zctx: the loop's ZeroMQ context. */
gm_status tokq_new(void *zctx, gm_tokenizer *tok, const gm_chat_format *chat, tokq **out);
/* Stop the thread (a job in progress is finished first) and free everything. */
void tokq_destroy(tokq **q);

/* The socket to poll for ZMQ_POLLIN (results). Borrowed. */
void *tokq_socket(tokq *q);

/* Queue job (non-zero, the caller's key): text (BOS prepended), or a chat in the chat format.
 * Everything is copied. GM_ERR_ZMQ / GM_ERR_NOMEM when it cannot be queued. */
gm_status tokq_submit_text(tokq *q, uint64_t job, const char *text, size_t len);
gm_status tokq_submit_chat(tokq *q, uint64_t job, const gm_chat_msg *msgs, int32_t n_msgs);

typedef struct tokq_result {
    uint64_t job;
    gm_status status;   /* GM_OK: ids[n_ids] (caller frees); else why in error */
    int32_t *ids;
    int32_t n_ids;
    char error[512];
} tokq_result;

/* One finished job without blocking: true when *out was filled. */
bool tokq_take(tokq *q, tokq_result *out);

#endif
