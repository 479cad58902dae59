/* spec.c - prompt-lookup drafting and acceptance (see spec.h). */
#include "daemon/spec.h"

#include <string.h>

int32_t spec_draft(const int32_t *tok, int32_t n, int32_t k, int32_t *out)
{
    if (!tok || k <= 0 || n < 2)
        return 0;
    if (k > SPEC_MAX_K)
        k = SPEC_MAX_K;
    int32_t lo = n > SPEC_SCAN_MAX ? n - SPEC_SCAN_MAX : 0;
    for (int32_t g = n - 1 < SPEC_NGRAM_MAX ? n - 1 : SPEC_NGRAM_MAX; g >= 1; g--) {
        const int32_t *suf = tok + n - g;
        /* a start i < n - g: the match ends before the suffix starts to end, so tok[i + g] exists */
        for (int32_t i = n - g - 1; i >= lo; i--) {
            if (tok[i] != suf[0] || memcmp(tok + i, suf, (size_t)g * sizeof *tok) != 0)
                continue;
            /* what followed the match, read on into the draft itself where it runs past the end (a
             * repeating text repeats on: the copy overlaps, as in LZ77) */
            int32_t from = i + g;
            for (int32_t j = 0; j < k; j++)
                out[j] = from + j < n ? tok[from + j] : out[from + j - n];
            return k;
        }
    }
    return 0;
}

int32_t spec_accepted(const int32_t *draft, int32_t d, const int32_t *got)
{
    int32_t a = 0;
    while (a < d && got[a] == draft[a])
        a++;
    return a;
}
