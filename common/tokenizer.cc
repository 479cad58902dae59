/* tokenizer.cc - common/tokenizer.h over libsentencepiece. No C++ exception leaves this file. */
#include "common/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

// Cached stream bytes of one piece are clipped to this length (at a character
// boundary) so that one push always fits GM_DETOK_MAX_OUT: at most 3 pending
// bytes become one U+FFFD (3 bytes), a valid piece is copied 1:1, and a lone
// byte piece expands to at most 3 bytes.
constexpr size_t kMaxPieceBytes = GM_DETOK_MAX_OUT - 16;
constexpr int kNumSpecial = 108; // ids 0..107: pad, eos, bos, unk, controls, turn markers

const char kReplacement[] = "\xEF\xBF\xBD"; // U+FFFD

} // namespace

struct gm_tokenizer {
    sentencepiece::SentencePieceProcessor sp;
    int32_t n = 0;
    int32_t bos = GM_TOK_BOS;
    std::vector<std::string> bytes; // [n] what each id contributes to a text stream
    std::vector<bool> special;      // [n] ids that user text must never produce
    int32_t byte_id[256];           // id of piece <0xNN>, -1 if absent
    bool has_chat = false;          // the model has <start_of_turn> and <end_of_turn>
    int32_t sot = -1, eot = -1;     // their ids
};

struct gm_detok {
    const gm_tokenizer *t;
    unsigned char pend[4]; // a valid but unfinished UTF-8 prefix
    int npend;
};

