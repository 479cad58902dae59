/* fuzz_oai.c - libFuzzer harness for the OpenAI request parsers (http/oai.c) and the
 * bodies built from what they accept (http/oai_fmt.c): see oai_check.h for what is checked.
 * Build: CC=clang cmake -DGM_FUZZ=ON ...; run: see tests/fuzz/README.md. */
#include <stddef.h>
#include <stdint.h>

#include "tests/fuzz/oai_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    oai_check_input((const char *)data, size);
    return 0;
}
