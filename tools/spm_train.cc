/* spm_train.cc - extern "C" wrapper around sentencepiece::SentencePieceTrainer. */
#include "tools/spm_train.h"

#include <sentencepiece_trainer.h>

#include <cstdio>
#include <string>
#include <unordered_map>

// Control symbols for ids 4..107, in Gemma's order: <mask>, <2mass>, [@BOS@],
// <unused0>.., with the two turn markers at start_of_turn and start_of_turn + 1
// (106/107 as in Gemma 1/2, or 105/106 as in Gemma 3) and the remaining
// <unused*> after them. Control symbols are never produced from user text, so a
// prompt cannot forge a turn marker.
static std::string control_symbols(int32_t start_of_turn)
{
    std::string s = "<mask>,<2mass>,[@BOS@]";
    int unused = 0;
    for (int id = 7; id < GM_SPM_N_SPECIAL; id++) {
        if (id == start_of_turn)
            s += ",<start_of_turn>";
        else if (id == start_of_turn + 1)
            s += ",<end_of_turn>";
        else
            s += ",<unused" + std::to_string(unused++) + ">";
    }
    return s;
}

static gm_status train(const char *corpus_path, int32_t vocab_size, int32_t start_of_turn, const char *out_path)
{
    FILE *f = fopen(corpus_path, "rb");
    if (!f)
        return gm_fail(GM_ERR_IO, "tokenizer corpus %s: cannot open", corpus_path);
    fclose(f);
    if (vocab_size < GM_SPM_N_SPECIAL + 256 + 1)
        return gm_fail(GM_ERR_INVALID_ARG, "tokenizer vocab %d too small (need > %d)", (int)vocab_size,
                       GM_SPM_N_SPECIAL + 256);

    std::unordered_map<std::string, std::string> kw = {
        {"input", corpus_path},
        {"model_prefix", ""},
        {"model_type", "bpe"},
        {"vocab_size", std::to_string(vocab_size)},
        {"character_coverage", "0.9995"},
        {"byte_fallback", "true"},
        {"add_dummy_prefix", "false"},
        {"remove_extra_whitespaces", "false"},
        {"split_digits", "true"},
        {"allow_whitespace_only_pieces", "true"},
        {"normalization_rule_name", "identity"},
        {"num_threads", "1"},
        {"pad_id", "0"},
        {"eos_id", "1"},
        {"bos_id", "2"},
        {"unk_id", "3"},
        {"pad_piece", "<pad>"},
        {"eos_piece", "<eos>"},
        {"bos_piece", "<bos>"},
        {"unk_piece", "<unk>"},
        {"control_symbols", control_symbols(start_of_turn)},
        {"minloglevel", "2"},
    };
    std::string model;
    sentencepiece::util::Status st = sentencepiece::SentencePieceTrainer::Train(kw, nullptr, &model);
    if (!st.ok())
        return gm_fail(GM_ERR_FORMAT, "tokenizer training on %s (vocab %d) failed: %s", corpus_path,
                       (int)vocab_size, st.ToString().c_str());

    FILE *o = fopen(out_path, "wb");
    if (!o)
        return gm_fail(GM_ERR_IO, "%s: cannot create", out_path);
    size_t w = fwrite(model.data(), 1, model.size(), o);
    if (fclose(o) != 0 || w != model.size())
        return gm_fail(GM_ERR_IO, "%s: write failed", out_path);
    return GM_OK;
}

extern "C" gm_status gm_spm_train(const char *corpus_path, int32_t vocab_size, int32_t start_of_turn,
                                  const char *out_path)
{
    if (!corpus_path || !out_path)
        return gm_fail(GM_ERR_INVALID_ARG, "gm_spm_train: NULL path");
    try {
        if (start_of_turn < 7 || start_of_turn + 1 >= GM_SPM_N_SPECIAL)
            return gm_fail(GM_ERR_INVALID_ARG, "tokenizer: <start_of_turn> id %d is outside 7..%d", (int)start_of_turn,
                           GM_SPM_N_SPECIAL - 2);
        return train(corpus_path, vocab_size, start_of_turn, out_path);
    } catch (const std::exception &e) {
        return gm_fail(GM_ERR_INTERNAL, "tokenizer training on %s: %s", corpus_path, e.what());
    } catch (...) {
        return gm_fail(GM_ERR_INTERNAL, "tokenizer training on %s: unknown exception", corpus_path);
    }
}
