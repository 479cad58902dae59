/* spm_train.h - train the test tokenizer (sentencepiece BPE, Gemma's special-id layout) from a text file. */
#ifndef GM_SPM_TRAIN_H
#define GM_SPM_TRAIN_H

#include <stdint.h>

#include "common/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of ids before the learned pieces: pad 0, eos 1, bos 2, unk 3,
 * control symbols 4..107 (<start_of_turn>, <end_of_turn> at 106, 107 for Gemma 1/2, 105, 106 for Gemma 3). */
#define GM_SPM_N_SPECIAL 108

/* Train a BPE sentencepiece model of vocab_size pieces from the UTF-8 lines of
 * corpus_path and write the serialized model to out_path, the turn markers at ids
 * start_of_turn and start_of_turn + 1 (7 <= start_of_turn <= 106). Deterministic: one
 * thread, identity normalization, byte fallback, no dummy prefix, digits split.
 * Errors (unreadable corpus, vocabulary too small) name the file. */
gm_status gm_spm_train(const char *corpus_path, int32_t vocab_size, int32_t start_of_turn, const char *out_path);

#ifdef __cplusplus
}
#endif
#endif
