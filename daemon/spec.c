/* spec.c - prompt-lookup drafting and acceptance (see spec.h). */
#include "daemon/spec.h"

#include <string.h>

int32_t spec_draft(const int32_t *tok, int32_t n, int32_t k, int32_t *out)
{
    if (!tok || k <= 0 || n < 2)
        return 0;
    if (k > SPEC_MAX_K)
        k = SPEC_MAX_K;
    /* one pass from the end over the earlier places of the last token; at each, how far the match runs
     * back (up to SPEC_NGRAM_MAX): the first place with the longest run is the latest occurrence of the
     * longest suffix that occurs. The cost is one compare per token scanned where nothing matches. */
    int32_t lo = n > SPEC_SCAN_MAX ? n - SPEC_SCAN_MAX : 0, last = tok[n - 1], best = 0, from = -1;
    for (int32_t i = n - 2; i >= lo && best < SPEC_NGRAM_MAX; i--) {
        if (tok[i] != last)
            continue;
        int32_t len = 1;
        while (len < SPEC_NGRAM_MAX && i - len >= 0 && tok[i - len] == tok[n - 1 - len])
            len++;
        if (len > best)
            best = len, from = i + 1;
    }
    if (from < 0)
        return 0;
    /* what followed the match, read on into the draft itself where it runs past the end (a repeating
     * text repeats on: the copy overlaps, as in LZ77) */
    for (int32_t j = 0; j < k; j++)
        out[j] = from + j < n ? tok[from + j] : out[from + j - n];
    return k;
}

int32_t spec_accepted(const int32_t *draft, int32_t d, const int32_t *got)
{
    int32_t a = 0;
    while (a < d && got[a] == draft[a])
        a++;
    return a;
}
