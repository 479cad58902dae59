/* fuzz_gguf.c - libFuzzer harness for the GGUF reader and the Gemma GGUF adapter.
 *
 * Each input is parsed as a whole GGUF image by gguf_parse; when that succeeds, what the parse
 * promised is checked (every tensor and string inside the image, names findable, offsets
 * aligned), every supported tensor is dequantized (small ones), and the image goes on through
 * gguf_model_config, gguf_model_load and gm_tok_load_gguf, which must fail cleanly or succeed.
 * Build: CC=clang CXX=clang++ cmake -DGM_FUZZ=ON ...; run: see tests/fuzz/README.md. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/gguf.h"
#include "common/gguf_model.h"
#include "common/gguf_quants.h"

#define MAX_ELEMS (1 << 20) /* dequantize and load only inputs this small, to keep runs fast */

static void check(const gguf_file *f, const uint8_t *buf, size_t len, int64_t *total)
{
    static float scratch[MAX_ELEMS];
    *total = 0;
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        const uint8_t *p = t->data;
        if (p < buf || t->nbytes > len || (size_t)(p - buf) > len - t->nbytes)
            abort();
        if (gguf_find_tensor(f, t->name) != t || t->offset % gguf_alignment(f) || t->nelem <= 0)
            abort();
        *total += t->nelem;
        if (gguf_can_dequant(t->type) && t->nelem <= MAX_ELEMS &&
            gguf_dequant_f32(t->type, t->data, scratch, t->nelem) != GM_OK)
            abort();
    }
    for (int64_t i = 0; i < gguf_kv_count(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        if (gguf_find_kv(f, kv->key) != kv)
            abort();
        for (uint64_t j = 0; kv->strs && j < kv->n; j++)
            if ((const uint8_t *)kv->strs[j].p < buf || (const uint8_t *)kv->strs[j].p + kv->strs[j].len > buf + len)
                abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy of exactly `size` bytes, so that any read past the image is caught */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    gguf_file *f = NULL;
    if (gguf_parse(buf, size, "fuzz.gguf", &f) == GM_OK) {
        int64_t total;
        check(f, buf, size, &total);
        gm_model_config cfg;
        if (gguf_model_config(f, &cfg) == GM_OK) {
            if (cfg.num_heads % cfg.num_kv_heads || cfg.num_layers > GM_MAX_LAYERS || cfg.vocab_size <= 0)
                abort();
            st_model *m = NULL;
            if (total <= MAX_ELEMS && gguf_model_load(f, &cfg, &m) == GM_OK)
                st_model_destroy(&m);
        }
        gm_tokenizer *t = NULL;
        if (gm_tok_load_gguf(f, &t) == GM_OK)
            gm_tok_destroy(&t);
        gguf_destroy(&f);
    }
    free(buf);
    return 0;
}
