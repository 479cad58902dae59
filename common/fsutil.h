/* fsutil.h - the few file-system chores the offline tools share: mkdir -p, reading or copying a file, and
 * copying a checkpoint's tokenizer and generation files into a new checkpoint directory. */
#ifndef GM_FSUTIL_H
#define GM_FSUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* mkdir -p dir (mode 0755); GM_ERR_IO naming the component that failed, or when dir exists but
 * is not a directory; GM_ERR_INVALID_ARG for a path of 4096 bytes or more. */
gm_status gm_mkdirs(const char *dir);

/* Copy src to dst (created or truncated). A missing src is GM_OK when optional, else GM_ERR_IO;
 * read and write errors are GM_ERR_IO naming the file. */
gm_status gm_copy_file(const char *src, const char *dst, bool optional);

/* The whole of path into *out (caller frees; NUL-terminated, *len bytes before the NUL).
 * GM_ERR_NOT_FOUND when it does not exist, GM_ERR_FORMAT when longer than max bytes, GM_ERR_IO,
 * GM_ERR_NOMEM; the message names the file. */
gm_status gm_read_file(const char *path, size_t max, char **out, size_t *len);

/* Copy in_dir's tokenizer.model (required) and, where present, tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json and generation_config.json into out_dir. */
gm_status gm_copy_checkpoint_aux(const char *in_dir, const char *out_dir);

/* The path of a data file the programs ship (corpus.txt, gemma.proto): the first readable of
 * $GEMMAD_DATA/NAME, <the executable's dir>/../share/gemmad/NAME (an installed tree) and
 * source_dir/data/NAME (a build tree); NULL if none. Caller frees. */
char *gm_data_path(const char *name, const char *source_dir);

#ifdef __cplusplus
}
#endif
#endif