namespace {

// Length of the longest prefix of s[0..n) that is whole UTF-8 characters.
size_t utf8_clip(const std::string &s, size_t n)
{
    if (n >= s.size())
        return s.size();
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

// Stream bytes of a piece: "▁" -> ' ', <0xNN> -> byte, controls -> nothing.
std::string piece_stream_bytes(const sentencepiece::SentencePieceProcessor &sp, int id)
{
    if (sp.IsControl(id) || sp.IsUnused(id))
        return std::string();
    if (sp.IsUnknown(id))
        return std::string(kReplacement);
    const std::string &p = sp.IdToPiece(id);
    if (sp.IsByte(id)) {
        unsigned v = 0;
        if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%2X>", &v) == 1)
            return std::string(1, (char)v);
        return std::string();
    }
    std::string out;
    out.reserve(p.size());
    for (size_t i = 0; i < p.size();) {
        if (p.compare(i, 3, "\xE2\x96\x81") == 0) {
            out.push_back(' ');
            i += 3;
        } else {
            out.push_back(p[i++]);
        }
    }
    out.resize(utf8_clip(out, kMaxPieceBytes));
    return out;
}

// Fill t's tables from its loaded SentencePiece model and hand it out.
gm_status finish(gm_tokenizer *t, gm_tokenizer **out);

gm_status load(const char *path, gm_tokenizer **out)
{
    FILE *f = std::fopen(path, "rb");
    if (!f)
        return gm_fail(GM_ERR_IO, "tokenizer %s: cannot open", path);
    std::fclose(f);

    gm_tokenizer *t = new gm_tokenizer();
    auto st = t->sp.Load(path);
    if (!st.ok()) {
        delete t;
        return gm_fail(GM_ERR_FORMAT, "tokenizer %s: not a sentencepiece model: %s", path, st.ToString().c_str());
    }
    return finish(t, out);
}

gm_status finish(gm_tokenizer *t, gm_tokenizer **out)
{
    t->n = t->sp.GetPieceSize();
    if (t->sp.bos_id() >= 0)
        t->bos = t->sp.bos_id();
    t->bytes.resize(t->n);
    t->special.assign(t->n, false);
    for (int i = 0; i < 256; i++)
        t->byte_id[i] = -1;
    for (int32_t id = 0; id < t->n; id++) {
        t->bytes[id] = piece_stream_bytes(t->sp, id);
        if (t->sp.IsByte(id) && t->bytes[id].size() == 1)
            t->byte_id[(unsigned char)t->bytes[id][0]] = id;
        // Controls never come out of Encode; user-defined pieces in the
        // special range (a real Gemma model's <unused*>, turn markers) do,
        // and are re-spelled as bytes by encode().
        const std::string &piece = t->sp.IdToPiece(id);
        t->special[id] = t->sp.IsControl(id) ||
                         (id > 3 && id < kNumSpecial && !t->sp.IsByte(id) && !piece.empty() &&
                          (piece[0] == '<' || piece[0] == '[')) ||
                         piece == "<start_of_image>" || piece == "<end_of_image>"; // Gemma 3's, user-defined
    }
    // Turn markers by name: 106/107 in Gemma 1 and 2, 105/106 in Gemma 3.
    t->sot = t->sp.PieceToId("<start_of_turn>");
    t->eot = t->sp.PieceToId("<end_of_turn>");
    t->has_chat = t->sot != t->sp.unk_id() && t->eot != t->sp.unk_id() && t->sot >= 0 && t->eot >= 0;
    *out = t;
    return GM_OK;
}

// ---- a SentencePiece ModelProto from GGUF metadata, serialized by hand (protobuf wire format;
// field numbers of sentencepiece_model.proto) ----

void pb_varint(std::string &s, uint64_t v)
{
    while (v >= 0x80) {
        s.push_back((char)(v | 0x80));
        v >>= 7;
    }
    s.push_back((char)v);
}

void pb_tag(std::string &s, int field, int wire) { pb_varint(s, (uint64_t)field << 3 | (uint64_t)wire); }

void pb_int(std::string &s, int field, int64_t v) // int32/enum/bool: negatives as 10-byte varints
{
    pb_tag(s, field, 0);
    pb_varint(s, (uint64_t)v);
}

void pb_bytes(std::string &s, int field, const char *p, size_t n)
{
    pb_tag(s, field, 2);
    pb_varint(s, n);
    s.append(p, n);
}

void pb_float(std::string &s, int field, float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    pb_tag(s, field, 5);
    for (int i = 0; i < 4; i++)
        s.push_back((char)(u >> (8 * i)));
}

// SentencePiece.Type: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6 -- the
// numbering GGUF's tokenizer.ggml.token_type uses too (0, undefined, is taken as NORMAL).
constexpr int64_t kPieceNormal = 1, kPieceUnknown = 2, kPieceByte = 6;

// An optional integer key of the GGUF file, or def.
int64_t gguf_int_or(const gguf_file *g, const char *key, int64_t def)
{
    int64_t v;
    return gguf_get_int(g, key, INT32_MIN, INT32_MAX, &v) == GM_OK ? v : def;
}

gm_status gguf_proto(const gguf_file *g, std::string &proto)
{
    const char *name = gguf_name(g);
    char model[32];
    gm_status st = gguf_get_str(g, "tokenizer.ggml.model", model, sizeof model);
    if (st != GM_OK)
        return st;
    if (std::strcmp(model, "llama") != 0)
        return gm_fail(GM_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model is \"%s\", only \"llama\" (SentencePiece) is supported",
                       name, model);
    const gguf_kv *tok, *scores = nullptr, *types = nullptr;
    if ((st = gguf_get_array(g, "tokenizer.ggml.tokens", GGUF_VT_STRING, &tok)) != GM_OK)
        return st;
    if (gguf_find_kv(g, "tokenizer.ggml.scores") &&
        (st = gguf_get_array(g, "tokenizer.ggml.scores", GGUF_VT_F32, &scores)) != GM_OK)
        return st;
    if (gguf_find_kv(g, "tokenizer.ggml.token_type") &&
        (st = gguf_get_array(g, "tokenizer.ggml.token_type", GGUF_VT_COUNT, &types)) != GM_OK)
        return st;
    uint64_t n = tok->n;
    if (n == 0 || n > INT32_MAX)
        return gm_fail(GM_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries", name, (unsigned long long)n);
    if ((scores && scores->n != n) || (types && types->n != n))
        return gm_fail(GM_ERR_FORMAT, "%s: tokenizer.ggml.scores/token_type lengths differ from the %llu tokens", name,
                       (unsigned long long)n);
    int64_t unk = gguf_int_or(g, "tokenizer.ggml.unknown_token_id", -1);
    for (uint64_t i = 0; unk < 0 && types && i < n; i++)
        if (gguf_kv_int_at(types, i) == kPieceUnknown)
            unk = (int64_t)i;
    if (unk < 0 || (uint64_t)unk >= n)
        return gm_fail(GM_ERR_FORMAT, "%s: the vocabulary has no unknown token (tokenizer.ggml.unknown_token_id)", name);
    int n_bytes = 0;
    std::string piece, text;
    for (uint64_t i = 0; i < n; i++) {
        int64_t ty = types ? gguf_kv_int_at(types, i) : kPieceNormal;
        if ((int64_t)i == unk)
            ty = kPieceUnknown;
        else if (ty == kPieceUnknown || ty < 1 || ty > 6)
            ty = kPieceNormal; // SentencePiece allows one unknown piece; 0 (undefined) and others are normal
        n_bytes += ty == kPieceByte;
        // GGUF spells the whitespace-run pieces ("  ", user-defined) with real spaces; SentencePiece
        // matches pieces against text whose spaces are already escaped, so escape them the same way.
        text.clear();
        for (uint64_t k = 0; k < tok->strs[i].len; k++) {
            char c = tok->strs[i].p[k];
            if (c == ' ')
                text += "\xE2\x96\x81";
            else
                text.push_back(c);
        }
        piece.clear();
        pb_bytes(piece, 1, text.data(), text.size());
        pb_float(piece, 2, scores ? (float)gguf_kv_float_at(scores, i) : 0.0f);
        pb_int(piece, 3, ty);
        pb_bytes(proto, 1, piece.data(), piece.size());
    }
    // TrainerSpec: what encoding and the special ids depend on.
    auto pc = [&](int64_t id) { // the piece of id, or "" when id is out of range
        return id >= 0 && (uint64_t)id < n ? std::string(tok->strs[id].p, (size_t)tok->strs[id].len) : std::string();
    };
    int64_t bos = gguf_int_or(g, "tokenizer.ggml.bos_token_id", -1), eos = gguf_int_or(g, "tokenizer.ggml.eos_token_id", -1),
            pad = gguf_int_or(g, "tokenizer.ggml.padding_token_id", -1);
    std::string ts;
    pb_int(ts, 3, 2);                 // model_type BPE
    pb_int(ts, 4, (int64_t)n);        // vocab_size
    pb_int(ts, 35, n_bytes == 256);   // byte_fallback when all 256 <0xNN> pieces exist
    pb_int(ts, 40, unk);              // unk_id, bos_id, eos_id, pad_id
    pb_int(ts, 41, bos >= 0 && (uint64_t)bos < n ? bos : -1);
    pb_int(ts, 42, eos >= 0 && (uint64_t)eos < n ? eos : -1);
    pb_int(ts, 43, pad >= 0 && (uint64_t)pad < n ? pad : -1);
    std::string p;
    p = pc(unk), pb_bytes(ts, 45, p.data(), p.size()); // unk_piece, bos_piece, eos_piece, pad_piece
    if (!(p = pc(bos)).empty())
        pb_bytes(ts, 46, p.data(), p.size());
    if (!(p = pc(eos)).empty())
        pb_bytes(ts, 47, p.data(), p.size());
    if (!(p = pc(pad)).empty())
        pb_bytes(ts, 48, p.data(), p.size());
    pb_bytes(proto, 2, ts.data(), ts.size());
    // NormalizerSpec: identity (no precompiled charsmap), spaces escaped as U+2581, a dummy prefix
    // only when the file asks for one, whitespace kept as it is.
    bool prefix = false;
    if (gguf_find_kv(g, "tokenizer.ggml.add_space_prefix") &&
        (st = gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &prefix)) != GM_OK)
        return st;
    std::string ns;
    pb_bytes(ns, 1, "identity", 8);
    pb_int(ns, 3, prefix); // add_dummy_prefix
    pb_int(ns, 4, 0);      // remove_extra_whitespaces
    pb_int(ns, 5, 1);      // escape_whitespaces
    pb_bytes(proto, 3, ns.data(), ns.size());
    return GM_OK;
}

gm_status load_gguf(const gguf_file *g, gm_tokenizer **out)
{
    std::string proto;
    gm_status st = gguf_proto(g, proto);
    if (st != GM_OK)
        return st;
    gm_tokenizer *t = new gm_tokenizer();
    auto s = t->sp.LoadFromSerializedProto(proto);
    if (!s.ok()) {
        delete t;
        return gm_fail(GM_ERR_FORMAT, "%s: the GGUF vocabulary is not a valid SentencePiece model: %s", gguf_name(g),
                       s.ToString().c_str());
    }
    return finish(t, out);
}

// Append the ids of text (no BOS) to v; never yields a special id.
gm_status encode_into(const gm_tokenizer *t, const char *text, size_t len, std::vector<int32_t> &v)
{
    if (len == 0)
        return GM_OK;
    std::vector<int> ids;
    auto st = t->sp.Encode(std::string(text, len), &ids);
    if (!st.ok())
        return gm_fail(GM_ERR_INVALID_ARG, "tokenizer: cannot encode %zu bytes: %s", len, st.ToString().c_str());
    for (int id : ids) {
        if (id >= 0 && id < t->n && t->special[id]) {
            // A special piece matched literally in user text: spell it in bytes.
            const std::string &p = t->sp.IdToPiece(id);
            for (unsigned char c : p) {
                if (t->byte_id[c] < 0)
                    return gm_fail(GM_ERR_UNSUPPORTED, "tokenizer: text contains special piece %s and the model has no byte pieces",
                                   p.c_str());
                v.push_back(t->byte_id[c]);
            }
        } else {
            v.push_back(id);
        }
    }
    return GM_OK;
}

gm_status hand_out(const std::vector<int32_t> &v, int32_t **ids, int32_t *n)
{
    int32_t *a = (int32_t *)std::malloc((v.size() + 1) * sizeof(int32_t));
    if (!a)
        return gm_fail(GM_ERR_NOMEM, "tokenizer: %zu ids", v.size());
    if (!v.empty())
        std::memcpy(a, v.data(), v.size() * sizeof(int32_t));
    *ids = a;
    *n = (int32_t)v.size();
    return GM_OK;
}

// Append the UTF-8-safe form of in[0..n) to out; an unfinished character at
// the very end is left in d->pend. Invalid sequences (maximal subparts, as
// Unicode recommends) become one U+FFFD each.
void emit(gm_detok *d, const unsigned char *in, size_t n, std::string &out)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = in[i];
        if (c < 0x80) {
            out.push_back((char)c);
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; // allowed range of the second byte
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0)
                lo = 0xA0;
            if (c == 0xED)
                hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0)
                lo = 0x90;
            if (c == 0xF4)
                hi = 0x8F;
        } else {
            out += kReplacement;
            i++;
            continue;
        }
        size_t k = 1;
        bool bad = false;
        for (; k < len && i + k < n; k++) {
            unsigned b = in[i + k];
            unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (b < l || b > h) {
                bad = true;
                break;
            }
        }
        if (bad) {
            out += kReplacement;
            i += k;
        } else if (k < len) { // ran out of input: keep for the next piece
            d->npend = (int)(n - i);
            std::memcpy(d->pend, in + i, n - i);
            return;
        } else {
            out.append((const char *)in + i, len);
            i += len;
        }
    }
}

