/* args.c - table-driven command-line parsing (args.h). */
#include "args.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

bool args_parse_i64(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    if (!s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool args_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)s[0]))
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = v;
    return true;
}

bool args_parse_double(const char *s, double lo, double hi, double *out)
{
    if (!s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool args_parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"true", "1", "on", "yes"}, *no[] = {"false", "0", "off", "no"};
    for (int i = 0; s && i < 4; i++) {
        if (!strcmp(s, yes[i]))
            return *out = true, true;
        if (!strcmp(s, no[i]))
            return *out = false, true;
    }
    return false;
}

bool args_parse_size(const char *s, int64_t *out)
{
    if (!s)
        return false;
    while (isspace((unsigned char)*s))
        s++;
    if (!isdigit((unsigned char)*s))
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0))
        return false;
    while (isspace((unsigned char)*end))
        end++;
    double mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mul = 1024.0; end++; break;
    case 'M': mul = 1024.0 * 1024; end++; break;
    case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    case 'B': break;
    default: return false;
    }
    if (mul > 1 && (*end == 'i' || *end == 'I'))
        end++;
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return false;
    double b = v * mul;
    if (b > 9.0e18 || (mul == 1 && v != floor(v)))
        return false;
    *out = (int64_t)b;
    return true;
}

static int args_err(const args_spec *sp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int args_err(const args_spec *sp, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    gm_fail(GM_ERR_INVALID_ARG, "%s", msg);
    if (!sp->quiet)
        fprintf(stderr, "%s: %s (see --help)\n", sp->prog, msg);
    return ARGS_ERROR;
}

/* The choice's index in "a|b|c", or -1. */
static int args_choice(const char *choices, const char *v)
{
    size_t n = strlen(v);
    int i = 0;
    for (const char *p = choices; p && *p; i++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, v, n))
            return i;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

/* Store value v (NULL for a bare flag) into o. */
static int args_store(const args_spec *sp, const args_opt *o, const char *v)
{
    double lo = o->lo, hi = o->hi;
    bool ranged = !(lo == 0 && hi == 0);
    int64_t i;
    double d;
    switch (o->type) {
    case ARGS_FLAG: {
        bool b = true;
        if (v && !args_parse_bool(v, &b))
            return args_err(sp, "--%s=%s: expected true or false", o->name, v);
        *(bool *)o->dst = b;
        break;
    }
    case ARGS_STRING:
        *(const char **)o->dst = v;
        break;
    case ARGS_INT:
        if (!args_parse_i64(v, ranged ? (int64_t)lo : INT32_MIN, ranged ? (int64_t)hi : INT32_MAX, &i))
            return ranged ? args_err(sp, "--%s '%s' is not an integer in [%.0f, %.0f]", o->name, v, lo, hi)
                          : args_err(sp, "--%s '%s' is not an integer", o->name, v);
        *(int32_t *)o->dst = (int32_t)i;
        break;
    case ARGS_INT64:
        if (!args_parse_i64(v, ranged ? (int64_t)lo : INT64_MIN, ranged ? (int64_t)hi : INT64_MAX, &i))
            return ranged ? args_err(sp, "--%s '%s' is not an integer in [%.0f, %.0f]", o->name, v, lo, hi)
                          : args_err(sp, "--%s '%s' is not an integer", o->name, v);
        *(int64_t *)o->dst = i;
        break;
    case ARGS_UINT64:
        if (!args_parse_u64(v, (uint64_t *)o->dst))
            return args_err(sp, "--%s '%s' is not an unsigned integer", o->name, v);
        break;
    case ARGS_FLOAT:
    case ARGS_DOUBLE:
        if (!args_parse_double(v, ranged ? lo : -HUGE_VAL, ranged ? hi : HUGE_VAL, &d))
            return ranged ? args_err(sp, "--%s '%s' is not a number in [%g, %g]", o->name, v, lo, hi)
                          : args_err(sp, "--%s '%s' is not a finite number", o->name, v);
        if (o->type == ARGS_FLOAT)
            *(float *)o->dst = (float)d;
        else
            *(double *)o->dst = d;
        break;
    case ARGS_SIZE:
        if (!args_parse_size(v, &i))
            return args_err(sp, "--%s '%s' is not a size (bytes, or like 512K, 64M, 2G)", o->name, v);
        *(int64_t *)o->dst = i;
        break;
    case ARGS_CHOICE: {
        int k = args_choice(o->choices, v);
        if (k < 0) {
            char list[256];
            snprintf(list, sizeof list, "%s", o->choices);
            for (char *p = list; *p; p++)
                if (*p == '|')
                    *p = ',';
            return args_err(sp, "--%s '%s' is not one of: %s", o->name, v, list);
        }
        *(int *)o->dst = k;
        break;
    }
    case ARGS_CALL: {
        gm_status st = o->call(o->ctx, v);
        if (st != GM_OK)
            return args_err(sp, "--%s '%s': %s", o->name, v ? v : "", gm_last_error());
        break;
    }
    }
    if (o->seen)
        *o->seen = true;
    return ARGS_OK;
}

int args_parse(const args_spec *sp, int argc, char **argv)
{
    int npos = 0;
    if (sp->n_positional)
        *sp->n_positional = 0;
    bool only_pos = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && (!strcmp(a, "-h") || !strcmp(a, "--help")))
            return ARGS_HELP;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && !strcmp(a, "--")) {
            only_pos = true;
            continue;
        }
        if (only_pos || a[0] != '-' || a[1] == 0 || (a[1] != '-' && (isdigit((unsigned char)a[1]) || a[1] == '.'))) {
            if (npos >= sp->max_positional)
                return sp->max_positional == 0 ? args_err(sp, "unexpected argument '%s'", a)
                                               : args_err(sp, "too many arguments at '%s'", a);
            sp->positional[npos++] = a;
            if (sp->n_positional)
                *sp->n_positional = npos;
            continue;
        }
        if (a[1] != '-')
            return args_err(sp, "unknown option '%s'", a);
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const char *v = eq ? eq + 1 : NULL;
        const args_opt *o = NULL;
        bool negated = false;
        for (const args_opt *p = sp->opts; p && p->name; p++) {
            if (strlen(p->name) == nl && !strncmp(p->name, name, nl)) {
                o = p;
                break;
            }
            if (p->type == ARGS_FLAG && p->negatable && nl == strlen(p->name) + 3 && !strncmp(name, "no-", 3) &&
                !strncmp(name + 3, p->name, nl - 3)) {
                o = p;
                negated = true;
                break;
            }
        }
        if (o && o->type == ARGS_FLAG) {
            if (negated) {
                if (v)
                    return args_err(sp, "--no-%s takes no value", o->name);
                *(bool *)o->dst = false;
                if (o->seen)
                    *o->seen = true;
                continue;
            }
            int rc = args_store(sp, o, v);
            if (rc)
                return rc;
            continue;
        }
        if (!v) {
            if (i + 1 >= argc)
                return o || sp->unknown ? args_err(sp, "%s needs a value", a) : args_err(sp, "unknown option '%s'", a);
            v = argv[++i];
        }
        if (o) {
            int rc = args_store(sp, o, v);
            if (rc)
                return rc;
            continue;
        }
        if (!sp->unknown)
            return args_err(sp, "unknown option '--%.*s'", (int)nl, name);
        char key[128];
        if (nl >= sizeof key)
            return args_err(sp, "unknown option '--%.*s'", 64, name);
        memcpy(key, name, nl);
        key[nl] = 0;
        gm_status st = sp->unknown(sp->unknown_ctx, key, v);
        if (st == GM_ERR_NOT_FOUND)
            return args_err(sp, "unknown option '--%s'", key);
        if (st != GM_OK)
            return args_err(sp, "--%s: %s", key, gm_last_error());
    }
    return ARGS_OK;
}
