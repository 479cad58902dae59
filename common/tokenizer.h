/* tokenizer.h - sentencepiece behind a small C API: encode, streaming decode, chat template. */
#ifndef GM_TOKENIZER_H
#define GM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    GM_TOK_PAD = 0,
    GM_TOK_EOS = 1,
    GM_TOK_BOS = 2,
    GM_TOK_START_OF_TURN = 106,
    GM_TOK_END_OF_TURN = 107,
};

typedef struct gm_tokenizer gm_tokenizer;

/* Load a sentencepiece model file (tokenizer.model). */
gm_status gm_tok_load(const char *path, gm_tokenizer **out);
/* Build the tokenizer from a GGUF file's vocabulary (tokenizer.ggml.model "llama": tokens, scores,
 * token_type, special ids) as a SentencePiece BPE model: byte fallback when all 256 byte pieces
 * exist, identity normalizer, spaces escaped as U+2581, a dummy prefix only when
 * tokenizer.ggml.add_space_prefix says so. g is only read during the call. */
gm_status gm_tok_load_gguf(const gguf_file *g, gm_tokenizer **out);
/* Write t's SentencePiece model (its serialized ModelProto, as a tokenizer.model file) to path: how a
 * checkpoint derived from a GGUF gets its tokenizer. */
gm_status gm_tok_save(const gm_tokenizer *t, const char *path);
void gm_tok_destroy(gm_tokenizer **t);

int32_t gm_tok_vocab_size(const gm_tokenizer *t);

/* Encode UTF-8 text (len bytes) into ids, BOS first when add_bos. Text is
 * never parsed for special tokens. *ids is caller-owned (free()). */
gm_status gm_tok_encode(const gm_tokenizer *t, const char *text, size_t len, bool add_bos, int32_t **ids,
                        int32_t *n);

typedef struct gm_chat_msg {
    const char *role; /* "user" or "model" ("assistant" is taken as "model"); "system" is an error */
    const char *text;
} gm_chat_msg;

/* A model's chat template: its turn-marker ids (model_config.h start_of_turn_id, end_of_turn_id) and
 * whether a leading "system" message is folded into the first user turn (Gemma 3's template does:
 * "<start_of_turn>user\nSYSTEM\n\nUSER"; Gemma 1's and 2's reject a system role). */
typedef struct gm_chat_format {
    int32_t start_of_turn, end_of_turn; /* 106/107 (Gemma 1, 2), 105/106 (Gemma 3) */
    bool system_prefix;
} gm_chat_format;

/* Gemma chat template:
 * <bos>(<start_of_turn>ROLE\nTEXT<end_of_turn>\n)* <start_of_turn>model\n
 * with f's turn markers (their pieces must be <start_of_turn>/<end_of_turn>, else GM_ERR_UNSUPPORTED).
 * The last message must be the user's; "system" only first, and only when f->system_prefix.
 * *ids is caller-owned. */
gm_status gm_tok_encode_chat_fmt(const gm_tokenizer *t, const gm_chat_format *f, const gm_chat_msg *msgs,
                                 int32_t n_msgs, int32_t **ids, int32_t *n);

/* gm_tok_encode_chat_fmt with Gemma 1's format (106/107, no system role). */
gm_status gm_tok_encode_chat(const gm_tokenizer *t, const gm_chat_msg *msgs, int32_t n_msgs, int32_t **ids,
                             int32_t *n);

/* The bytes a token stands for in a stream: "▁" becomes a space, byte pieces
 * <0xNN> become that byte, control tokens (bos, eos, pad, turn markers) and
 * ids outside the vocabulary give nothing. Returns the byte count written
 * (at most cap; pieces are short). */
size_t gm_tok_piece_bytes(const gm_tokenizer *t, int32_t id, char *out, size_t cap);

/* A token on its own, as log-probabilities show it (each id decoded alone, as vLLM does): the bytes
 * gm_tok_piece_bytes gives, or for a control, unused or unknown token its piece as the vocabulary
 * spells it ("<eos>", "<end_of_turn>"). Borrowed for t's life: *len bytes, not NUL-terminated, not
 * always UTF-8 (a byte piece is one byte of a character). NULL with *len 0 for an id outside the
 * vocabulary. */
const char *gm_tok_token_str(const gm_tokenizer *t, int32_t id, size_t *len);

/* Streaming decoder for one sequence: push ids, get back only complete UTF-8.
 * Invalid byte sequences come out as U+FFFD, never as broken UTF-8. */
typedef struct gm_detok gm_detok;

gm_detok *gm_detok_new(const gm_tokenizer *t); /* t borrowed for the decoder's life */
void gm_detok_destroy(gm_detok **d);
/* Append id; write the newly complete text to out (NUL-terminated); returns
 * its length. out must hold at least GM_DETOK_MAX_OUT bytes. */
#define GM_DETOK_MAX_OUT 256
size_t gm_detok_push(gm_detok *d, int32_t id, char *out);
/* End of stream: whatever is pending (an unfinished character) as U+FFFD. */
size_t gm_detok_flush(gm_detok *d, char *out);

/* Decode a whole id list to a NUL-terminated string (caller frees): the same
 * bytes as pushing every id into a fresh gm_detok and flushing. */
char *gm_tok_decode(const gm_tokenizer *t, const int32_t *ids, int32_t n);

#ifdef __cplusplus
}
#endif
#endif