// Push one id's bytes through the decoder, appending complete text to out.
void push(gm_detok *d, int32_t id, std::string &out)
{
    const gm_tokenizer *t = d->t;
    if (id < 0 || id >= t->n)
        return;
    const std::string &p = t->bytes[id];
    if (p.empty())
        return;
    unsigned char buf[4 + kMaxPieceBytes];
    size_t m = (size_t)d->npend;
    std::memcpy(buf, d->pend, m);
    std::memcpy(buf + m, p.data(), p.size());
    m += p.size();
    d->npend = 0;
    emit(d, buf, m, out);
}

size_t copy_out(const std::string &s, char *out)
{
    size_t n = s.size() < GM_DETOK_MAX_OUT - 1 ? s.size() : GM_DETOK_MAX_OUT - 1;
    std::memcpy(out, s.data(), n);
    out[n] = '\0';
    return n;
}

} // namespace

extern "C" {

gm_status gm_tok_load(const char *path, gm_tokenizer **out)
{
    if (!path || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_tok_load: NULL argument");
    *out = nullptr;
    try {
        return load(path, out);
    } catch (const std::bad_alloc &) {
        return gm_fail(GM_ERR_NOMEM, "tokenizer %s: out of memory", path);
    } catch (const std::exception &e) {
        return gm_fail(GM_ERR_FORMAT, "tokenizer %s: %s", path, e.what());
    } catch (...) {
        return gm_fail(GM_ERR_INTERNAL, "tokenizer %s: unknown exception", path);
    }
}

gm_status gm_tok_load_gguf(const gguf_file *g, gm_tokenizer **out)
{
    if (!g || !out)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_tok_load_gguf: NULL argument");
    *out = nullptr;
    try {
        return load_gguf(g, out);
    } catch (const std::bad_alloc &) {
        return gm_fail(GM_ERR_NOMEM, "tokenizer %s: out of memory", gguf_name(g));
    } catch (const std::exception &e) {
        return gm_fail(GM_ERR_FORMAT, "tokenizer %s: %s", gguf_name(g), e.what());
    } catch (...) {
        return gm_fail(GM_ERR_INTERNAL, "tokenizer %s: unknown exception", gguf_name(g));
    }
}

gm_status gm_tok_save(const gm_tokenizer *t, const char *path)
{
    if (!t || !path)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_tok_save: NULL argument");
    try {
        const std::string proto = t->sp.serialized_model_proto();
        FILE *f = std::fopen(path, "wb");
        if (!f)
            return gm_fail(GM_ERR_IO, "%s: cannot create: %s", path, std::strerror(errno));
        bool ok = std::fwrite(proto.data(), 1, proto.size(), f) == proto.size();
        ok = std::fclose(f) == 0 && ok;
        return ok ? GM_OK : gm_fail(GM_ERR_IO, "%s: write failed", path);
    } catch (const std::bad_alloc &) {
        return gm_fail(GM_ERR_NOMEM, "%s: out of memory", path);
    }
}

void gm_tok_destroy(gm_tokenizer **t)
{
    if (!t || !*t)
        return;
    delete *t;
    *t = nullptr;
}

int32_t gm_tok_vocab_size(const gm_tokenizer *t)
{
    return t ? t->n : 0;
}

gm_status gm_tok_encode(const gm_tokenizer *t, const char *text, size_t len, bool add_bos, int32_t **ids,
                        int32_t *n)
{
    if (!t || !ids || !n || (!text && len > 0))
        return gm_fail(GM_ERR_INVALID_ARG, "gm_tok_encode: NULL argument");
    try {
        std::vector<int32_t> v;
        if (add_bos)
            v.push_back(t->bos);
        gm_status s = encode_into(t, text, len, v);
        if (s != GM_OK)
            return s;
        return hand_out(v, ids, n);
    } catch (const std::bad_alloc &) {
        return gm_fail(GM_ERR_NOMEM, "tokenizer: out of memory encoding %zu bytes", len);
    } catch (...) {
        return gm_fail(GM_ERR_INTERNAL, "tokenizer: exception encoding %zu bytes", len);
    }
}

gm_status gm_tok_encode_chat_fmt(const gm_tokenizer *t, const gm_chat_format *f, const gm_chat_msg *msgs,
                                 int32_t n_msgs, int32_t **ids, int32_t *n)
{
    if (!t || !f || !ids || !n || (!msgs && n_msgs > 0))
        return gm_fail(GM_ERR_INVALID_ARG, "gm_tok_encode_chat: NULL argument");
    if (n_msgs <= 0)
        return gm_fail(GM_ERR_INVALID_ARG, "chat: no messages (the last message must be the user's)");
    int32_t sot = f->start_of_turn, eot = f->end_of_turn;
    if (sot < 0 || eot < 0 || sot >= t->n || eot >= t->n || t->sp.IdToPiece(sot) != "<start_of_turn>" ||
        t->sp.IdToPiece(eot) != "<end_of_turn>")
        return gm_fail(GM_ERR_UNSUPPORTED, "chat: the tokenizer has no <start_of_turn>/<end_of_turn> at ids %d/%d",
                       (int)sot, (int)eot);
    try {
        std::vector<int32_t> v;
        v.push_back(t->bos);
        std::string prefix; // Gemma 3: the system message, folded into the first user turn
        int32_t first = 0;
        if (f->system_prefix && msgs[0].role && std::strcmp(msgs[0].role, "system") == 0) {
            if (!msgs[0].text)
                return gm_fail(GM_ERR_INVALID_ARG, "chat: message 0 has no role or text");
            prefix = std::string(msgs[0].text) + "\n\n";
            first = 1;
            if (n_msgs == 1)
                return gm_fail(GM_ERR_INVALID_ARG, "chat: the last message must be the user's, not \"system\"");
        }
        for (int32_t i = first; i < n_msgs; i++) {
            const char *role = msgs[i].role;
            if (!role || !msgs[i].text)
                return gm_fail(GM_ERR_INVALID_ARG, "chat: message %d has no role or text", (int)i);
            const char *r;
            if (std::strcmp(role, "user") == 0)
                r = "user";
            else if (std::strcmp(role, "model") == 0 || std::strcmp(role, "assistant") == 0)
                r = "model";
            else if (std::strcmp(role, "system") == 0)
                return gm_fail(GM_ERR_INVALID_ARG, f->system_prefix ? "chat: message %d: \"system\" must be the first message"
                                                                   : "chat: message %d: this Gemma has no \"system\" role",
                               (int)i);
            else
                return gm_fail(GM_ERR_INVALID_ARG, "chat: message %d: unknown role \"%.32s\"", (int)i, role);
            if (i == n_msgs - 1 && std::strcmp(r, "user") != 0)
                return gm_fail(GM_ERR_INVALID_ARG, "chat: the last message must be the user's, not \"%s\"", role);
            if (i == first && !prefix.empty() && std::strcmp(r, "user") != 0)
                return gm_fail(GM_ERR_INVALID_ARG, "chat: the message after \"system\" must be the user's");
            std::string body = std::string(r) + "\n" + (i == first ? prefix : std::string()) + msgs[i].text;
            v.push_back(sot);
            gm_status s = encode_into(t, body.data(), body.size(), v);
            if (s != GM_OK)
                return s;
            v.push_back(eot);
            if ((s = encode_into(t, "\n", 1, v)) != GM_OK)
                return s;
        }
        v.push_back(sot);
        gm_status s = encode_into(t, "model\n", 6, v);
        if (s != GM_OK)
            return s;
        return hand_out(v, ids, n);
    } catch (const std::bad_alloc &) {
        return gm_fail(GM_ERR_NOMEM, "chat: out of memory");
    } catch (...) {
        return gm_fail(GM_ERR_INTERNAL, "chat: exception while encoding");
    }
}

gm_status gm_tok_encode_chat(const gm_tokenizer *t, const gm_chat_msg *msgs, int32_t n_msgs, int32_t **ids,
                             int32_t *n)
{
    if (!t)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_tok_encode_chat: NULL argument");
    if (!t->has_chat)
        return gm_fail(GM_ERR_UNSUPPORTED, "chat: the tokenizer has no <start_of_turn>/<end_of_turn> pieces");
    const gm_chat_format by_name = {t->sot, t->eot, false}; /* 106/107 (Gemma 1, 2), 105/106 (Gemma 3) */
    return gm_tok_encode_chat_fmt(t, &by_name, msgs, n_msgs, ids, n);
}

size_t gm_tok_piece_bytes(const gm_tokenizer *t, int32_t id, char *out, size_t cap)
{
    if (!t || id < 0 || id >= t->n || !out)
        return 0;
    const std::string &p = t->bytes[id];
    size_t n = p.size() < cap ? p.size() : cap;
    std::memcpy(out, p.data(), n);
    return n;
}

const char *gm_tok_token_str(const gm_tokenizer *t, int32_t id, size_t *len)
{
    *len = 0;
    if (!t || id < 0 || id >= t->n)
        return nullptr;
    if (t->sp.IsControl(id) || t->sp.IsUnused(id) || t->sp.IsUnknown(id)) {
        const std::string &p = t->sp.IdToPiece(id); // held by the loaded model
        *len = p.size();
        return p.data();
    }
    const std::string &b = t->bytes[id];
    *len = b.size();
    return b.data();
}

gm_detok *gm_detok_new(const gm_tokenizer *t)
{
    if (!t) {
        gm_fail(GM_ERR_INVALID_ARG, "gm_detok_new: NULL tokenizer");
        return nullptr;
    }
    gm_detok *d = (gm_detok *)std::calloc(1, sizeof *d);
    if (!d) {
        gm_fail(GM_ERR_NOMEM, "gm_detok_new");
        return nullptr;
    }
    d->t = t;
    return d;
}

void gm_detok_destroy(gm_detok **d)
{
    if (!d || !*d)
        return;
    std::free(*d);
    *d = nullptr;
}

size_t gm_detok_push(gm_detok *d, int32_t id, char *out)
{
    if (!out)
        return 0;
    out[0] = '\0';
    if (!d)
        return 0;
    try {
        std::string s;
        push(d, id, s);
        return copy_out(s, out);
    } catch (...) {
        gm_fail(GM_ERR_NOMEM, "gm_detok_push: out of memory");
        return 0;
    }
}

size_t gm_detok_flush(gm_detok *d, char *out)
{
    if (!out)
        return 0;
    out[0] = '\0';
    if (!d || d->npend == 0)
        return 0;
    d->npend = 0;
    std::memcpy(out, kReplacement, 4); // 3 bytes + NUL
    return 3;
}

char *gm_tok_decode(const gm_tokenizer *t, const int32_t *ids, int32_t n)
{
    if (!t || (!ids && n > 0)) {
        gm_fail(GM_ERR_INVALID_ARG, "gm_tok_decode: NULL argument");
        return nullptr;
    }
    try {
        gm_detok d = {t, {0, 0, 0, 0}, 0};
        std::string s;
        for (int32_t i = 0; i < n; i++)
            push(&d, ids[i], s);
        if (d.npend > 0)
            s += kReplacement;
        char *r = (char *)std::malloc(s.size() + 1);
        if (!r) {
            gm_fail(GM_ERR_NOMEM, "gm_tok_decode: %zu bytes", s.size());
            return nullptr;
        }
        std::memcpy(r, s.data(), s.size());
        r[s.size()] = '\0';
        return r;
    } catch (...) {
        gm_fail(GM_ERR_NOMEM, "gm_tok_decode: out of memory");
        return nullptr;
    }
}

} // extern "C"
