/* gen_stream.h - the text of a generated continuation, exactly as gemma-generate
 * prints it and the daemon streams it: every generated id goes through one
 * gm_detok except the token that stops generation, and the decoder is flushed
 * at the end. Sharing this keeps gemma-cli and gemma-generate byte-identical. */
#ifndef GM_GEN_STREAM_H
#define GM_GEN_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* True when id ends generation: EOS always; <end_of_turn> in chat mode. */
static inline bool gm_gen_is_stop(int32_t id, bool chat)
{
    return id == GM_TOK_EOS || (chat && id == GM_TOK_END_OF_TURN);
}

typedef struct gm_gen_stream gm_gen_stream;

/* t is borrowed for the stream's life. NULL when out of memory. Stops as gm_gen_is_stop (Gemma 1/2's ids)
 * until gm_gen_stream_set_stop_ids says otherwise. */
gm_gen_stream *gm_gen_stream_new(const gm_tokenizer *t, bool chat);
/* The model's stop ids: eos always, end_of_turn in chat mode (model_config.h eos_id, end_of_turn_id). */
void gm_gen_stream_set_stop_ids(gm_gen_stream *s, int32_t eos, int32_t end_of_turn);
void gm_gen_stream_destroy(gm_gen_stream **s);

/* Feed one generated id. Writes newly complete text to out (at least
 * GM_DETOK_MAX_OUT bytes, NUL-terminated) and returns its length. When id is a
 * stop token nothing is written, *stop is set, and later pushes are ignored. */
size_t gm_gen_stream_push(gm_gen_stream *s, int32_t id, char *out, bool *stop);

/* End of the stream (stopped or out of tokens): pending bytes, as U+FFFD if
 * they are an unfinished character. The caller then writes one "\n". */
size_t gm_gen_stream_finish(gm_gen_stream *s, char *out);

#ifdef __cplusplus
}
#endif
#endif
