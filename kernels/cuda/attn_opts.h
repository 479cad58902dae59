/* attn_opts.h - the score options every attention kernel of kernels/cuda takes (decode, XQA, prefill):
 * one layer's scale, soft-cap and sliding window (Gemma 2/3). CPU twin: cpu_attn_opts (kernels/cpu/attn.h). */
#ifndef GM_K_ATTN_OPTS_H
#define GM_K_ATTN_OPTS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct k_attn_opts {
    float scale;    /* s = q.k * scale: head_dim^-0.5 (Gemma 1), query_pre_attn_scalar^-0.5 (Gemma 2/3); > 0 */
    float softcap;  /* > 0: s = tanh(s / softcap) * softcap after scaling, before the mask (Gemma 2); 0 = off */
    int32_t window; /* > 0: the query at position i sees keys i - window < j <= i (sliding layers); 0 = all j <= i */
} k_attn_opts;

/* Neither soft-cap nor window: the kernels take their Gemma 1 code (the same instructions as before the
 * options existed), so the options cost nothing where they are off. */
static inline int k_attn_opts_plain(const k_attn_opts *o) { return o->softcap == 0.0f && o->window == 0; }

/* 1 when scale > 0 and finite, softcap >= 0 and finite, window >= 0. */
static inline int k_attn_opts_valid(const k_attn_opts *o)
{
    return o && o->scale > 0.0f && o->scale < 3.0e38f && o->softcap >= 0.0f && o->softcap < 3.0e38f && o->window >= 0;
}

#ifdef __cplusplus
}
#endif
#endif
