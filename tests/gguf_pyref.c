/* gguf_pyref.c - the C side of test_gguf_py.py: read a GGUF file the gguf Python package wrote,
 * print its metadata and tensor table in a plain form the script compares with what it wrote,
 * and check every tensor NAME that has a float32 twin NAME.ref (the package's own dequantization)
 * against gguf_dequant_f32 bit for bit, and against gguf_dequant_bf16 (= the reference rounded).
 *
 * Output lines:  kv KEY VTYPE ELEM N V0 V1 ...   (strings as hex bytes, floats as %.9g / %.17g)
 *                tensor NAME TYPE NE0 NE1 ...
 *                dequant NAME ok
 * Exit 0 when every comparison holds, 1 on the first mismatch (printed), 2 on a load error. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/gguf.h"
#include "common/gguf_quants.h"

static void print_kv(const gguf_kv *kv)
{
    printf("kv %s %d %d %" PRIu64, kv->key, (int)kv->type, (int)kv->elem, kv->n);
    for (uint64_t i = 0; i < kv->n; i++) {
        if (kv->elem == GGUF_VT_STRING) {
            printf(" ");
            for (uint64_t j = 0; j < kv->strs[i].len; j++)
                printf("%02x", (unsigned char)kv->strs[i].p[j]);
            if (kv->strs[i].len == 0)
                printf("-");
        } else if (kv->elem == GGUF_VT_F32) {
            printf(" %.9g", gguf_kv_float_at(kv, i));
        } else if (kv->elem == GGUF_VT_F64) {
            printf(" %.17g", gguf_kv_float_at(kv, i));
        } else {
            printf(" %" PRId64, gguf_kv_int_at(kv, i));
        }
    }
    printf("\n");
}

/* Compare tensor t with its reference r (F32, same element count). */
static int check_tensor(const gguf_tensor *t, const gguf_tensor *r)
{
    if (r->type != GGUF_TYPE_F32 || r->nelem != t->nelem) {
        printf("MISMATCH %s: reference is not F32 of %" PRId64 " elements\n", t->name, t->nelem);
        return 1;
    }
    float *y = malloc((size_t)t->nelem * sizeof *y);
    uint16_t *h = malloc((size_t)t->nelem * sizeof *h);
    int bad = 0;
    if (!y || !h) {
        printf("MISMATCH %s: out of memory\n", t->name);
        bad = 1;
        goto done;
    }
    gm_status st = gguf_dequant_f32(t->type, t->data, y, t->nelem);
    if (!st)
        st = gguf_dequant_bf16(t->type, t->data, h, t->nelem);
    if (st) {
        printf("MISMATCH %s: %s\n", t->name, gm_last_error());
        bad = 1;
        goto done;
    }
    const uint8_t *ref = r->data;
    for (int64_t i = 0; i < t->nelem && !bad; i++) {
        uint32_t a, b;
        memcpy(&a, &y[i], 4);
        memcpy(&b, ref + 4 * i, 4);
        float rf;
        memcpy(&rf, &b, 4);
        uint16_t want = t->type == GGUF_TYPE_BF16 ? ((const uint16_t *)t->data)[i] : gm_f32_to_bf16(rf);
        if (a != b) {
            printf("MISMATCH %s: element %" PRId64 ": f32 %08x (%.9g), reference %08x (%.9g)\n", t->name, i, a, y[i], b,
                   rf);
            bad = 1;
        } else if (h[i] != want) {
            printf("MISMATCH %s: element %" PRId64 ": bf16 %04x, want %04x\n", t->name, i, h[i], want);
            bad = 1;
        }
    }
    if (!bad)
        printf("dequant %s ok\n", t->name);
done:
    free(y);
    free(h);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE.gguf\n", argv[0]);
        return 2;
    }
    gguf_file *f = NULL;
    if (gguf_open(argv[1], &f)) {
        fprintf(stderr, "%s\n", gm_last_error());
        return 2;
    }
    printf("version %u alignment %" PRIu64 "\n", gguf_version(f), gguf_alignment(f));
    for (int64_t i = 0; i < gguf_kv_count(f); i++)
        print_kv(gguf_kv_at(f, i));
    int bad = 0;
    for (int64_t i = 0; i < gguf_tensor_count(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        printf("tensor %s %s", t->name, gguf_type_name(t->type));
        for (int d = 0; d < t->n_dims; d++)
            printf(" %" PRId64, t->ne[d]);
        printf("\n");
    }
    for (int64_t i = 0; i < gguf_tensor_count(f) && !bad; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        size_t n = strlen(t->name);
        if (n > 4 && !strcmp(t->name + n - 4, ".ref"))
            continue;
        char rn[1100];
        snprintf(rn, sizeof rn, "%s.ref", t->name);
        const gguf_tensor *r = gguf_find_tensor(f, rn);
        if (r)
            bad = check_tensor(t, r);
    }
    gguf_destroy(&f);
    return bad;
}
